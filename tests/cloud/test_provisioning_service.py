"""The local fleet-provisioning service over real MQTT: AWS's payloads, every bad input, AWS's own client."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from awsiot import V2ServiceException, iotidentity

from iotfleet.cloud.local import DEFAULT_TEMPLATE, LocalCloud
from iotfleet.cloud.registry import CertificateStatus
from iotfleet.cloud.templates import ProvisioningTemplate, default_template_body
from iotfleet.provisioning.keys import csr_pem, new_private_key
from iotfleet.transport.base import ConnectOptions, InboundMessage, Session
from iotfleet.transport.paho import PahoTransport
from tests.conftest import aws_sdk_client

CSR_TOPIC = "$aws/certificates/create-from-csr/json"
KEYS_TOPIC = "$aws/certificates/create/json"
REGISTER_TOPIC = f"$aws/provisioning-templates/{DEFAULT_TEMPLATE}/provision/json"
PARAMS = {"Tenant": "acme", "Site": "hq", "SerialNumber": "lamp-100"}


class ClaimClient:
    """A device holding the claim certificate, speaking the provisioning API by hand (one request at a time)."""

    def __init__(self, cloud: LocalCloud, client_id: str = "claimer-1", region: str = "eu-west-1") -> None:
        self.cloud = cloud
        self.client_id = client_id
        self.region = region
        self.inbox: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self.session: Session | None = None

    async def __aenter__(self) -> ClaimClient:
        options = ConnectOptions(
            client_id=self.client_id, identity=self.cloud.claim_identity, on_message=self.inbox.put_nowait
        )
        self.session = await PahoTransport().connect(self.cloud.region(self.region).endpoint, options)
        topics = [CSR_TOPIC, KEYS_TOPIC, REGISTER_TOPIC, CSR_TOPIC.replace("json", "cbor")]
        await self.session.subscribe([(f"{t}/{o}", 1) for t in topics for o in ("accepted", "rejected")])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def ask(self, topic: str, payload: bytes | dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Publish a request; return (``accepted``/``rejected``, decoded answer)."""
        assert self.session is not None
        raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        assert await self.session.publish(topic, raw, 1) == 0
        message = await asyncio.wait_for(self.inbox.get(), 10)
        request, _, outcome = message.topic.rpartition("/")
        assert request == topic
        body = cbor2.loads(message.payload) if topic.endswith("cbor") else json.loads(message.payload)
        return outcome, body

    async def certificate(self) -> dict[str, Any]:
        outcome, body = await self.ask(CSR_TOPIC, {"certificateSigningRequest": csr_pem(new_private_key(), "x")})
        assert outcome == "accepted", body
        return body


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def registered(cloud: LocalCloud, thing: str) -> bool:
    return any(r.registry.thing(thing) is not None for r in cloud.regions)


# --------------------------------------------------------------------------- the happy paths


def test_csr_then_register_thing_answers_exactly_aws_fields(local_cloud: LocalCloud) -> None:
    async def scenario() -> tuple[dict[str, Any], tuple[str, dict[str, Any]]]:
        async with ClaimClient(local_cloud) as claim:
            certificate = await claim.certificate()
            pending = local_cloud.region("eu-west-1").registry.certificate(certificate["certificateId"])
            assert pending is not None
            assert (pending.status, pending.thing) == (CertificateStatus.PENDING_ACTIVATION, None)
            token = certificate["certificateOwnershipToken"]
            return certificate, await claim.ask(
                REGISTER_TOPIC, {"certificateOwnershipToken": token, "parameters": PARAMS}
            )

    certificate, (outcome, body) = run(scenario())
    assert set(certificate) == {"certificateId", "certificatePem", "certificateOwnershipToken"}
    assert (outcome, body) == ("accepted", {"deviceConfiguration": {}, "thingName": "lamp-100"})
    for region in local_cloud.regions:  # registered at home and replicated
        record = region.registry.certificate(certificate["certificateId"])
        assert record is not None
        assert (record.status, record.thing) == (CertificateStatus.ACTIVE, "lamp-100")
        thing = region.registry.thing("lamp-100")
        assert thing is not None
        assert dict(thing.attributes) == {"tenant": "acme", "site": "hq"}


@pytest.mark.parametrize("payload", [b"", b"{}"])
def test_create_keys_and_certificate_accepts_an_empty_payload_and_an_empty_object(
    local_cloud: LocalCloud, payload: bytes
) -> None:
    async def scenario() -> tuple[str, dict[str, Any]]:
        async with ClaimClient(local_cloud) as claim:
            return await claim.ask(KEYS_TOPIC, payload)

    outcome, body = run(scenario())
    assert outcome == "accepted"
    assert set(body) == {"certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"}
    assert body["privateKey"].startswith("-----BEGIN PRIVATE KEY-----")


