"""The Jobs rules as pure state (IOT_CORE.md section 10): rollout, abort, timeouts, retries, cancel,
continuous groups, and the transitions a device may make."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.cloud.jobs import ExecutionStatus, JobConfig, JobsError, JobsState, JobStatus

T0 = 1_700_000_000.0
DOC = json.dumps({"version": "2.0"})


def state_with(things: int, **config: object) -> JobsState:
    state = JobsState()
    state.create_job("fw", [f"t{i}" for i in range(things)], DOC, JobConfig.from_api(config), T0)
    return state


def queued(state: JobsState) -> int:
    return len(state.executions_of("fw"))


def test_the_rollout_queues_at_most_maximum_per_minute() -> None:
    state = state_with(100, jobExecutionsRolloutConfig={"maximumPerMinute": 60})
    assert queued(state) == 2  # the first second's share (and one to start with)
    for second in range(1, 31):
        state.tick(T0 + second)
    assert 30 <= queued(state) <= 32  # one a second
    for second in range(31, 120):
        state.tick(T0 + second)
    assert queued(state) == 100


def test_an_exponential_rollout_speeds_up_as_things_are_notified() -> None:
    increase = {"numberOfNotifiedThings": 10}
    exponential = {"baseRatePerMinute": 60, "incrementFactor": 2.0, "rateIncreaseCriteria": increase}
    rollout = {"exponentialRate": exponential, "maximumPerMinute": 240}
    state = state_with(200, jobExecutionsRolloutConfig=rollout)
    for second in range(1, 31):
        state.tick(T0 + second)
    assert state.jobs["fw"].rate_per_minute == 240  # 60 -> 120 -> 240 (the maximum) after 10 and 20
    assert queued(state) > 60  # faster than the base rate's 30 in 30 s


def test_abort_cancels_the_job_once_enough_executions_failed() -> None:
    abort = {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 50,
                               "minNumberOfExecutedThings": 4}]}  # fmt: skip
    state = state_with(10, abortConfig=abort)
    for i, status in enumerate(["SUCCEEDED", "FAILED", "FAILED"]):
        state.update(f"t{i}", "fw", {"status": status}, T0 + 1)
    assert state.jobs["fw"].status is JobStatus.IN_PROGRESS  # 3 executed: below the minimum
    state.update("t3", "fw", {"status": "FAILED"}, T0 + 2)  # 3 of 4 failed
    job = state.describe_job("fw")
    assert (job["status"], job["reasonCode"]) == ("CANCELED", "ABORTED")
    assert job["jobProcessDetails"]["numberOfCanceledThings"] == 6  # the QUEUED ones
    with pytest.raises(JobsError) as late:
        state.update("t5", "fw", {"status": "IN_PROGRESS"}, T0 + 3)
    assert late.value.code == "InvalidStateTransition"


def test_timeouts_end_in_timed_out_and_the_retry_queues_the_next_execution() -> None:
    state = state_with(
        1,
        timeoutConfig={"inProgressTimeoutInMinutes": 10},
        jobExecutionsRetryConfig={"criteriaList": [{"failureType": "TIMED_OUT", "numberOfRetries": 1}]},
    )
    started = state.start_next("t0", {"stepTimeoutInMinutes": 2}, T0)
    assert started is not None
    assert started.status is ExecutionStatus.IN_PROGRESS
    state.update("t0", "fw", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 30}, T0 + 60)  # capped at 10 min
    assert state.tick(T0 + 599) == set()
    assert state.tick(T0 + 600) == {"t0"}
    first, retry = state.executions[("fw", "t0")]
    assert (first.status, retry.status, retry.execution_number) == (
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.QUEUED,
        2,
    )
    state.start_next("t0", {}, T0 + 700)
    state.tick(T0 + 700 + 600)  # the second times out too: no retry left
    assert [e.status for e in state.executions[("fw", "t0")]] == [ExecutionStatus.TIMED_OUT] * 2
    assert state.jobs["fw"].status is JobStatus.COMPLETED


def test_cancel_leaves_in_progress_executions_unless_forced() -> None:
    state = state_with(2)
    state.start_next("t0", {}, T0)
    state.cancel_job("fw", T0 + 1)
    assert state.describe("t0", "fw").status is ExecutionStatus.IN_PROGRESS
    assert state.describe("t1", "fw").status is ExecutionStatus.CANCELED
    state.cancel_job("fw", T0 + 2, force=True)
    assert state.describe("t0", "fw").status is ExecutionStatus.CANCELED
    assert state.describe_job("fw")["forceCanceled"] is True


def test_a_continuous_job_reaches_things_that_join_its_group_and_removes_those_that_leave() -> None:
    state = JobsState()
    state.add_to_group("lamps", "a", T0)
    state.create_job("fw", ["group:lamps"], DOC, JobConfig.from_api({"targetSelection": "CONTINUOUS"}), T0)
    assert state.add_to_group("lamps", "b", T0 + 1) == {"b"}
    assert state.describe("b", "fw").status is ExecutionStatus.QUEUED
    state.remove_from_group("lamps", "b", T0 + 2)
    assert state.describe("b", "fw").status is ExecutionStatus.REMOVED
    state.update("a", "fw", {"status": "SUCCEEDED"}, T0 + 3)
    assert state.jobs["fw"].status is JobStatus.IN_PROGRESS  # a continuous job never completes


def test_the_state_survives_a_round_trip_through_json() -> None:
    criterion = {"failureType": "ALL", "action": "CANCEL", "thresholdPercentage": 10, "minNumberOfExecutedThings": 1}
    state = state_with(3, abortConfig={"criteriaList": [criterion]})
    state.start_next("t0", {"statusDetails": {"step": "1"}}, T0)
    again = JobsState.from_json(json.loads(json.dumps(state.to_json())))
    assert again.describe_job("fw") == state.describe_job("fw")
    assert again.describe("t0", "fw") == state.describe("t0", "fw")
    assert again.jobs["fw"].config == state.jobs["fw"].config


statuses = st.sampled_from([s.value for s in ExecutionStatus] + ["SUCCESS"])


@given(st.lists(st.tuples(statuses, st.none() | st.integers(0, 8)), max_size=12))
def test_a_device_never_leaves_a_terminal_state_and_each_change_bumps_the_version(
    updates: list[tuple[str, int | None]],
) -> None:
    state = state_with(1)
    execution = state.describe("t0", "fw")
    for status, expected in updates:
        before = (execution.status, execution.version)
        request: dict[str, object] = {"status": status}
        if expected is not None:
            request["expectedVersion"] = expected
        code: str | None = None
        try:
            state.update("t0", "fw", request, T0)
        except JobsError as refused:
            code = refused.code
        if code is not None:
            assert (execution.status, execution.version) == before  # nothing changed
            assert code in ("InvalidRequest", "InvalidStateTransition", "VersionMismatch")
            continue
        assert not before[0].terminal
        assert status in ("IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED")
        assert execution.version == before[1] + 1
