"""The local Jobs service over real MQTT, driven by AWS's own IotJobsClientV2 (awsiotsdk), unchanged."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from awscrt import mqtt_request_response
from awsiot import V2ServiceException, iotjobs

from iotfleet.cloud.jobs import JobsError
from iotfleet.cloud.local import LocalCloud, ThingSpec
from iotfleet.config import Identity
from tests.cloud.test_shadow_service import awsiot_stream_options
from tests.conftest import ANY_ARN, Probe, Probes, aws_sdk_client, identity_context, wait_until

NOT_AUTHORIZED = 0x87
FIRMWARE = {"operation": "firmware-update", "version": "2.0.0"}


@pytest.fixture
def jobs_client(local_cloud: LocalCloud, lamp: Identity) -> Iterator[iotjobs.IotJobsClientV2]:
    with aws_sdk_client(local_cloud.region("eu-west-1").endpoint, lamp, "lamp-1") as (client, options):
        yield iotjobs.IotJobsClientV2(client, options)


def open_stream(create: Callable[[Any], Any]) -> tuple[list[Any], Any]:
    """Open the stream ``create(options)`` makes; return what it receives, once its subscription is
    established, and the stream (keep it referenced: a stream that is collected closes)."""
    events: list[Any] = []
    subscribed = threading.Event()

    def on_status(event: mqtt_request_response.SubscriptionStatusEvent) -> None:
        status = mqtt_request_response.SubscriptionStatusEventType(event.type)
        if status is mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED:
            subscribed.set()

    stream = create(awsiot_stream_options(events.append, on_status))
    stream.open()
    assert subscribed.wait(10), "the stream's subscription was not established"
    return events, stream


def next_changed_stream(client: iotjobs.IotJobsClientV2) -> tuple[list[Any], Any]:
    """lamp-1's notify-next stream (see :func:`open_stream`)."""
    request = iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name="lamp-1")
    return open_stream(lambda options: client.create_next_job_execution_changed_stream(request, options))


def executions_changed_stream(client: iotjobs.IotJobsClientV2) -> tuple[list[Any], Any]:
    """lamp-1's notify stream (see :func:`open_stream`)."""
    request = iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name="lamp-1")
    return open_stream(lambda options: client.create_job_executions_changed_stream(request, options))


def test_aws_jobs_client_v2_runs_a_job_from_notify_to_succeeded(
    local_cloud: LocalCloud, jobs_client: iotjobs.IotJobsClientV2
) -> None:
    events, stream = next_changed_stream(jobs_client)
    created = local_cloud.create_job("fw-2", targets=["lamp-1"], document=FIRMWARE)
    assert {job["status"] for job in created.values()} == {"IN_PROGRESS"}  # in both regions
    assert wait_until(lambda: len(events) >= 1, 10)
    assert events[0].execution.job_id == "fw-2"
    assert events[0].execution.job_document == FIRMWARE

    pending = jobs_client.get_pending_job_executions(
        iotjobs.GetPendingJobExecutionsRequest(thing_name="lamp-1")
    ).result(10)
    assert [j.job_id for j in pending.queued_jobs] == ["fw-2"]
    assert pending.in_progress_jobs == []

    started = jobs_client.start_next_pending_job_execution(
        iotjobs.StartNextPendingJobExecutionRequest(thing_name="lamp-1", status_details={"step": "download"})
    ).result(10)
    assert (started.execution.job_id, started.execution.status) == ("fw-2", "IN_PROGRESS")
    assert started.execution.version_number == 2  # 1 -> 2 at start, as in AWS's sample run
    assert started.execution.status_details == {"step": "download"}

    with pytest.raises(V2ServiceException) as mismatch:
        jobs_client.update_job_execution(
            iotjobs.UpdateJobExecutionRequest(
                thing_name="lamp-1", job_id="fw-2", status="SUCCEEDED", expected_version=7
            )
        ).result(10)
    assert mismatch.value.modeled_error.code == "VersionMismatch"
    assert mismatch.value.modeled_error.execution_state.version_number == 2

    done = jobs_client.update_job_execution(
        iotjobs.UpdateJobExecutionRequest(
            thing_name="lamp-1", job_id="fw-2", status="SUCCEEDED", expected_version=2,
            include_job_execution_state=True, status_details={"step": "done"},
        )
    ).result(10)  # fmt: skip
    assert done.execution_state.status == "SUCCEEDED"
    assert done.execution_state.version_number == 3

    with pytest.raises(V2ServiceException) as terminal:
        jobs_client.update_job_execution(
            iotjobs.UpdateJobExecutionRequest(thing_name="lamp-1", job_id="fw-2", status="IN_PROGRESS")
        ).result(10)
    assert terminal.value.modeled_error.code == "InvalidStateTransition"
    with pytest.raises(V2ServiceException) as described:
        jobs_client.describe_job_execution(
            iotjobs.DescribeJobExecutionRequest(thing_name="lamp-1", job_id="fw-2")
        ).result(10)
    assert described.value.modeled_error.code == "TerminalStateReached"
    assert wait_until(lambda: len(events) >= 2 and events[-1].execution is None, 10)  # the queue is empty now
    jobs = local_cloud.region("eu-west-1").jobs
    assert jobs.describe_job("fw-2")["status"] == "COMPLETED"
    assert jobs.describe_execution("fw-2", "lamp-1")["statusDetails"] == {"step": "done"}
    # jobs are per region: the other region's execution still waits for the device
    assert local_cloud.region("us-east-1").jobs.describe_job("fw-2")["status"] == "IN_PROGRESS"
    del stream  # the stream closes when it is collected