def test_cbor_requests_get_cbor_answers(local_cloud: LocalCloud) -> None:
    async def scenario() -> tuple[str, dict[str, Any]]:
        async with ClaimClient(local_cloud) as claim:
            csr = csr_pem(new_private_key(), "x")
            return await claim.ask(CSR_TOPIC.replace("json", "cbor"), cbor2.dumps({"certificateSigningRequest": csr}))

    outcome, body = run(scenario())
    assert outcome == "accepted"
    assert body["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")


# --------------------------------------------------------------------------- bad input


def expect_rejected(answer: tuple[str, dict[str, Any]], status: int, code: str, text: str) -> None:
    outcome, body = answer
    assert outcome == "rejected"
    assert set(body) == {"statusCode", "errorCode", "errorMessage"}
    assert (body["statusCode"], body["errorCode"]) == (status, code)
    assert text in body["errorMessage"]


def test_a_malformed_csr_is_rejected_and_nothing_is_recorded(local_cloud: LocalCloud) -> None:
    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        async with ClaimClient(local_cloud) as claim:
            return [
                await claim.ask(CSR_TOPIC, {"certificateSigningRequest": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA"}),
                await claim.ask(CSR_TOPIC, {}),
                await claim.ask(CSR_TOPIC, b"{not json"),
            ]

    malformed, missing, not_json = run(scenario())
    expect_rejected(malformed, 400, "InvalidCSR", "not a valid PEM CSR")
    expect_rejected(missing, 400, "InvalidPayload", "certificateSigningRequest is required")
    expect_rejected(not_json, 400, "InvalidPayload", "not valid JSON")
    service = local_cloud.region("eu-west-1").provisioning
    assert service is not None
    assert service.rejected == {"InvalidCSR": 1, "InvalidPayload": 2}
    assert local_cloud.region("eu-west-1").registry.principals() == []


def test_unknown_or_disabled_template(tmp_path: Path) -> None:
    """A template the claim policy does not name is refused by the broker (0x87), as on IoT Core; one the
    policy names but that is disabled gets 404 ResourceNotFound."""
    retired = ProvisioningTemplate("retired", default_template_body("iotfleet-device"), enabled=False)

    async def scenario(cloud: LocalCloud) -> tuple[int, tuple[str, dict[str, Any]]]:
        async with ClaimClient(cloud) as claim:
            assert claim.session is not None
            token = (await claim.certificate())["certificateOwnershipToken"]
            body = {"certificateOwnershipToken": token, "parameters": PARAMS}
            unknown = "$aws/provisioning-templates/no-such-template/provision/json"
            refused = await claim.session.publish(unknown, json.dumps(body).encode(), 1)
            topic = "$aws/provisioning-templates/retired/provision/json"
            await claim.session.subscribe([(f"{topic}/accepted", 1), (f"{topic}/rejected", 1)])
            return refused, await claim.ask(topic, body)

    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", templates=[retired]) as cloud:
        refused, answer = run(scenario(cloud))
        assert not registered(cloud, "lamp-100")
    assert refused == 0x87
    expect_rejected(answer, 404, "ResourceNotFound", "Template retired does not exist or is disabled")


def test_missing_parameter_then_the_same_token_works_once_fixed(local_cloud: LocalCloud) -> None:
    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        async with ClaimClient(local_cloud) as claim:
            token = (await claim.certificate())["certificateOwnershipToken"]
            partial = {k: v for k, v in PARAMS.items() if k != "Site"}
            first = await claim.ask(REGISTER_TOPIC, {"certificateOwnershipToken": token, "parameters": partial})
            assert not registered(local_cloud, "lamp-100")
            second = await claim.ask(REGISTER_TOPIC, {"certificateOwnershipToken": token, "parameters": PARAMS})
            third = await claim.ask(REGISTER_TOPIC, {"certificateOwnershipToken": token, "parameters": PARAMS})
            return [first, second, third]

    missing, fixed, reused = run(scenario())
    expect_rejected(missing, 400, "InvalidParameters", "Parameter Site is required")
    assert fixed[0] == "accepted"
    expect_rejected(reused, 400, "InvalidCertificateOwnershipToken", "already used")


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"parameters": PARAMS}, "Certificate ownership token cannot be empty."),
        ({"certificateOwnershipToken": "", "parameters": PARAMS}, "Certificate ownership token cannot be empty."),
        ({"certificateOwnershipToken": "forged", "parameters": PARAMS}, "invalid, expired or already used"),
    ],
)
def test_empty_or_unknown_tokens(local_cloud: LocalCloud, body: dict[str, Any], text: str) -> None:
    async def scenario() -> tuple[str, dict[str, Any]]:
        async with ClaimClient(local_cloud) as claim:
            return await claim.ask(REGISTER_TOPIC, body)

    expect_rejected(run(scenario()), 400, "InvalidCertificateOwnershipToken", text)
    assert not registered(local_cloud, "lamp-100")


