"""FleetProvisioner and IdentityStore end to end against the local cloud, on both transports."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.cloud.ca import CertificateAuthority
from iotfleet.cloud.local import DEFAULT_TEMPLATE, LocalCloud
from iotfleet.cloud.templates import ProvisioningTemplate
from iotfleet.config import Identity
from iotfleet.device.client import DeviceClient
from iotfleet.errors import CertificateError, ConfigError, ProvisioningRejected, RequestTimeout
from iotfleet.provisioning import FleetProvisioner, IdentityStore, KeyType, Method, ProvisionedDevice
from iotfleet.provisioning.keys import new_private_key, private_key_pem
from iotfleet.testing import LOCAL_FAST
from iotfleet.topics import PayloadFormat
from iotfleet.transport.base import ConnectOptions, InboundMessage, Session
from iotfleet.transport.paho import PahoTransport
from tests.conftest import TEST_QUOTAS, Watcher

T = TypeVar("T")
PARAMS = {"Tenant": "acme", "Site": "hq", "SerialNumber": "lamp-7"}


def provisioner(cloud: LocalCloud, transport: str = "crt", **kwargs: object) -> FleetProvisioner:
    options: dict[str, object] = {"parameters": PARAMS, "timeout": 5.0, "transport": transport, **kwargs}
    return FleetProvisioner(
        endpoints=cloud.endpoints,
        claim=cloud.claim_identity,
        template=DEFAULT_TEMPLATE,
        **options,  # type: ignore[arg-type]
    )


def test_claim_to_identity_to_publishing_in_both_regions(
    local_cloud: LocalCloud, tmp_path: Path, transport: str
) -> None:
    """claim -> CSR -> RegisterThing -> reconnect with the new identity -> publish; then in region 2."""

    async def scenario() -> Watcher:
        watcher = await Watcher(local_cloud).start()
        store = IdentityStore(tmp_path / "lamp-7")
        stored = await provisioner(local_cloud, transport).provision_into(store)
        assert stored.identity.thing_name == "lamp-7"
        for endpoints in (local_cloud.endpoints, local_cloud.endpoints[1:]):  # home region, then the replica
            async with DeviceClient(
                identity=stored.identity,
                endpoints=endpoints,
                tenant="acme",
                site="hq",
                transport=transport,
                reconnect=LOCAL_FAST,
            ) as lamp:
                receipt = await lamp.publish("telemetry", {"power_w": 9.5}, timeout=10)
                assert receipt.endpoint == endpoints[0]
        await watcher.wait_for(lambda: len({region for region, _ in watcher.messages}) == 2)
        await watcher.close()
        return watcher

    watcher = run(scenario())
    regions = sorted(region for region, message in watcher.messages if message.topic == "dt/acme/hq/lamp-7/telemetry")
    assert regions == ["eu-west-1", "us-east-1"]
    key = tmp_path / "lamp-7" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "lamp-7").stat().st_mode) == 0o700


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("method", "key_type", "fmt"),
    [
        (Method.KEYS, KeyType.EC_P256, PayloadFormat.JSON),
        (Method.CSR, KeyType.RSA_2048, PayloadFormat.CBOR),
    ],
)
def test_other_methods_key_types_and_cbor(
    local_cloud: LocalCloud, method: Method, key_type: KeyType, fmt: PayloadFormat
) -> None:
    device = run(provisioner(local_cloud, method=method, key_type=key_type, payload_format=fmt).provision())
    record = local_cloud.region("eu-west-1").registry.certificate(device.certificate_id)
    assert record is not None
    assert record.thing == "lamp-7"
    assert device.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_device_with_an_identity_skips_provisioning(local_cloud: LocalCloud, tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "id")
    first = run(provisioner(local_cloud).provision_into(store))
    service = local_cloud.region("eu-west-1").provisioning
    assert service is not None
    asked = sum(service.requests.values())
    again = run(provisioner(local_cloud).provision_into(store))
    assert again == first
    assert sum(service.requests.values()) == asked  # nothing was sent the second time


def test_a_final_rejection_is_raised_at_once_with_aws_fields(local_cloud: LocalCloud) -> None:
    with pytest.raises(ProvisioningRejected) as rejected:
        run(provisioner(local_cloud, parameters={"Tenant": "acme", "SerialNumber": "lamp-7"}).provision())
    error = rejected.value
    assert (error.step, error.status_code, error.error_code) == ("RegisterThing", 400, "InvalidParameters")
    assert "Parameter Site is required" in error.error_message
    service = local_cloud.region("eu-west-1").provisioning
    assert service is not None
    assert service.requests["RegisterThing"] == 1  # not retried


def test_throttling_is_retried_with_backoff(tmp_path: Path) -> None:
    """Three devices at once against a region allowing 3 requests/s: some are throttled, all get through."""

    async def storm(cloud: LocalCloud) -> list[ProvisionedDevice]:
        devices = [
            provisioner(cloud, attempts=20, parameters={**PARAMS, "SerialNumber": f"lamp-{n}"}) for n in range(3)
        ]
        return list(await asyncio.gather(*(d.provision() for d in devices)))

    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", provisioning_rate_limit=3, quotas=TEST_QUOTAS) as cloud:
        devices = run(storm(cloud))
        service = cloud.region("eu-west-1").provisioning
        assert service is not None
        throttled = service.rejected["Throttled"]
    assert sorted(d.thing_name for d in devices) == ["lamp-0", "lamp-1", "lamp-2"]
    assert throttled >= 1
    assert sum(d.attempts for d in devices) == throttled + 3


def test_a_dead_region_fails_over_to_the_next(local_cloud: LocalCloud) -> None:
    local_cloud.region("eu-west-1").kill()
    device = run(provisioner(local_cloud).provision())
    assert device.endpoint.region == "us-east-1"
    assert local_cloud.region("us-east-1").registry.thing("lamp-7") is not None


def test_no_answer_is_a_timeout_naming_the_step(local_cloud: LocalCloud) -> None:
    service = local_cloud.region("eu-west-1").provisioning
    assert service is not None
    service.connection = None  # the service now drops its answers, like a lost response
    with pytest.raises(RequestTimeout, match="CreateCertificateFromCsr: no answer"):
        run(provisioner(local_cloud, timeout=0.3, attempts=2).provision())


def test_bad_configuration_is_named(local_cloud: LocalCloud) -> None:
    with pytest.raises(ConfigError, match="at least one endpoint"):
        FleetProvisioner(endpoints=[], claim=local_cloud.claim_identity, template=DEFAULT_TEMPLATE)
    with pytest.raises(ConfigError, match="must be strings"):
        FleetProvisioner(
            endpoints=local_cloud.endpoints,
            claim=local_cloud.claim_identity,
            template="t",
            parameters={"n": 1},  # type: ignore[dict-item]
        )


def test_a_damaged_store_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "id").mkdir()
    (tmp_path / "id" / "identity.json").write_text("{")
    with pytest.raises(ConfigError, match=r"damaged .* provision the device again"):
        IdentityStore(tmp_path / "id").load()


class RogueAnswers:
    """A connection with the cloud's service identity answering every certificate request with a forged
    answer while the real service's answers are dropped: a forgery that reached the device.

    ``issuer`` signs: the request's own CSR (``sign_csr``), or a new key pair for the forged answer;
    ``key_pem`` replaces the private key sent with CreateKeysAndCertificate's answer.
    """

    def __init__(
        self, cloud: LocalCloud, issuer: CertificateAuthority, *, sign_csr: bool, key_pem: bytes | None = None
    ) -> None:
        self.cloud = cloud
        self.issuer = issuer
        self.sign_csr = sign_csr
        self.key_pem = key_pem
        self.session: Session | None = None

    async def __aenter__(self) -> RogueAnswers:
        service = self.cloud.region("eu-west-1").provisioning
        assert service is not None
        service.connection = None  # the genuine answers are lost
        identity = Identity(
            thing_name="rogue",
            cert_file=self.cloud.service.cert_file,
            key_file=self.cloud.service.key_file,
            ca_file=self.cloud.ca_file,
        )
        options = ConnectOptions(client_id="rogue", identity=identity, on_message=self._on_request)
        self.session = await PahoTransport().connect(self.cloud.region("eu-west-1").endpoint, options)
        await self.session.subscribe([("$aws/certificates/+/json", 1)])
        return self

    def forge(self, request: dict[str, str]) -> dict[str, str]:
        answer = {"certificateId": "f" * 64, "certificateOwnershipToken": "forged-token"}
        if self.sign_csr:
            answer["certificatePem"] = self.issuer.sign_csr(request["certificateSigningRequest"], "forged").decode()
        else:
            credentials = self.issuer.issue("forged")
            answer["certificatePem"] = credentials.certificate_pem.decode()
            answer["privateKey"] = (self.key_pem or credentials.private_key_pem).decode()
        return answer

    def _on_request(self, message: InboundMessage) -> None:
        assert self.session is not None
        asker = message.property("iotfleet-client-id") or ""
        body = json.dumps(self.forge(json.loads(message.payload or b"{}"))).encode()
        asyncio.get_running_loop().create_task(
            self.session.publish(f"{message.topic}/accepted", body, 1, [("iotfleet-deliver-to", asker)])
        )

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()


@pytest.mark.parametrize(
    ("method", "forged", "complaint"),
    [
        (Method.CSR, "other-key", "does not carry this device's public key"),
        (Method.CSR, "other-ca", "was not signed by a CA in"),
        (Method.KEYS, "mismatched-key", "does not carry this device's public key"),
        (Method.KEYS, "other-ca", "was not signed by a CA in"),
    ],
)
def test_a_forged_certificate_is_refused_before_registering_and_nothing_is_saved(
    local_cloud: LocalCloud, tmp_path: Path, method: Method, forged: str, complaint: str
) -> None:
    issuer = CertificateAuthority.open(tmp_path / "other-ca") if forged == "other-ca" else local_cloud.ca
    rogue = RogueAnswers(
        local_cloud,
        issuer,
        sign_csr=method is Method.CSR and forged == "other-ca",
        key_pem=private_key_pem(new_private_key()) if forged == "mismatched-key" else None,
    )
    store = IdentityStore(tmp_path / "device")

    async def scenario() -> None:
        async with rogue:
            await provisioner(local_cloud, method=method, attempts=1).provision_into(store)

    step = "CreateCertificateFromCsr" if method is Method.CSR else "CreateKeysAndCertificate"
    with pytest.raises(CertificateError, match=rf"^{step}: .*{complaint}"):
        run(scenario())
    assert not store.exists()
    service = local_cloud.region("eu-west-1").provisioning
    assert service is not None
    assert service.requests["RegisterThing"] == 0


# AWS's fleet-provisioning template shape (DG "Provisioning templates"), with a thing name built by Fn::Join
SENSOR_TEMPLATE = {
    "Parameters": {
        "Tenant": {"Type": "String"},
        "Site": {"Type": "String"},
        "SerialNumber": {"Type": "String"},
        "AWS::IoT::Certificate::Id": {"Type": "String"},
    },
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["", ["sensor-", {"Ref": "SerialNumber"}]]},
                "AttributePayload": {"tenant": {"Ref": "Tenant"}, "site": {"Ref": "Site"}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"},
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "iotfleet-device"}},
    },
}


def test_templates_load_from_files_in_either_shape_and_provision(tmp_path: Path) -> None:
    body_file = tmp_path / "sensors.json"  # a template body: named after the file
    body_file.write_text(json.dumps(SENSOR_TEMPLATE))
    described = tmp_path / "described.json"  # 'aws iot describe-provisioning-template' output
    described.write_text(json.dumps({"templateName": "lamps-v2", "templateBody": json.dumps(SENSOR_TEMPLATE)}))
    templates = [ProvisioningTemplate.from_file(body_file), ProvisioningTemplate.from_file(described)]
    assert [t.name for t in templates] == ["sensors", "lamps-v2"]
    with LocalCloud(workdir=tmp_path / "cloud", templates=templates, quotas=TEST_QUOTAS) as cloud:
        assert cloud.info()["templates"] == ["iotfleet-default", "iotfleet-https", "lamps-v2", "sensors"]
        for template, serial in (("sensors", "7"), ("lamps-v2", "8")):
            params = {"Tenant": "acme", "Site": "hq", "SerialNumber": serial}
            claim = FleetProvisioner(
                endpoints=cloud.endpoints, claim=cloud.claim_identity, template=template, parameters=params, timeout=5.0
            )
            device = run(claim.provision())
            assert device.thing_name == f"sensor-{serial}"  # the claim policy covers every loaded template


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "must hold a JSON object"),
        ('{"templateName": "x", "templateBody": "{oops"}', "templateBody is not valid JSON"),
        ('{"Resources": {}}', "needs an AWS::IoT::Thing and an AWS::IoT::Certificate resource"),
    ],
)
def test_a_bad_template_file_is_named_with_the_problem(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=f"template file {path}: .*{problem}"):
        ProvisioningTemplate.from_file(path)
    result = CliRunner().invoke(cli, ["cloud", "up", "--template", str(path), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert f"template file {path}" in result.output
