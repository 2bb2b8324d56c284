"""The HTTP control plane, driven by boto3 itself (no mock): jobs with `iot`, shadows and publish with
`iot-data`, the region taken from the request's SigV4 scope, and AWS's error shapes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from iotfleet.cloud.control_plane import ControlPlane
from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from tests.conftest import Probes, identity_context

ARN = "arn:aws:iot:eu-west-1:000000000000"


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