def test_invalid_thing_name_and_topic_breaking_attributes(local_cloud: LocalCloud) -> None:
    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        async with ClaimClient(local_cloud) as claim:
            answers = []
            for params in ({**PARAMS, "SerialNumber": "lamp 100!"}, {**PARAMS, "Site": "hq/+"}):
                token = (await claim.certificate())["certificateOwnershipToken"]
                answers.append(
                    await claim.ask(REGISTER_TOPIC, {"certificateOwnershipToken": token, "parameters": params})
                )
            return answers

    bad_name, bad_site = run(scenario())
    expect_rejected(bad_name, 400, "InvalidParameters", "'lamp 100!' is not a valid thing name")
    expect_rejected(bad_site, 400, "InvalidParameters", "usable in topics")
    assert local_cloud.region("eu-west-1").registry.things() == []


def test_a_second_register_thing_for_an_existing_serial_fails(local_cloud: LocalCloud) -> None:
    async def scenario() -> list[tuple[str, tuple[str, dict[str, Any]]]]:
        async with ClaimClient(local_cloud) as claim:
            answers = []
            for _ in range(2):
                certificate = await claim.certificate()
                body = {"certificateOwnershipToken": certificate["certificateOwnershipToken"], "parameters": PARAMS}
                answers.append((certificate["certificateId"], await claim.ask(REGISTER_TOPIC, body)))
            return answers

    (first_id, first), (second_id, second) = run(scenario())
    assert first[0] == "accepted"
    expect_rejected(second, 409, "ResourceConflict", "lamp-100 already exists")
    registry = local_cloud.region("eu-west-1").registry
    second_record = registry.certificate(second_id)
    assert second_record is not None
    assert (second_record.status, second_record.thing) == (CertificateStatus.PENDING_ACTIVATION, None)
    assert [p.common_name for p in registry.principals()] == [registry.certificate(first_id).common_name]  # type: ignore[union-attr]