def test_bad_requests_get_aws_error_codes_and_echo_the_token(local_cloud: LocalCloud, lamp: Identity) -> None:
    local_cloud.create_job("fw-3", targets=["lamp-1"], document=FIRMWARE, regions=["eu-west-1"])
    service = local_cloud.region("eu-west-1").jobs_service
    assert service is not None
    cases = [
        ("update", "fw-3", b'{"status": "SUCCESS", "clientToken": "t1"}', "InvalidRequest"),
        ("update", "fw-3", b'{"status": "TIMED_OUT", "clientToken": "t2"}', "InvalidStateTransition"),
        ("update", "no-such-job", b'{"status": "SUCCEEDED", "clientToken": "t3"}', "ResourceNotFound"),
        ("start-next", None, b'{"stepTimeoutInMinutes": 0, "clientToken": "t4"}', "InvalidRequest"),
        ("get", None, b"{not json", "InvalidJson"),
    ]
    for op, job_id, payload, code in cases:
        topic, body = service.serve("lamp-1", op, job_id, payload, now=1.7e9)
        assert topic.endswith("/rejected"), (op, payload)
        assert body["code"] == code, (op, payload, body)
        assert isinstance(body["timestamp"], int)
        if code != "InvalidJson":
            assert body["clientToken"] == payload.split(b'"clientToken": "')[1].split(b'"')[0].decode()
    assert "executionState" in service.serve("lamp-1", "update", "fw-3", b'{"status": "TIMED_OUT"}', now=1.7e9)[1]
    _, unknown = service.serve("lamp-9", "get", None, b"{}", now=1.7e9)
    assert unknown["code"] == "ResourceNotFound"


def test_a_bad_job_is_refused_with_aws_code(local_cloud: LocalCloud, lamp: Identity) -> None:
    with pytest.raises(JobsError) as bad:
        local_cloud.create_job(
            "fw-4", targets=["lamp-1"], document=FIRMWARE, jobExecutionsRolloutConfig={"maximumPerMinute": 5000}
        )
    assert bad.value.code == "InvalidRequest"
    local_cloud.create_job("fw-4", targets=["lamp-1"], document=FIRMWARE)
    with pytest.raises(JobsError) as twice:
        local_cloud.create_job("fw-4", targets=["lamp-1"], document=FIRMWARE)
    assert twice.value.code == "ResourceAlreadyExists"


def test_a_request_to_no_jobs_operation_gets_invalid_topic_with_the_token(
    local_cloud: LocalCloud, lamp: Identity
) -> None:
    service = local_cloud.region("eu-west-1").jobs_service
    assert service is not None
    for op, job_id in [("foo", None), ("bar", "fw-1"), ("a/b/get", None)]:
        topic, body = service.serve("lamp-1", op, job_id, b'{"clientToken": "t9"}', now=1.7e9)
        path = op if job_id is None else f"{job_id}/{op}"
        assert topic == f"$aws/things/lamp-1/jobs/{path}/rejected"
        assert (body["code"], body["clientToken"], body["timestamp"]) == ("InvalidTopic", "t9", 1_700_000_000)


def jobs_probe(local_cloud: LocalCloud, identity: Identity, probes: Probes) -> Probe:
    """A device of ``identity`` connected to eu-west-1 and subscribed to its whole jobs namespace."""
    probe = probes(local_cloud.region("eu-west-1").endpoint, identity.thing_name, identity_context(identity))
    assert probe.connect()
    assert probe.subscribe(f"$aws/things/{identity.thing_name}/jobs/#") == [1]
    return probe


def answer(probe: Probe, topic: str, token: str) -> dict[str, Any]:
    """The answer ``probe`` got on ``topic`` to its request ``token`` (waiting for it)."""

    def answers() -> list[dict[str, Any]]:
        bodies = [json.loads(p) for t, p in probe.messages if t == topic]
        return [b for b in bodies if b.get("clientToken") == token]

    assert probe.pump(lambda: bool(answers())), f"no answer to {token} on {topic}"
    return answers()[0]


