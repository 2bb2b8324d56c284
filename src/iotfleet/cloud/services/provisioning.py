"""The local fleet-provisioning service: CreateKeysAndCertificate, CreateCertificateFromCsr, RegisterThing.

Requests arrive on AWS's topics (IOT_CORE.md section 1) in ``json`` or ``cbor``; answers go to
``.../accepted`` or ``.../rejected`` in the same encoding, with AWS's payloads. Every device provisions
with the same claim identity, so the region's broker plugin tags each request with the asking client's
id (``iotfleet-client-id``) and delivers an answer carrying ``iotfleet-deliver-to`` to that client only,
as IoT Core answers on the asking connection.

New certificates are recorded ``PENDING_ACTIVATION`` and attached to nothing; the ownership token that
names one is single use and expires after ``token_ttl`` (AWS: 1 hour), when the certificate is deleted.
RegisterThing evaluates the template (:mod:`iotfleet.cloud.templates`), asks the pre-provisioning hook,
and hands the registration to ``commit`` (the registry, the broker ACL and replication). Registrations
that arrive together are committed together, so a provisioning storm costs one ACL reload per batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from iotfleet._rate import TokenBucket
from iotfleet.cloud.ca import CertificateAuthority, certificate_id, unique_common_name
from iotfleet.cloud.registry import CertificateRecord, CertificateStatus, Registration, Registry, Thing
from iotfleet.cloud.services.base import RegionService
from iotfleet.cloud.templates import STEP as REGISTER_STEP
from iotfleet.cloud.templates import Override, PreProvisioningHook, ProvisioningPlan, ProvisioningTemplate
from iotfleet.errors import CertificateError, ConfigError, ProvisioningRejected, TopicError
from iotfleet.topics import ThingScope
from iotfleet.transport.base import InboundMessage

__all__ = ["CLIENT_ID_PROPERTY", "DELIVER_TO_PROPERTY", "REQUEST_FILTERS", "ProvisioningService"]

log = logging.getLogger(__name__)

REQUEST_FILTERS: Final = ("$aws/certificates/+/+", "$aws/provisioning-templates/+/provision/+")
CLIENT_ID_PROPERTY: Final = "iotfleet-client-id"  # added to each request by the broker plugin
DELIVER_TO_PROPERTY: Final = "iotfleet-deliver-to"  # the plugin delivers an answer to this client only
TOKEN_TTL: Final = 3600.0  # ownership-token lifetime (IOT_CORE.md section 1)
_CERTIFICATES = re.compile(r"\$aws/certificates/(create|create-from-csr)/(json|cbor)")
_REGISTER = re.compile(r"\$aws/provisioning-templates/([^/]+)/provision/(json|cbor)")
_STEPS = {"create": "CreateKeysAndCertificate", "create-from-csr": "CreateCertificateFromCsr"}


@dataclass(slots=True)
class _Token:
    certificate_id: str
    certificate_pem: str
    expires: float


@dataclass(slots=True)
class _Pending:
    """A RegisterThing waiting for the next batch commit."""

    registration: Registration
    plan: ProvisioningPlan
    token: str
    answer: Callable[[dict[str, Any] | ProvisioningRejected], None]


def _decode(payload: bytes, fmt: str, step: str) -> dict[str, Any]:
    if not payload.strip():
        return {}
    try:
        body = json.loads(payload) if fmt == "json" else cbor2.loads(payload)
    except (ValueError, cbor2.CBORDecodeError) as exc:
        raise ProvisioningRejected(
            step, 400, "InvalidPayload", f"the payload is not valid {fmt.upper()}: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise ProvisioningRejected(step, 400, "InvalidPayload", f"the payload must be a {fmt.upper()} object")
    return body


def _encode(body: Mapping[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(body, separators=(",", ":")).encode()
    return bytes(cbor2.dumps(dict(body)))


class ProvisioningService(RegionService):
    """Serves one region's fleet-provisioning topics.

    ``commit`` makes registrations effective (registry, ACL reload, replication); it blocks, so it runs
    in a worker thread. ``policies`` are the policy documents templates may name. ``rate_limit`` (requests
    per second for the region, None for no limit) answers 429 ``Throttled`` beyond it.
    """

    kind = "provisioning"
    filters = REQUEST_FILTERS

    def __init__(
        self,
        *,
        region: str,
        registry: Registry,
        ca: CertificateAuthority,
        templates: Mapping[str, ProvisioningTemplate],
        policies: Mapping[str, dict[str, Any]],
        commit: Callable[[tuple[Registration, ...]], None],
        claim_certificate_id: str,
        token_ttl: float = TOKEN_TTL,
        rate_limit: float | None = None,
    ) -> None:
        super().__init__(region)
        self.registry = registry
        self.ca = ca
        self.templates = templates
        self.policies = policies
        self.commit = commit
        self.claim_certificate_id = claim_certificate_id
        self.token_ttl = token_ttl
        self.rate_limit = rate_limit
        self._tokens: dict[str, _Token] = {}
        self._registering: set[str] = set()  # thing names in a batch not yet committed
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        # one second of burst, then ``rate_limit`` a second (IoT Core's API limits are token buckets too)
        self._bucket = None if rate_limit is None else TokenBucket(rate_limit, now=time.monotonic())
        self.requests: Counter[str] = Counter()  # by step
        self.rejected: Counter[str] = Counter()  # by errorCode
        self.registered = 0
        self.expired = 0

    def start(self) -> None:
        """Start the batch committer and the expiry sweep (on the services' loop)."""
        self._spawn(self._commit_loop(self._queue))
        self._spawn(self._sweep_loop())

    # ---------------------------------------------------------------- the MQTT path

    def on_message(self, message: InboundMessage) -> None:
        topic = message.topic
        client_id = message.property(CLIENT_ID_PROPERTY) or ""
        template: str | None = None
        if match := _CERTIFICATES.fullmatch(topic):
            step, fmt = _STEPS[match.group(1)], match.group(2)
        elif match := _REGISTER.fullmatch(topic):
            step, fmt, template = REGISTER_STEP, match.group(2), match.group(1)
        else:
            return
        self.requests[step] += 1

        def answer(result: dict[str, Any] | ProvisioningRejected) -> None:
            if isinstance(result, ProvisioningRejected):
                self.rejected[result.error_code] += 1
                self._reply(f"{topic}/rejected", result.payload(), fmt, client_id)
            else:
                self._reply(f"{topic}/accepted", result, fmt, client_id)

        try:
            if self._throttled(time.monotonic()):
                raise ProvisioningRejected(step, 429, "Throttled", "Rate exceeded: retry with backoff")
            body = _decode(message.payload, fmt, step)
            if template is not None:
                self._spawn(self._register(template, body, client_id, answer))
                return
            answer(self.create_certificate(step, body))
        except ProvisioningRejected as rejection:
            answer(rejection)
        except Exception as exc:  # noqa: BLE001 - a bug or a broken store: recorded; the device gets IoT Core's 500
            answer(self._internal_failure(step, exc))

    def _internal_failure(self, step: str, exc: Exception) -> ProvisioningRejected:
        """Record an unexpected error of a provisioning step; the answer is IoT Core's 500 InternalFailure."""
        self.failures.record(f"provisioning {self.region} {step}", exc)
        return ProvisioningRejected(step, 500, "InternalFailure", f"internal failure: {type(exc).__name__}: {exc}")

    def _reply(self, topic: str, body: Mapping[str, Any], fmt: str, client_id: str) -> None:
        if self.connection is not None:
            props = [(DELIVER_TO_PROPERTY, client_id)] if client_id else []
            self.connection.publish(topic, _encode(body, fmt), props)

    def _throttled(self, now: float) -> bool:
        return self._bucket is not None and self._bucket.acquire(now) > 0

    # ---------------------------------------------------------------- certificates

    def create_certificate(self, step: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """CreateKeysAndCertificate or CreateCertificateFromCsr: a PENDING_ACTIVATION certificate and its token."""
        common_name = unique_common_name()
        private_key: str | None = None
        if step == "CreateCertificateFromCsr":
            csr = body.get("certificateSigningRequest")
            if not isinstance(csr, str) or not csr.strip():
                raise ProvisioningRejected(
                    step, 400, "InvalidPayload", "certificateSigningRequest is required: a PEM certificate request"
                )
            try:
                pem = self.ca.sign_csr(csr, common_name).decode()
            except CertificateError as exc:
                raise ProvisioningRejected(step, 400, "InvalidCSR", exc.message) from None
        else:
            credentials = self.ca.issue(common_name)
            pem, private_key = credentials.certificate_pem.decode(), credentials.private_key_pem.decode()
        cert_id = certificate_id(pem)
        record = CertificateRecord(cert_id, common_name, pem, CertificateStatus.PENDING_ACTIVATION, None)
        self.registry.add_certificate(record)
        token = secrets.token_urlsafe(48)
        self._tokens[token] = _Token(cert_id, pem, time.time() + self.token_ttl)
        answer = {"certificateId": cert_id, "certificatePem": pem, "certificateOwnershipToken": token}
        if private_key is not None:
            answer["privateKey"] = private_key
        return answer

    def sweep(self, now: float) -> int:
        """Forget expired ownership tokens and delete their never-registered certificates (runs periodically;
        a presented token is checked on its own, so requests never scan the others)."""
        expired = [token for token, entry in self._tokens.items() if entry.expires <= now]
        for token in expired:
            self._expire(self._tokens.pop(token))
        return len(expired)

    def _expire(self, entry: _Token) -> None:
        if self.registry.delete_unused_certificate(entry.certificate_id):
            self.expired += 1

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.token_ttl / 2, 60.0))
            self.sweep(time.time())

    # ---------------------------------------------------------------- RegisterThing

    def _claim_token(self, body: Mapping[str, Any]) -> tuple[str, _Token]:
        token = body.get("certificateOwnershipToken")
        if not isinstance(token, str) or not token:
            raise ProvisioningRejected(
                REGISTER_STEP, 400, "InvalidCertificateOwnershipToken", "Certificate ownership token cannot be empty."
            )
        entry = self._tokens.pop(token, None)
        if entry is not None and entry.expires <= time.time():
            self._expire(entry)
            entry = None
        if entry is None:
            raise ProvisioningRejected(
                REGISTER_STEP,
                400,
                "InvalidCertificateOwnershipToken",
                "Certificate ownership token is invalid, expired or already used: create a new certificate",
            )
        return token, entry

    async def _register(
        self,
        template_name: str,
        body: Mapping[str, Any],
        client_id: str,
        answer: Callable[[dict[str, Any] | ProvisioningRejected], None],
    ) -> None:
        token: str | None = None
        entry: _Token | None = None
        try:
            template = self.templates.get(template_name)
            if template is None or not template.enabled:
                raise ProvisioningRejected(
                    REGISTER_STEP, 404, "ResourceNotFound", f"Template {template_name} does not exist or is disabled"
                )
            token, entry = self._claim_token(body)
            parameters = template.parameters(body.get("parameters") or {}, entry.certificate_id)
            if template.hook is not None:
                parameters = await self._ask_hook(template, template.hook, parameters, entry, client_id)
            plan = template.plan(parameters, self.policies)
            registration = self._registration(plan, entry)
            if plan.thing_name in self._registering:
                raise _conflict(plan.thing_name)
            self._registering.add(plan.thing_name)
        except (ProvisioningRejected, ConfigError) as exc:
            if token is not None and entry is not None:
                self._tokens[token] = entry  # a fixable request may be sent again with the same token
            answer(exc if isinstance(exc, ProvisioningRejected) else _invalid(exc.message))
            return
        except Exception as exc:  # noqa: BLE001 - recorded by _internal_failure; the device gets IoT Core's 500
            if token is not None and entry is not None:
                self._tokens[token] = entry
            answer(self._internal_failure(REGISTER_STEP, exc))
            return
        self._queue.put_nowait(_Pending(registration, plan, token, answer))

    async def _ask_hook(
        self,
        template: ProvisioningTemplate,
        hook: PreProvisioningHook,
        parameters: dict[str, str],
        entry: _Token,
        client_id: str,
    ) -> dict[str, str]:
        request = {
            "claimCertificateId": self.claim_certificate_id,
            "certificateId": entry.certificate_id,
            "certificatePem": entry.certificate_pem,
            "templateArn": template.arn,
            "clientId": client_id,
            "parameters": {k: v for k, v in parameters.items() if not k.startswith("AWS::")},
        }
        try:
            verdict = await asyncio.wait_for(asyncio.to_thread(hook, request), template.hook_timeout)
        except TimeoutError:
            raise _denied(f"the pre-provisioning hook did not answer within {template.hook_timeout}s") from None
        except Exception as exc:  # noqa: BLE001 - the user's hook: any error is a denial, like a failing Lambda
            raise _denied(f"the pre-provisioning hook failed: {exc}") from None
        if not isinstance(verdict, Mapping) or verdict.get("allowProvisioning") is not True:
            raise _denied("the pre-provisioning hook did not allow provisioning")
        overrides = verdict.get("parameterOverrides") or {}
        if not isinstance(overrides, Mapping) or not all(isinstance(v, str) for v in overrides.values()):
            raise _denied("the pre-provisioning hook returned parameterOverrides that are not strings")
        return {**parameters, **overrides}

    def _registration(self, plan: ProvisioningPlan, entry: _Token) -> Registration:
        attributes = plan.attributes
        existing = self.registry.thing(plan.thing_name)
        if existing is not None:
            if plan.override is Override.FAIL:
                raise _conflict(plan.thing_name)
            if plan.override is Override.DO_NOTHING:
                attributes = dict(existing.attributes)
            elif plan.override is Override.MERGE:
                attributes = {**existing.attributes, **attributes}
        if "tenant" in attributes or "site" in attributes:
            try:  # the device policy puts them in topics
                ThingScope(attributes.get("tenant", "-"), attributes.get("site", "-"), plan.thing_name)
            except TopicError as exc:
                raise _invalid(f"attribute values must be usable in topics: {exc}") from None
        if plan.policy_name is not None and plan.policy_document is not None:
            policies = {plan.policy_name: plan.policy_document}
        else:  # the template attaches none: the new certificate gets those of the thing's other certificates
            policies = self.registry.policies_of_thing(plan.thing_name) if existing else {}
        if not policies:
            raise _invalid("the template attaches no policy, so the device could not do anything")
        thing = Thing(plan.thing_name, attributes)
        status = CertificateStatus(plan.certificate_status)
        record = self.registry.certificate(entry.certificate_id)
        if record is None:
            raise ProvisioningRejected(
                REGISTER_STEP, 400, "InvalidCertificateOwnershipToken", "the certificate of this token was deleted"
            )
        certificate = CertificateRecord(record.certificate_id, record.common_name, record.pem, status, thing.name)
        return Registration(thing, certificate, policies)

    async def _commit_loop(self, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await asyncio.to_thread(self.commit, tuple(p.registration for p in batch))
            except Exception as exc:  # noqa: BLE001 - recorded; nothing was registered, each asker gets a 500
                rejection = self._internal_failure(REGISTER_STEP, exc)
                log.warning("region %s: committing %d registrations failed: %s", self.region, len(batch), exc)
                for pending in batch:
                    self._registering.discard(pending.plan.thing_name)
                    pending.answer(rejection)
                continue
            self.registered += len(batch)
            for pending in batch:
                self._registering.discard(pending.plan.thing_name)
                pending.answer(
                    {"deviceConfiguration": pending.plan.device_configuration, "thingName": pending.plan.thing_name}
                )


def _invalid(message: str) -> ProvisioningRejected:
    return ProvisioningRejected(REGISTER_STEP, 400, "InvalidParameters", message)


def _denied(message: str) -> ProvisioningRejected:
    return ProvisioningRejected(REGISTER_STEP, 403, "AccessDenied", message)


def _conflict(thing_name: str) -> ProvisioningRejected:
    return ProvisioningRejected(
        REGISTER_STEP,
        409,
        "ResourceConflict",
        f"thing {thing_name} already exists and the template's OverrideSettings say FAIL: "
        "use a new serial number, or delete the thing first",
    )
