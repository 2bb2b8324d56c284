"""The local cloud's HTTP control plane: what boto3 and the AWS CLI call, on one loopback endpoint.

``iotfleet cloud up`` serves it and prints its address as ``api_url``; point a client at it with
``endpoint_url`` (``boto3.client("iot", endpoint_url=api_url, region_name="eu-west-1")``) or
``aws --endpoint-url``. The services are rest-json, as botocore's models have them (IOT_CORE.md section
11(c)): ``iot`` and ``iot-data`` (which signs as ``iotdata``) share the host, told apart, with the region,
by the SigV4 credential scope of the request's ``Authorization`` header
(``Credential=<key>/<date>/<region>/<service>/aws4_request``). **Signatures are read, not verified**:
any credentials work. A request with no signature goes to the first region's ``iot``.

Errors have AWS's shape, so botocore raises its own exceptions: the status, the ``x-amzn-ErrorType``
header (e.g. ``ResourceNotFoundException``) and a JSON body with ``message``.

Served (section 11's table): ``iot`` CreateThing, DescribeThing, ListThings, UpdateThing, DeleteThing,
CreateKeysAndCertificate, CreateCertificateFromCsr, UpdateCertificate, DescribeCertificate, CreatePolicy,
GetPolicy, AttachPolicy, DetachPolicy, AttachThingPrincipal, DetachThingPrincipal, ListThingPrincipals,
ListPrincipalThings, CreateProvisioningTemplate, DescribeProvisioningTemplate, CreateJob, DescribeJob, CancelJob,
ListJobExecutionsForJob, DescribeJobExecution, DescribeEndpoint; ``iot-data`` GetThingShadow,
UpdateThingShadow, DeleteThingShadow (named shadows with ``?name=``), Publish. Things, certificates and
their attachments are replicated to every region, as the local cloud's registrations are; policies and
templates are the cloud's, jobs the region's. A thing's ``version`` is 1 at CreateThing and one more at
each UpdateThing; UpdateThing and DeleteThing with ``expectedVersion`` refuse another version with 409
VersionConflictException. A certificate may be attached to several things (AttachThingPrincipal's default
NON_EXCLUSIVE_THING; EXCLUSIVE_THING is refused as not served here).

aiohttp serves it (:mod:`iotfleet.cloud.http_server`, which says why).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from iotfleet.cloud.http_server import AwsError, HttpServer
from iotfleet.cloud.https_publish import parse_user_properties
from iotfleet.cloud.jobs import JobsError
from iotfleet.cloud.local import LOCAL_ACCOUNT, LocalCloud, Region
from iotfleet.cloud.registry import Thing, ThingChange, VersionConflict
from iotfleet.cloud.templates import ProvisioningTemplate
from iotfleet.errors import CloudError, IotFleetError, ShadowRejected
from iotfleet.topics import ShadowOp

__all__ = ["AwsError", "ControlPlane"]

_SCOPE = re.compile(r"Credential=[^/,]*/\d{8}/([^/,]+)/([^/,]+)/aws4_request")
_JOB_STATUS = {"InvalidRequest": 400, "ResourceNotFound": 404, "ResourceAlreadyExists": 409,
               "InvalidStateTransition": 409, "VersionMismatch": 409, "LimitExceeded": 410}  # fmt: skip
_SHADOW_ERRORS = {400: "InvalidRequestException", 401: "UnauthorizedException", 403: "ForbiddenException",
                  404: "ResourceNotFoundException", 409: "ConflictException", 413: "RequestEntityTooLargeException",
                  415: "UnsupportedDocumentEncodingException", 429: "ThrottlingException",
                  500: "InternalFailureException", 503: "ServiceUnavailableException"}  # fmt: skip


@dataclass(frozen=True)
class _Call:
    """One request, as the handlers need it."""

    region: Region
    params: Mapping[str, str]  # from the path
    query: Mapping[str, str]
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise AwsError(400, "InvalidRequestException", f"the body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise AwsError(400, "InvalidRequestException", "the body must be a JSON object")
        return data


Handler = Callable[[_Call], Any]


class ControlPlane:
    """The HTTP control plane of ``cloud`` on ``host:port`` (0: a free port; see :attr:`url`), on its
    own loop thread, started by :meth:`start` and stopped by :meth:`stop`."""

    def __init__(self, cloud: LocalCloud, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.cloud = cloud
        self.host, self.port = host, port
        self._server = HttpServer(
            "iotfleet control plane", self._handle, host=host, port=port, start_thread=cloud.failures.thread
        )
        self._routes: list[tuple[str, str, re.Pattern[str], Handler]] = []
        self._template_meta: dict[str, dict[str, Any]] = {}  # what CreateProvisioningTemplate said besides the body
        for service, method, path, handler in self._table():
            pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")
            self._routes.append((service, method, pattern, handler))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ControlPlane:
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- dispatch

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            result = await self._dispatch(request)
        except (AwsError, IotFleetError, JobsError) as exc:
            error = _error(exc)
        except Exception as exc:  # noqa: BLE001 - a bug: recorded, answered as AWS's InternalFailure
            self.cloud.failures.record("control plane", exc)
            error = AwsError(500, "InternalFailureException", "Internal failure")
        else:
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result if result is not None else {})
        return error.response(code=error.code)

    async def _dispatch(self, request: web.Request) -> Any:
        region_name, service = self._scope(request)
        path = request.rel_url.raw_path  # still %-encoded: a topic in the path keeps its slashes apart
        for route_service, method, pattern, handler in self._routes:
            match = pattern.match(path) if route_service == service and method == request.method else None
            if match is None:
                continue
            call = _Call(
                self._region(region_name),
                {k: _unquote(v) for k, v in match.groupdict().items()},
                dict(request.query),
                await request.read(),
                dict(request.headers),
            )
            return await asyncio.to_thread(handler, call)
        raise AwsError(404, "ResourceNotFoundException", f"no {service} operation {request.method} {path} here")

    def _scope(self, request: web.Request) -> tuple[str, str]:
        """The region and the service from the SigV4 credential scope (not verified)."""
        match = _SCOPE.search(request.headers.get("Authorization", ""))
        if match is None:
            return self.cloud.regions[0].name, "iot"
        return match.group(1), match.group(2)

    def _region(self, name: str) -> Region:
        try:
            return self.cloud.region(name)
        except (CloudError, KeyError, ValueError) as exc:
            known = ", ".join(r.name for r in self.cloud.regions)
            raise AwsError(400, "InvalidRequestException", f"region {name!r} is not this cloud's ({known})") from exc

    def _table(self) -> list[tuple[str, str, str, Handler]]:
        return [
            ("iot", "GET", "/endpoint", self.describe_endpoint),
            ("iot", "POST", "/things/{thingName}", self.create_thing),
            ("iot", "GET", "/things/{thingName}", self.describe_thing),
            ("iot", "GET", "/things", self.list_things),
            ("iot", "PATCH", "/things/{thingName}", self.update_thing),
            ("iot", "DELETE", "/things/{thingName}", self.delete_thing),
            ("iot", "POST", "/keys-and-certificate", self.create_keys_and_certificate),
            ("iot", "POST", "/certificates", self.create_certificate_from_csr),
            ("iot", "PUT", "/certificates/{certificateId}", self.update_certificate),
            ("iot", "GET", "/certificates/{certificateId}", self.describe_certificate),
            ("iot", "POST", "/policies/{policyName}", self.create_policy),
            ("iot", "GET", "/policies/{policyName}", self.get_policy),
            ("iot", "PUT", "/target-policies/{policyName}", self.attach_policy),
            ("iot", "POST", "/target-policies/{policyName}", self.detach_policy),
            ("iot", "PUT", "/things/{thingName}/principals", self.attach_thing_principal),
            ("iot", "DELETE", "/things/{thingName}/principals", self.detach_thing_principal),
            ("iot", "GET", "/things/{thingName}/principals", self.list_thing_principals),
            ("iot", "GET", "/principals/things", self.list_principal_things),
            ("iot", "POST", "/provisioning-templates", self.create_provisioning_template),
            ("iot", "GET", "/provisioning-templates/{templateName}", self.describe_provisioning_template),
            ("iot", "PUT", "/jobs/{jobId}", self.create_job),
            ("iot", "GET", "/jobs/{jobId}", self.describe_job),
            ("iot", "PUT", "/jobs/{jobId}/cancel", self.cancel_job),
            ("iot", "GET", "/jobs/{jobId}/things", self.list_job_executions_for_job),
            ("iot", "GET", "/things/{thingName}/jobs/{jobId}", self.describe_job_execution),
            ("iotdata", "GET", "/things/{thingName}/shadow", self.get_thing_shadow),
            ("iotdata", "POST", "/things/{thingName}/shadow", self.update_thing_shadow),
            ("iotdata", "DELETE", "/things/{thingName}/shadow", self.delete_thing_shadow),
            ("iotdata", "POST", "/topics/{topic}", self.publish),
        ]

    # ---------------------------------------------------------------- iot

    def describe_endpoint(self, call: _Call) -> dict[str, Any]:
        """The region's device endpoint: ``host``, or ``host:port`` when the port is not MQTT's 8883."""
        endpoint = call.region.endpoint
        address = endpoint.host if endpoint.port == 8883 else f"{endpoint.host}:{endpoint.port}"
        return {"endpointAddress": address}

    # things

    def _thing(self, call: _Call) -> Any:
        thing = call.region.registry.thing(call.params["thingName"])
        if thing is None:
            raise AwsError(404, "ResourceNotFoundException", f"Thing {call.params['thingName']} cannot be found.")
        return thing

    def _thing_out(self, region: Region, name: str) -> dict[str, str]:
        return {"thingName": name, "thingArn": self._arn(region, "thing", name), "thingId": _thing_id(name)}

    def create_thing(self, call: _Call) -> dict[str, Any]:
        """CreateThing; the same thing again (same attributes) is no change and keeps its version."""
        name = call.params["thingName"]
        attributes = _attributes(call.json())
        existing = call.region.registry.thing(name)
        if existing is not None and dict(existing.attributes) != attributes:
            raise AwsError(
                409, "ResourceAlreadyExistsException", f"Thing {name} already exists with different attributes"
            )
        if existing is None:
            self.cloud.put_thing(name, attributes, region=call.region.name)
        return self._thing_out(call.region, name)

    def describe_thing(self, call: _Call) -> dict[str, Any]:
        thing = self._thing(call)
        return {**self._thing_out(call.region, thing.name), "defaultClientId": thing.name,
                "attributes": dict(thing.attributes), "version": thing.version}  # fmt: skip

    def list_things(self, call: _Call) -> dict[str, Any]:
        name, value = call.query.get("attributeName"), call.query.get("attributeValue")
        things = [t for t in call.region.registry.things() if _has_attribute(t.attributes, name, value)]
        start, size = int(call.query.get("nextToken") or 0), int(call.query.get("maxResults") or 100)
        out: dict[str, Any] = {
            "things": [
                {"thingName": t.name, "thingArn": self._arn(call.region, "thing", t.name),
                 "attributes": dict(t.attributes), "version": t.version}
                for t in things[start : start + size]
            ]
        }  # fmt: skip
        if start + size < len(things):
            out["nextToken"] = str(start + size)
        return out

    def update_thing(self, call: _Call) -> dict[str, Any]:
        thing = self._thing(call)
        body = call.json()
        payload = body.get("attributePayload") or {}
        given = _attributes(body)
        attributes = {**thing.attributes, **given} if payload.get("merge") else given
        attributes = {k: v for k, v in attributes.items() if v != ""}  # merge: "" removes an attribute
        expected = _version(body.get("expectedVersion"))
        self.cloud.change(
            ThingChange(Thing(thing.name, attributes), expected_version=expected), region=call.region.name
        )
        return {}

    def delete_thing(self, call: _Call) -> dict[str, Any]:
        """DeleteThing: refused while principals are attached (400) or at another ``expectedVersion`` (409)."""
        name = call.params["thingName"]
        if call.region.registry.thing(name) is not None:  # deleting nothing succeeds on AWS
            expected = _version(call.query.get("expectedVersion"))
            self.cloud.change(ThingChange(Thing(name), delete=True, expected_version=expected), region=call.region.name)
        return {}

    # certificates

    def _certificate_out(self, region: Region, cert_id: str, pem: str) -> dict[str, Any]:
        return {"certificateArn": self._arn(region, "cert", cert_id), "certificateId": cert_id, "certificatePem": pem}

    def create_keys_and_certificate(self, call: _Call) -> dict[str, Any]:
        active = call.query.get("setAsActive", "false").lower() == "true"
        cert_id, pem, key = self.cloud.new_certificate(active=active, region=call.region.name)
        assert key is not None  # noqa: S101 - new keys were made here
        public = serialization.load_pem_private_key(key.encode(), None).public_key()
        public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {**self._certificate_out(call.region, cert_id, pem),
                "keyPair": {"PublicKey": public_pem.decode(), "PrivateKey": key}}  # fmt: skip

    def create_certificate_from_csr(self, call: _Call) -> dict[str, Any]:
        csr = call.json().get("certificateSigningRequest")
        if not isinstance(csr, str):
            raise AwsError(400, "InvalidRequestException", "certificateSigningRequest is required")
        active = call.query.get("setAsActive", "false").lower() == "true"
        cert_id, pem, _ = self.cloud.new_certificate(csr_pem=csr, active=active, region=call.region.name)
        return self._certificate_out(call.region, cert_id, pem)

    def _certificate(self, call: _Call) -> Any:
        record = call.region.registry.certificate(call.params["certificateId"])
        if record is None:
            raise AwsError(
                404, "ResourceNotFoundException", f"certificate {call.params['certificateId']} does not exist"
            )
        return record

    def update_certificate(self, call: _Call) -> dict[str, Any]:
        record = self._certificate(call)
        status = call.query.get("newStatus", "")
        if status not in ("ACTIVE", "INACTIVE", "REVOKED"):
            raise AwsError(400, "InvalidRequestException", f"newStatus {status!r} is not ACTIVE, INACTIVE or REVOKED")
        try:
            self.cloud.update_certificate(record.certificate_id, status, region=call.region.name)
        except IotFleetError as exc:
            raise AwsError(406, "CertificateStateException", exc.message) from exc
        return {}

    def describe_certificate(self, call: _Call) -> dict[str, Any]:
        record = self._certificate(call)
        return {"certificateDescription": {
            **self._certificate_out(call.region, record.certificate_id, record.pem),
            "status": str(record.status), "ownedBy": LOCAL_ACCOUNT, "certificateMode": "DEFAULT",
        }}  # fmt: skip

    # policies

    def create_policy(self, call: _Call) -> dict[str, Any]:
        name = call.params["policyName"]
        if name in self.cloud.policies:
            raise AwsError(409, "ResourceAlreadyExistsException", f"policy {name} already exists")
        document = call.json().get("policyDocument")
        if not isinstance(document, str):
            raise AwsError(400, "InvalidRequestException", "policyDocument is required")
        try:
            self.cloud.create_policy(name, document)
        except IotFleetError as exc:
            raise AwsError(400, "MalformedPolicyException", exc.message) from exc
        return {"policyName": name, "policyArn": self._arn(call.region, "policy", name),
                "policyDocument": document, "policyVersionId": "1"}  # fmt: skip

    def get_policy(self, call: _Call) -> dict[str, Any]:
        name = call.params["policyName"]
        document = self.cloud.policies.get(name)
        if document is None:
            raise AwsError(404, "ResourceNotFoundException", f"policy {name} does not exist")
        return {"policyName": name, "policyArn": self._arn(call.region, "policy", name),
                "policyDocument": json.dumps(document), "defaultVersionId": "1"}  # fmt: skip

    def _target_certificate(self, call: _Call) -> str:
        return _certificate_of_arn(call.region, str(call.json().get("target", "")), "target")

    def attach_policy(self, call: _Call) -> dict[str, Any]:
        name = call.params["policyName"]
        if name not in self.cloud.policies:
            raise AwsError(404, "ResourceNotFoundException", f"policy {name} does not exist")
        self.cloud.attach_policy(name, self._target_certificate(call), region=call.region.name)
        return {}

    def detach_policy(self, call: _Call) -> dict[str, Any]:
        self.cloud.detach_policy(call.params["policyName"], self._target_certificate(call), region=call.region.name)
        return {}

    # thing principals

    def _principal(self, call: _Call) -> str:
        return _certificate_of_arn(call.region, call.headers.get("x-amzn-principal", ""), "principal")

    def attach_thing_principal(self, call: _Call) -> dict[str, Any]:
        """AttachThingPrincipal, NON_EXCLUSIVE_THING (AWS's default): the certificate keeps its other things."""
        thing = self._thing(call)
        kind = call.query.get("thingPrincipalType", "NON_EXCLUSIVE_THING")
        if kind != "NON_EXCLUSIVE_THING":
            raise AwsError(
                400, "InvalidRequestException", f"thingPrincipalType {kind} is not served here: NON_EXCLUSIVE_THING is"
            )
        self.cloud.attach_thing_principal(thing.name, self._principal(call), region=call.region.name)
        return {}

    def detach_thing_principal(self, call: _Call) -> dict[str, Any]:
        thing = self._thing(call)
        self.cloud.attach_thing_principal(thing.name, self._principal(call), attach=False, region=call.region.name)
        return {}

    def list_thing_principals(self, call: _Call) -> dict[str, Any]:
        thing = self._thing(call)
        certificates = call.region.registry.certificates_of(thing.name)
        return {"principals": [self._arn(call.region, "cert", c.certificate_id) for c in certificates]}

    def list_principal_things(self, call: _Call) -> dict[str, Any]:
        return {"things": call.region.registry.things_of(self._principal(call))}

    # provisioning templates

    def create_provisioning_template(self, call: _Call) -> dict[str, Any]:
        body = call.json()
        name, template_body = body.get("templateName"), body.get("templateBody")
        if not isinstance(name, str) or not isinstance(template_body, str) or not body.get("provisioningRoleArn"):
            raise AwsError(
                400, "InvalidRequestException", "templateName, templateBody and provisioningRoleArn are required"
            )
        if name in self.cloud.templates:
            raise AwsError(409, "ResourceAlreadyExistsException", f"template {name} already exists")
        try:
            template = ProvisioningTemplate(name, json.loads(template_body))
        except (ValueError, IotFleetError) as exc:
            raise AwsError(400, "InvalidRequestException", f"templateBody: {exc}") from exc
        self.cloud.add_template(template)
        self._template_meta[name] = {k: body[k] for k in ("description", "enabled", "provisioningRoleArn") if k in body}
        return {"templateArn": self._arn(call.region, "provisioningtemplate", name), "templateName": name,
                "defaultVersionId": 1}  # fmt: skip

    def describe_provisioning_template(self, call: _Call) -> dict[str, Any]:
        name = call.params["templateName"]
        template = self.cloud.templates.get(name)
        if template is None:
            raise AwsError(404, "ResourceNotFoundException", f"template {name} does not exist")
        meta = self._template_meta.get(name, {})
        return {
            "templateArn": self._arn(call.region, "provisioningtemplate", name), "templateName": name,
            "templateBody": json.dumps(template.body), "enabled": meta.get("enabled", True),
            "provisioningRoleArn": meta.get("provisioningRoleArn", f"arn:aws:iam::{LOCAL_ACCOUNT}:role/iotfleet-local"),
            "description": meta.get("description", ""), "defaultVersionId": 1, "type": "FLEET_PROVISIONING",
        }  # fmt: skip

    def _arn(self, region: Region, kind: str, name: str) -> str:
        return f"arn:aws:iot:{region.name}:{LOCAL_ACCOUNT}:{kind}/{name}"

    def create_job(self, call: _Call) -> dict[str, Any]:
        body = call.json()
        job_id = call.params["jobId"]
        if "documentSource" in body and "document" not in body:
            raise AwsError(400, "InvalidRequestException", "documentSource (S3) is not served here: give document")
        targets = [_target(arn) for arn in body.get("targets", [])]
        config = {k: v for k, v in body.items() if k not in ("targets", "document", "description", "tags")}
        self.cloud.create_job(
            job_id, targets=targets, document=str(body.get("document", "{}")), regions=[call.region.name],
            description=str(body.get("description", "")), **config,
        )  # fmt: skip
        return {
            "jobArn": self._arn(call.region, "job", job_id),
            "jobId": job_id,
            "description": body.get("description", ""),
        }

    def describe_job(self, call: _Call) -> dict[str, Any]:
        job = call.region.jobs.describe_job(call.params["jobId"])
        job["jobArn"] = self._arn(call.region, "job", job["jobId"])
        job["targets"] = [self._target_arn(call.region, t) for t in job["targets"]]
        return {"job": job}

    def _target_arn(self, region: Region, target: str) -> str:
        if target.startswith("group:"):
            return self._arn(region, "thinggroup", target[6:])
        return self._arn(region, "thing", target)

    def cancel_job(self, call: _Call) -> dict[str, Any]:
        body = call.json()
        job_id = call.params["jobId"]
        force = call.query.get("force", "false").lower() == "true"
        call.region.jobs.cancel_job(job_id, force=force, reason=body.get("reasonCode"), comment=body.get("comment"))
        return {"jobArn": self._arn(call.region, "job", job_id), "jobId": job_id}

    def list_job_executions_for_job(self, call: _Call) -> dict[str, Any]:
        executions = call.region.jobs.executions(call.params["jobId"], call.query.get("status"))
        start = int(call.query.get("nextToken") or 0)
        size = int(call.query.get("maxResults") or 250)
        page = executions[start : start + size]
        out: dict[str, Any] = {
            "executionSummaries": [
                {"thingArn": self._arn(call.region, "thing", e["thingName"]), "jobExecutionSummary": _summary(e)}
                for e in page
            ]
        }
        if start + size < len(executions):
            out["nextToken"] = str(start + size)
        return out

    def describe_job_execution(self, call: _Call) -> dict[str, Any]:
        number = call.query.get("executionNumber")
        execution = call.region.jobs.describe_execution(
            call.params["jobId"], call.params["thingName"], None if number is None else int(number)
        )
        return {
            "execution": {
                **_summary(execution),
                "jobId": execution["jobId"],
                "thingArn": self._arn(call.region, "thing", execution["thingName"]),
                "statusDetails": {"detailsMap": execution.get("statusDetails", {})},
                "versionNumber": execution["versionNumber"],
                "forceCanceled": False,
            }
        }

    # ---------------------------------------------------------------- iot-data

    def get_thing_shadow(self, call: _Call) -> web.Response:
        document = call.region.shadows.request(call.params["thingName"], ShadowOp.GET, b"", name=call.query.get("name"))
        return _raw(document)

    def update_thing_shadow(self, call: _Call) -> web.Response:
        document = call.region.shadows.request(
            call.params["thingName"], ShadowOp.UPDATE, call.body, name=call.query.get("name")
        )
        return _raw(document)

    def delete_thing_shadow(self, call: _Call) -> web.Response:
        document = call.region.shadows.request(
            call.params["thingName"], ShadowOp.DELETE, b"", name=call.query.get("name")
        )
        return _raw(document)

    def publish(self, call: _Call) -> dict[str, Any]:
        try:
            properties = parse_user_properties(call.headers.get("x-amz-mqtt5-user-properties"))
        except ValueError as exc:
            raise AwsError(400, "InvalidRequestException", str(exc)) from exc
        if not call.region.publish(call.params["topic"], call.body, properties, acked=True):
            raise AwsError(503, "ServiceUnavailableException", f"region {call.region.name} is down")
        return {}


def _certificate_of_arn(region: Region, arn: str, what: str) -> str:
    """The id of the certificate ``arn`` (``...:cert/<id>``) names, if ``region`` has it; else 404."""
    cert_id = arn.rpartition(":cert/")[2]
    if not cert_id or region.registry.certificate(cert_id) is None:
        raise AwsError(404, "ResourceNotFoundException", f"{what} {arn!r} is not a certificate of this region")
    return cert_id


def _error(exc: AwsError | IotFleetError | JobsError) -> AwsError:
    """AWS's error shape for what went wrong: the Jobs and shadow services' codes, by name and status."""
    if isinstance(exc, AwsError):
        return exc
    if isinstance(exc, JobsError):
        code = "VersionConflict" if exc.code == "VersionMismatch" else exc.code
        return AwsError(_JOB_STATUS.get(exc.code, 400), f"{code}Exception", exc.message)
    if isinstance(exc, ShadowRejected):
        return AwsError(exc.code, _SHADOW_ERRORS.get(exc.code, "InternalFailureException"), exc.error)
    if isinstance(exc, VersionConflict):
        return AwsError(409, "VersionConflictException", exc.message)
    return AwsError(400, "InvalidRequestException", exc.message)


def _has_attribute(attributes: Mapping[str, str], name: str | None, value: str | None) -> bool:
    """ListThings' filter: no name, or the attribute is there (with ``value``, if given)."""
    if name is None:
        return True
    return name in attributes and (value is None or attributes[name] == value)


def _version(value: Any) -> int | None:
    """An ``expectedVersion`` (a JSON number in a body, a string in a query), or None when not given."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdecimal():
        return int(value)
    raise AwsError(400, "InvalidRequestException", f"expectedVersion {value!r} is not a whole number")


def _thing_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"iotfleet-thing:{name}"))


def _attributes(body: Mapping[str, Any]) -> dict[str, str]:
    attributes = (body.get("attributePayload") or {}).get("attributes") or {}
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise AwsError(400, "InvalidRequestException", "attributePayload.attributes must map names to strings")
    return {str(k): v for k, v in attributes.items()}


def _target(arn: str) -> str:
    """A job target: ``...:thing/<name>`` -> the name, ``...:thinggroup/<name>`` -> ``group:<name>``."""
    kind, _, name = arn.rpartition(":")[2].partition("/")
    if kind == "thing" and name:
        return name
    if kind == "thinggroup" and name:
        return f"group:{name}"
    raise AwsError(400, "InvalidRequestException", f"target {arn!r} is not a thing or thing group ARN")


def _summary(execution: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: execution[k] for k in ("status", "queuedAt", "lastUpdatedAt", "executionNumber") if k in execution}
    if "startedAt" in execution:
        out["startedAt"] = execution["startedAt"]
    out["retryAttempt"] = int(execution.get("executionNumber", 1)) - 1
    return out


def _raw(document: Mapping[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(document).encode(), content_type="application/json")


def _unquote(value: str) -> str:
    return urllib.parse.unquote(value)
