"""The HTTP control plane, driven by boto3 itself (no mock): jobs with `iot`, shadows and publish with
`iot-data`, the region taken from the request's SigV4 scope, and AWS's error shapes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from iotfleet.cloud.control_plane import ControlPlane
from iotfleet.cloud.local import DEVICE_POLICY, LocalCloud
from iotfleet.cloud.templates import default_template_body
from iotfleet.config import Identity
from iotfleet.device import DeviceClient
from iotfleet.errors import IdentityRefused
from iotfleet.provisioning import FleetProvisioner, IdentityStore
from iotfleet.provisioning.keys import KeyType, csr_pem, new_private_key
from tests.conftest import Probe, Probes, identity_context, lamp_options

ARN = "arn:aws:iot:eu-west-1:000000000000"
NOT_AUTHORIZED = 0x87


@pytest.fixture
def api(local_cloud: LocalCloud) -> Iterator[ControlPlane]:
    with ControlPlane(local_cloud) as plane:
        yield plane


def client(api: ControlPlane, service: str, region: str = "eu-west-1") -> Any:
    return boto3.client(
        service,
        endpoint_url=api.url,
        region_name=region,
        aws_access_key_id="AKIDLOCAL",
        aws_secret_access_key="local",  # noqa: S106 - the control plane reads signatures, never verifies them
        config=Config(retries={"max_attempts": 1}),
    )


def test_boto3_creates_describes_and_cancels_a_job_in_the_region_it_signs_for(
    api: ControlPlane, local_cloud: LocalCloud, lamp: Identity
) -> None:
    iot = client(api, "iot", "us-east-1")
    created = iot.create_job(
        jobId="fw-7",
        targets=["arn:aws:iot:us-east-1:000000000000:thing/lamp-1"],
        document=json.dumps({"version": "7"}),
        jobExecutionsRolloutConfig={"maximumPerMinute": 10},
    )
    assert created["jobArn"] == "arn:aws:iot:us-east-1:000000000000:job/fw-7"
    job = iot.describe_job(jobId="fw-7")["job"]
    assert (job["status"], job["targets"]) == ("IN_PROGRESS", ["arn:aws:iot:us-east-1:000000000000:thing/lamp-1"])
    assert "fw-7" not in local_cloud.region("eu-west-1").jobs.service.state.jobs  # only where it was signed for
    execution = iot.describe_job_execution(jobId="fw-7", thingName="lamp-1")["execution"]
    assert (execution["status"], execution["executionNumber"]) == ("QUEUED", 1)
    listed = iot.list_job_executions_for_job(jobId="fw-7")["executionSummaries"]
    assert [e["thingArn"] for e in listed] == ["arn:aws:iot:us-east-1:000000000000:thing/lamp-1"]
    iot.cancel_job(jobId="fw-7", reasonCode="OOPS", comment="wrong build")
    assert iot.describe_job(jobId="fw-7")["job"]["status"] == "CANCELED"
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job(jobId="nope")
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_job(jobId="fw-7", targets=["arn:aws:iot:us-east-1:000000000000:thing/lamp-1"], document="{}")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_job(jobId="fw-8", targets=["arn:aws:s3:::bucket"], document="{}")
    endpoint = local_cloud.region("us-east-1").endpoint
    assert iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == f"{endpoint.host}:{endpoint.port}"


def test_boto3_iot_data_reads_and_writes_shadows_and_publishes(
    api: ControlPlane, local_cloud: LocalCloud, lamp: Identity, probes: Probes
) -> None:
    data = client(api, "iot-data")
    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.get_thing_shadow(thingName="lamp-1")
    updated = json.loads(
        data.update_thing_shadow(thingName="lamp-1", payload=json.dumps({"state": {"desired": {"dim": 30}}}))[
            "payload"
        ].read()
    )
    assert (updated["state"], updated["version"]) == ({"desired": {"dim": 30}}, 1)
    got = json.loads(data.get_thing_shadow(thingName="lamp-1")["payload"].read())
    assert got["state"]["desired"] == {"dim": 30}
    assert local_cloud.region("eu-west-1").shadows.get("lamp-1")["version"] == 1  # the same shadow the devices see
    named = json.loads(
        data.update_thing_shadow(thingName="lamp-1", shadowName="cfg", payload=b'{"state": {"reported": {"a": 1}}}')[
            "payload"
        ].read()
    )
    assert named["version"] == 1
    with pytest.raises(data.exceptions.ConflictException):
        data.update_thing_shadow(
            thingName="lamp-1", payload=json.dumps({"state": {"desired": {"dim": 1}}, "version": 9})
        )
    deleted = json.loads(data.delete_thing_shadow(thingName="lamp-1")["payload"].read())
    assert deleted["version"] == 1
    device = probes(local_cloud.region("eu-west-1").endpoint, "lamp-1", identity_context(lamp))
    assert device.connect()
    assert device.subscribe("cmd/acme/hq/lamp-1/#") == [1]
    data.publish(topic="cmd/acme/hq/lamp-1/identify", qos=1, payload=b'{"blink": 3}')
    device.pump(lambda: bool(device.messages))
    assert device.messages == [("cmd/acme/hq/lamp-1/identify", b'{"blink": 3}')]


def test_boto3_sets_up_a_device_that_then_connects_and_is_cut_off_by_update_certificate(
    api: ControlPlane, local_cloud: LocalCloud, tmp_path: Path
) -> None:
    iot = client(api, "iot")
    attributes = {"tenant": "acme", "site": "hq"}
    made = iot.create_thing(thingName="lamp-7", attributePayload={"attributes": attributes})
    assert made["thingArn"] == f"{ARN}:thing/lamp-7"
    assert iot.describe_thing(thingName="lamp-7")["attributes"] == attributes
    assert [t["thingName"] for t in iot.list_things(attributeName="site", attributeValue="hq")["things"]] == ["lamp-7"]
    keys = iot.create_keys_and_certificate(setAsActive=True)
    assert keys["keyPair"]["PrivateKey"].startswith("-----BEGIN")
    assert iot.describe_certificate(certificateId=keys["certificateId"])["certificateDescription"]["status"] == "ACTIVE"
    iot.attach_policy(policyName=DEVICE_POLICY, target=keys["certificateArn"])
    iot.attach_thing_principal(thingName="lamp-7", principal=keys["certificateArn"])
    assert iot.list_thing_principals(thingName="lamp-7")["principals"] == [keys["certificateArn"]]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.delete_thing(thingName="lamp-7")  # a principal is attached
    (tmp_path / "cert.pem").write_text(keys["certificatePem"])
    (tmp_path / "key.pem").write_text(keys["keyPair"]["PrivateKey"])
    lamp = Identity(thing_name="lamp-7", cert_file=tmp_path / "cert.pem", key_file=tmp_path / "key.pem",
                    ca_file=local_cloud.ca_file)  # fmt: skip

    async def publish_once() -> None:
        async with DeviceClient(**lamp_options(local_cloud, lamp)) as device:
            receipt = await device.publish("power", {"ts": 1, "power_w": 3.0})
            assert receipt.reason_code < 0x80  # accepted (0x10: no subscriber on this topic)

    asyncio.run(publish_once())
    iot.update_certificate(certificateId=keys["certificateId"], newStatus="INACTIVE")

    async def refused() -> None:
        with pytest.raises(IdentityRefused):
            async with DeviceClient(**lamp_options(local_cloud, lamp)):
                pass

    asyncio.run(refused())
    iot.detach_thing_principal(thingName="lamp-7", principal=keys["certificateArn"])
    iot.delete_thing(thingName="lamp-7")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="lamp-7")


def test_boto3_policies_csr_certificates_and_templates(api: ControlPlane, local_cloud: LocalCloud) -> None:
    iot = client(api, "iot")
    document = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}
    )
    created = iot.create_policy(policyName="connect-only", policyDocument=document)
    assert created["policyArn"] == f"{ARN}:policy/connect-only"
    assert json.loads(iot.get_policy(policyName="connect-only")["policyDocument"]) == json.loads(document)
    with pytest.raises(iot.exceptions.MalformedPolicyException):
        iot.create_policy(policyName="bad", policyDocument='{"Statement": [{"Effect": "Maybe"}]}')
    csr = csr_pem(new_private_key(KeyType.EC_P256), "ignored")
    from_csr = iot.create_certificate_from_csr(certificateSigningRequest=csr, setAsActive=False)
    description = iot.describe_certificate(certificateId=from_csr["certificateId"])["certificateDescription"]
    assert description["status"] == "INACTIVE"
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_certificate(certificateId="0" * 64)
    body = json.dumps(default_template_body(DEVICE_POLICY))
    iot.create_provisioning_template(
        templateName="lab", templateBody=body, provisioningRoleArn="arn:aws:iam::0:role/x", enabled=True
    )
    described = iot.describe_provisioning_template(templateName="lab")
    assert json.loads(described["templateBody"]) == json.loads(body)
    assert "lab" in local_cloud.templates


def test_a_template_created_with_boto3_provisions_devices_at_once(
    api: ControlPlane, local_cloud: LocalCloud, tmp_path: Path
) -> None:
    iot = client(api, "iot")
    role = "arn:aws:iam::000000000000:role/provisioning"
    body = json.dumps(default_template_body(DEVICE_POLICY))
    iot.create_provisioning_template(templateName="factory-b", templateBody=body, provisioningRoleArn=role)
    provisioner = FleetProvisioner(
        endpoints=local_cloud.endpoints,
        claim=local_cloud.claim_identity,
        template="factory-b",  # the claim's policy now covers it
        parameters={"SerialNumber": "lamp-42", "Tenant": "acme", "Site": "hq"},
        timeout=5.0,
    )
    stored = asyncio.run(provisioner.provision_into(IdentityStore(tmp_path / "lamp-42")))
    assert stored.identity.thing_name == "lamp-42"
    assert iot.describe_thing(thingName="lamp-42")["attributes"] == {"tenant": "acme", "site": "hq"}


def test_the_aws_cli_works_with_endpoint_url(api: ControlPlane, local_cloud: LocalCloud, lamp: Identity) -> None:
    """`aws --endpoint-url` as a user types it (AWS CLI v1 from PyPI, in this environment)."""
    aws = Path(sys.executable).parent / "aws"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "AKIDLOCAL",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }

    def run(*args: str) -> dict[str, Any]:
        result = subprocess.run(
            [str(aws), "--endpoint-url", api.url, "--output", "json", *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        parsed: dict[str, Any] = json.loads(result.stdout or "{}")
        return parsed

    described = run("iot", "describe-thing", "--thing-name", "lamp-1")
    assert described["thingArn"] == "arn:aws:iot:us-east-1:000000000000:thing/lamp-1"  # the region it signed for
    run("iot", "create-job", "--job-id", "cli-1", "--targets", described["thingArn"], "--document", '{"v": 1}')
    assert run("iot", "describe-job", "--job-id", "cli-1")["job"]["status"] == "IN_PROGRESS"
    missing = subprocess.run(
        [str(aws), "--endpoint-url", api.url, "iot", "describe-thing", "--thing-name", "nobody"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode != 0
    assert "ResourceNotFoundException" in missing.stderr


def test_a_thing_has_a_version_that_update_thing_counts_and_expected_version_guards(
    api: ControlPlane, local_cloud: LocalCloud
) -> None:
    iot, other_region = client(api, "iot"), client(api, "iot", "us-east-1")
    iot.create_thing(thingName="lamp-7", attributePayload={"attributes": {"site": "hq"}})
    iot.create_thing(thingName="lamp-7", attributePayload={"attributes": {"site": "hq"}})  # the same: no change
    assert iot.describe_thing(thingName="lamp-7")["version"] == 1
    iot.update_thing(thingName="lamp-7", attributePayload={"attributes": {"room": "2"}, "merge": True})
    with pytest.raises(iot.exceptions.VersionConflictException) as stale:
        iot.update_thing(thingName="lamp-7", attributePayload={"attributes": {"room": "3"}}, expectedVersion=1)
    assert stale.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    iot.update_thing(thingName="lamp-7", attributePayload={"attributes": {"room": "3"}}, expectedVersion=2)
    described = iot.describe_thing(thingName="lamp-7")
    assert (described["version"], described["attributes"]) == (3, {"room": "3"})
    assert [(t["thingName"], t["version"]) for t in iot.list_things()["things"]] == [("lamp-7", 3)]
    assert other_region.describe_thing(thingName="lamp-7")["version"] == 3  # replicated, same version
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.delete_thing(thingName="lamp-7", expectedVersion=2)
    iot.delete_thing(thingName="lamp-7", expectedVersion=3)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="lamp-7")


def test_a_certificate_attached_to_two_things_connects_as_either_with_that_things_policy_variables(
    api: ControlPlane, local_cloud: LocalCloud, probes: Probes, tmp_path: Path
) -> None:
    iot = client(api, "iot")
    for name in ("lamp-8", "lamp-9", "lamp-10"):
        iot.create_thing(thingName=name, attributePayload={"attributes": {"tenant": "acme", "site": "hq"}})
    keys = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_policy(policyName=DEVICE_POLICY, target=keys["certificateArn"])
    iot.attach_thing_principal(thingName="lamp-8", principal=keys["certificateArn"])
    iot.attach_thing_principal(thingName="lamp-9", principal=keys["certificateArn"])  # non-exclusive: both
    assert iot.list_thing_principals(thingName="lamp-9")["principals"] == [keys["certificateArn"]]
    assert iot.list_principal_things(principal=keys["certificateArn"])["things"] == ["lamp-8", "lamp-9"]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.attach_thing_principal(
            thingName="lamp-10", principal=keys["certificateArn"], thingPrincipalType="EXCLUSIVE_THING"
        )
    (tmp_path / "cert.pem").write_text(keys["certificatePem"])
    (tmp_path / "key.pem").write_text(keys["keyPair"]["PrivateKey"])
    files = Identity(thing_name="lamp-8", cert_file=tmp_path / "cert.pem", key_file=tmp_path / "key.pem",
                     ca_file=local_cloud.ca_file)  # fmt: skip
    endpoint = local_cloud.region("eu-west-1").endpoint

    def device(client_id: str) -> Probe:
        return probes(endpoint, client_id, identity_context(files))

    lamp_8, lamp_9 = device("lamp-8"), device("lamp-9")
    assert lamp_8.connect()  # the client id names the thing, among the certificate's
    assert lamp_9.connect()
    assert lamp_8.publish("dt/acme/hq/lamp-8/power", b"{}") in (0, 0x10)  # accepted (0x10: nobody subscribed)
    assert lamp_9.publish("dt/acme/hq/lamp-9/power", b"{}") in (0, 0x10)
    assert lamp_9.publish("dt/acme/hq/lamp-8/power", b"{}") == NOT_AUTHORIZED  # another thing's topic
    assert not device("lamp-10").connect()  # not attached to lamp-10: the policy's IsAttached fails
    iot.detach_thing_principal(thingName="lamp-8", principal=keys["certificateArn"])
    assert iot.list_principal_things(principal=keys["certificateArn"])["things"] == ["lamp-9"]
    assert not device("lamp-8").connect()
    assert device("lamp-9").connect()