@pytest.fixture
def short_lived_tokens(tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", token_ttl=0.5) as cloud:
        yield cloud


def test_an_expired_token_is_rejected_and_its_certificate_deleted(short_lived_tokens: LocalCloud) -> None:
    cloud = short_lived_tokens

    async def scenario() -> tuple[str, tuple[str, dict[str, Any]]]:
        async with ClaimClient(cloud) as claim:
            certificate = await claim.certificate()
            await asyncio.sleep(0.6)  # past the (test-sized) ownership-token lifetime
            body = {"certificateOwnershipToken": certificate["certificateOwnershipToken"], "parameters": PARAMS}
            return certificate["certificateId"], await claim.ask(REGISTER_TOPIC, body)

    certificate_id, answer = run(scenario())
    expect_rejected(answer, 400, "InvalidCertificateOwnershipToken", "expired")
    assert cloud.region("eu-west-1").registry.certificate(certificate_id) is None
    assert not registered(cloud, "lamp-100")


# --------------------------------------------------------------------------- templates and the hook


def hooked_cloud(tmp_path: Path, hook: Any, **body_changes: Any) -> LocalCloud:
    body = {**default_template_body("iotfleet-device"), **body_changes}
    template = ProvisioningTemplate(DEFAULT_TEMPLATE, body, hook=hook, hook_timeout=0.5)
    return LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", templates=[template])


def register_once(cloud: LocalCloud, params: dict[str, str]) -> tuple[str, dict[str, Any]]:
    async def scenario() -> tuple[str, dict[str, Any]]:
        async with ClaimClient(cloud) as claim:
            token = (await claim.certificate())["certificateOwnershipToken"]
            return await claim.ask(REGISTER_TOPIC, {"certificateOwnershipToken": token, "parameters": params})

    result: tuple[str, dict[str, Any]] = run(scenario())
    return result


def test_the_hook_sees_aws_input_and_may_override_parameters(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def hook(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return {"allowProvisioning": True, "parameterOverrides": {"Site": "assigned-by-hook"}}

    configuration = {"DeviceConfiguration": {"fallback": {"Fn::Join": ["-", [{"Ref": "Tenant"}, "backup"]]}}}
    with hooked_cloud(tmp_path, hook, **configuration) as cloud:
        outcome, body = register_once(cloud, PARAMS)
        thing = cloud.region("eu-west-1").registry.thing("lamp-100")
    assert (outcome, body) == (
        "accepted",
        {"deviceConfiguration": {"fallback": "acme-backup"}, "thingName": "lamp-100"},
    )
    assert thing is not None
    assert thing.site == "assigned-by-hook"
    assert set(seen[0]) == {
        "claimCertificateId",
        "certificateId",
        "certificatePem",
        "templateArn",
        "clientId",
        "parameters",
    }
    assert (seen[0]["clientId"], seen[0]["parameters"]) == ("claimer-1", PARAMS)


@pytest.mark.parametrize(
    ("hook", "text"),
    [
        (lambda _r: {"allowProvisioning": False}, "did not allow provisioning"),
        (lambda _r: 1 / 0, "hook failed: division by zero"),
        (lambda _r: time.sleep(2), "did not answer within 0.5s"),
    ],
    ids=["denied", "raises", "too-slow"],
)
def test_a_hook_that_denies_fails_or_times_out_means_access_denied(tmp_path: Path, hook: Any, text: str) -> None:
    with hooked_cloud(tmp_path, hook) as cloud:
        answer = register_once(cloud, PARAMS)
        assert not registered(cloud, "lamp-100")
    expect_rejected(answer, 403, "AccessDenied", text)


def test_the_claim_may_use_only_the_provisioning_topics(local_cloud: LocalCloud) -> None:
    async def scenario() -> list[int]:
        async with ClaimClient(local_cloud) as claim:
            assert claim.session is not None
            return [
                await claim.session.publish("dt/acme/hq/lamp-100/telemetry", b"{}", 1),
                await claim.session.publish("$aws/things/lamp-100/shadow/update", b"{}", 1),
                await claim.session.publish("$aws/provisioning-templates/other/provision/json", b"{}", 1),
            ]

    assert run(scenario()) == [0x87, 0x87, 0x87]


# --------------------------------------------------------------------------- AWS's own identity client


@pytest.fixture
def aws_identity(local_cloud: LocalCloud) -> Iterator[iotidentity.IotIdentityClientV2]:
    endpoint = local_cloud.region("eu-west-1").endpoint
    with aws_sdk_client(endpoint, local_cloud.claim, "aws-sdk-device") as (client, options):
        yield iotidentity.IotIdentityClientV2(client, options)


def test_aws_identity_client_v2_provisions_against_the_local_cloud(
    local_cloud: LocalCloud, aws_identity: iotidentity.IotIdentityClientV2
) -> None:
    csr = csr_pem(new_private_key(), "aws-sdk-device")
    created = aws_identity.create_certificate_from_csr(
        iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)
    ).result(10)
    assert created.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
    registered_thing = aws_identity.register_thing(
        iotidentity.RegisterThingRequest(
            template_name=DEFAULT_TEMPLATE,
            certificate_ownership_token=created.certificate_ownership_token,
            parameters={**PARAMS, "SerialNumber": "aws-sdk-device"},
        )
    ).result(10)
    assert registered_thing.thing_name == "aws-sdk-device"
    assert registered_thing.device_configuration == {}

    keys = aws_identity.create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest()).result(10)
    assert keys.private_key.startswith("-----BEGIN PRIVATE KEY-----")
    with pytest.raises(V2ServiceException) as rejected:
        aws_identity.register_thing(
            iotidentity.RegisterThingRequest(
                template_name=DEFAULT_TEMPLATE,
                certificate_ownership_token=keys.certificate_ownership_token,
                parameters={**PARAMS, "SerialNumber": "aws-sdk-device"},  # already registered above
            )
        ).result(10)
    error = rejected.value.modeled_error
    assert (error.status_code, error.error_code) == (409, "ResourceConflict")


def test_a_failed_commit_is_a_500_recorded_and_the_next_registration_works(local_cloud: LocalCloud) -> None:
    service = local_cloud.region("eu-west-1").provisioning
    assert service is not None
    commit, calls = service.commit, []

    def broken_once(batch: Any) -> None:  # stands in for a disk error while the batch is written
        calls.append(batch)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        commit(batch)

    service.commit = broken_once

    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        answers = []
        async with ClaimClient(local_cloud) as claim:
            for serial in ("lamp-100", "lamp-101"):
                token = (await claim.certificate())["certificateOwnershipToken"]
                parameters = {**PARAMS, "SerialNumber": serial}
                answers.append(
                    await claim.ask(REGISTER_TOPIC, {"certificateOwnershipToken": token, "parameters": parameters})
                )
        return answers

    failed, later = run(scenario())
    expect_rejected(failed, 500, "InternalFailure", "OperationalError: disk I/O error")
    assert later == ("accepted", {"deviceConfiguration": {}, "thingName": "lamp-101"})
    assert not registered(local_cloud, "lamp-100")
    assert local_cloud.failures.counts() == {"provisioning eu-west-1 RegisterThing": 1}