def test_the_device_policy_refuses_an_unknown_jobs_topic_and_the_service_answers_what_it_lets_through(
    local_cloud: LocalCloud, lamp: Identity, probes: Probes
) -> None:
    probe = jobs_probe(local_cloud, lamp, probes)
    # the rendered policy allows get, start-next, */get and */update: IoT Core's broker refuses the rest first
    assert probe.publish("$aws/things/lamp-1/jobs/fw-1/foo", b"{}") == NOT_AUTHORIZED
    # '*' in a policy matches '/' too: a job id of two levels passes the policy and is no operation
    assert probe.publish("$aws/things/lamp-1/jobs/a/b/get", b'{"clientToken": "t1"}') == 0
    body = answer(probe, "$aws/things/lamp-1/jobs/a/b/get/rejected", "t1")
    assert body["code"] == "InvalidTopic"
    assert isinstance(body["timestamp"], int)


def test_with_a_policy_open_on_the_jobs_namespace_any_unknown_topic_gets_invalid_topic(
    local_cloud: LocalCloud, probes: Probes
) -> None:
    jobs = f"{ANY_ARN}:%s/$aws/things/${{iot:Connection.Thing.ThingName}}/jobs/*"
    local_cloud.create_policy(
        "jobs-open",  # the shape of the Developer Guide's example jobs policy
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ANY_ARN}:client/${{iot:ClientId}}"},
                {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": jobs % "topic"},
                {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": jobs % "topicfilter"},
            ],
        },
    )
    (device,) = local_cloud.register_things([ThingSpec("lamp-2", "acme", "hq", policy="jobs-open")])
    probe = jobs_probe(local_cloud, device, probes)
    for path, token in [("foo", "t1"), ("fw-1/bar", "t2"), ("get/now", "t3")]:
        assert probe.publish(f"$aws/things/lamp-2/jobs/{path}", json.dumps({"clientToken": token}).encode()) == 0
        assert answer(probe, f"$aws/things/lamp-2/jobs/{path}/rejected", token)["code"] == "InvalidTopic"
    # answers and notifications are no requests: the service leaves them alone
    assert probe.publish("$aws/things/lamp-2/jobs/notify", b"{}") == 0
    assert probe.publish("$aws/things/lamp-2/jobs/get/accepted", b"{}") == 0
    assert probe.publish("$aws/things/lamp-2/jobs/get", b'{"clientToken": "t4"}') == 0
    pending = answer(probe, "$aws/things/lamp-2/jobs/get/accepted", "t4")
    assert (pending["inProgressJobs"], pending["queuedJobs"]) == ([], [])
    # the service answers in order: had it taken the two before for requests, their answers would be here
    rejected = [t for t, _ in probe.messages if t.endswith("/rejected")]
    assert rejected == [f"$aws/things/lamp-2/jobs/{p}/rejected" for p in ("foo", "fw-1/bar", "get/now")]


def test_notify_is_sent_when_the_device_starts_a_job_and_not_when_it_stays_in_progress(
    local_cloud: LocalCloud, jobs_client: iotjobs.IotJobsClientV2
) -> None:
    """The DG's ListNotification criteria: an execution queued, changed to a non-terminal status (QUEUED ->
    IN_PROGRESS), or gone terminal; IN_PROGRESS again is no change of status."""
    events, stream = executions_changed_stream(jobs_client)

    def listed() -> list[dict[str, list[str]]]:
        return [{status: [j.job_id for j in jobs] for status, jobs in (e.jobs or {}).items()} for e in events]

    local_cloud.create_job("fw-5", targets=["lamp-1"], document=FIRMWARE, regions=["eu-west-1"])
    assert wait_until(lambda: len(events) >= 1, 10)
    jobs_client.start_next_pending_job_execution(
        iotjobs.StartNextPendingJobExecutionRequest(thing_name="lamp-1")
    ).result(10)
    assert wait_until(lambda: len(events) >= 2, 10)
    assert events[1].jobs["IN_PROGRESS"][0].version_number == 2
    for status, details in (("IN_PROGRESS", {"step": "flashing"}), ("SUCCEEDED", None)):
        jobs_client.update_job_execution(
            iotjobs.UpdateJobExecutionRequest(thing_name="lamp-1", job_id="fw-5", status=status, status_details=details)
        ).result(10)
    assert wait_until(lambda: len(events) >= 3, 10)
    # the service publishes in order: a notify for the second IN_PROGRESS would have come before the last one
    assert listed() == [{"QUEUED": ["fw-5"]}, {"IN_PROGRESS": ["fw-5"]}, {}]
    del stream
