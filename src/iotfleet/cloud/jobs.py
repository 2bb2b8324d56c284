"""AWS IoT Jobs in one region, as pure state: jobs, their executions per thing, and every rule of their
life (IOT_CORE.md section 10): the device's requests, rollout, abort, timeouts, retries and cancel.

:class:`JobsState` holds no connection and no clock: every call takes ``now`` (epoch seconds) and says
which things' pending lists changed, so the MQTT service (:mod:`iotfleet.cloud.services.jobs`) can tell
them (``notify``, ``notify-next``). A request a device may not make raises :class:`JobsError` with AWS's
error code. Execution states: QUEUED, IN_PROGRESS, then one of the terminal SUCCEEDED, FAILED, TIMED_OUT,
REJECTED, REMOVED, CANCELED. A device may set IN_PROGRESS (again and again), SUCCEEDED, FAILED or
REJECTED, from QUEUED or IN_PROGRESS; nothing leaves a terminal state except the service's retry, which
queues a new execution (the next ``executionNumber``) of the same job for the thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "CONFIG_FIELDS",
    "AbortCriterion",
    "Execution",
    "ExecutionStatus",
    "Job",
    "JobConfig",
    "JobStatus",
    "JobsError",
    "JobsState",
    "RetryCriterion",
]

MAX_DOCUMENT_BYTES = 32_768
MAX_STATUS_DETAILS = 10  # pairs (2019 DG)
MAX_PENDING_IN_NOTIFY = 10
_JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class ExecutionStatus(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS)


DEVICE_STATUSES = (
    ExecutionStatus.IN_PROGRESS,
    ExecutionStatus.SUCCEEDED,
    ExecutionStatus.FAILED,
    ExecutionStatus.REJECTED,
)


class JobStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


CONFIG_FIELDS = frozenset(
    {
        "targetSelection",
        "jobExecutionsRolloutConfig",
        "abortConfig",
        "timeoutConfig",
        "jobExecutionsRetryConfig",
        "presignedUrlConfig",
    }
)  # CreateJob's fields that configure a job (JobConfig.from_api)


class JobsError(Exception):
    """A request the Jobs service refuses: ``code`` is AWS's MQTT error code (InvalidRequest,
    ResourceNotFound, InvalidStateTransition, VersionMismatch, TerminalStateReached, ...; the HTTP control
    plane's exception is the code + "Exception"); ``execution`` the execution, whose state the rejection
    carries when the code says it (InvalidStateTransition, VersionMismatch)."""

    def __init__(self, code: str, message: str, execution: Execution | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.execution = execution


@dataclass(frozen=True)
class AbortCriterion:
    failure_type: str  # FAILED, REJECTED, TIMED_OUT or ALL
    threshold_percentage: float
    min_executed: int


@dataclass(frozen=True)
class RetryCriterion:
    failure_type: str  # FAILED, TIMED_OUT or ALL
    retries: int


@dataclass(frozen=True)
class JobConfig:
    """A job's configuration, as CreateJob takes it (only what changes behaviour here)."""

    continuous: bool = False  # targetSelection CONTINUOUS (else SNAPSHOT)
    maximum_per_minute: int = 1000
    base_rate_per_minute: int | None = None  # exponentialRate, when set
    increment_factor: float = 1.0
    increase_after_notified: int | None = None
    increase_after_succeeded: int | None = None
    abort: tuple[AbortCriterion, ...] = ()
    in_progress_timeout_s: float | None = None
    retries: tuple[RetryCriterion, ...] = ()
    presigned_url_expires_s: int = 3600

    @classmethod
    def from_api(cls, request: Mapping[str, Any]) -> JobConfig:
        """From CreateJob's fields (``targetSelection``, ``jobExecutionsRolloutConfig``, ``abortConfig``,
        ``timeoutConfig``, ``jobExecutionsRetryConfig``, ``presignedUrlConfig``); bad values raise
        :class:`JobsError` InvalidRequest."""
        try:
            rollout = request.get("jobExecutionsRolloutConfig") or {}
            exponential = rollout.get("exponentialRate") or {}
            criteria = exponential.get("rateIncreaseCriteria") or {}
            timeout = (request.get("timeoutConfig") or {}).get("inProgressTimeoutInMinutes")
            config = cls(
                continuous=request.get("targetSelection", "SNAPSHOT") == "CONTINUOUS",
                maximum_per_minute=int(rollout.get("maximumPerMinute", exponential.get("maximumPerMinute", 1000))),
                base_rate_per_minute=None if not exponential else int(exponential["baseRatePerMinute"]),
                increment_factor=float(exponential.get("incrementFactor", 1.0)),
                increase_after_notified=criteria.get("numberOfNotifiedThings"),
                increase_after_succeeded=criteria.get("numberOfSucceededThings"),
                abort=tuple(
                    AbortCriterion(
                        c["failureType"], float(c["thresholdPercentage"]), int(c["minNumberOfExecutedThings"])
                    )
                    for c in (request.get("abortConfig") or {}).get("criteriaList", [])
                ),
                in_progress_timeout_s=None if timeout is None else float(timeout) * 60,
                retries=tuple(
                    RetryCriterion(c["failureType"], int(c["numberOfRetries"]))
                    for c in (request.get("jobExecutionsRetryConfig") or {}).get("criteriaList", [])
                ),
                presigned_url_expires_s=int((request.get("presignedUrlConfig") or {}).get("expiresInSec", 3600)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise JobsError("InvalidRequest", f"the job's configuration is malformed: {exc!r}") from exc
        config.check()
        return config

    def check(self) -> None:
        problems = []
        if not 1 <= self.maximum_per_minute <= 1000:
            problems.append("maximumPerMinute must be 1-1000")
        if self.base_rate_per_minute is not None and not 1 <= self.base_rate_per_minute <= 1000:
            problems.append("baseRatePerMinute must be 1-1000")
        if self.base_rate_per_minute is not None and not 1.1 <= self.increment_factor <= 5:
            problems.append("incrementFactor must be 1.1-5")
        if self.in_progress_timeout_s is not None and not 60 <= self.in_progress_timeout_s <= 10080 * 60:
            problems.append("inProgressTimeoutInMinutes must be 1-10080")
        if sum(r.retries for r in self.retries) > 10:
            problems.append("numberOfRetries may total 10 at most")
        for criterion in self.abort:
            if criterion.failure_type not in ("FAILED", "REJECTED", "TIMED_OUT", "ALL"):
                problems.append(f"abort failureType {criterion.failure_type!r} is not FAILED, REJECTED, TIMED_OUT, ALL")
            if not 0 < criterion.threshold_percentage <= 100 or criterion.min_executed < 1:
                problems.append("abort thresholdPercentage must be in (0, 100] and minNumberOfExecutedThings >= 1")
        for retry in self.retries:
            if retry.failure_type not in ("FAILED", "TIMED_OUT", "ALL"):
                problems.append(f"retry failureType {retry.failure_type!r} is not FAILED, TIMED_OUT or ALL")
        if not 60 <= self.presigned_url_expires_s <= 3600:
            problems.append("presignedUrlConfig.expiresInSec must be 60-3600")
        if problems:
            raise JobsError("InvalidRequest", "; ".join(problems))


@dataclass
class Execution:
    """One thing's execution of a job (one per attempt: a retry is the next ``execution_number``)."""

    job_id: str
    thing: str
    execution_number: int
    queued_at: float
    status: ExecutionStatus = ExecutionStatus.QUEUED
    status_details: dict[str, str] = field(default_factory=dict)
    version: int = 1
    started_at: float | None = None
    last_updated_at: float = 0.0
    step_deadline: float | None = None
    in_progress_deadline: float | None = None
    force_canceled: bool = False

    def summary(self) -> dict[str, Any]:
        """AWS's JobExecutionSummary (epoch seconds)."""
        out: dict[str, Any] = {
            "jobId": self.job_id,
            "queuedAt": int(self.queued_at),
            "lastUpdatedAt": int(self.last_updated_at or self.queued_at),
            "versionNumber": self.version,
            "executionNumber": self.execution_number,
        }
        if self.started_at is not None:
            out["startedAt"] = int(self.started_at)
        return out

    def state(self) -> dict[str, Any]:
        """AWS's JobExecutionState."""
        return {"status": str(self.status), "statusDetails": dict(self.status_details), "versionNumber": self.version}

    def data(self, document: Any | None) -> dict[str, Any]:
        """AWS's JobExecution (``execution`` of start-next and describe), with the document if given."""
        out = {**self.summary(), "thingName": self.thing, "status": str(self.status)}
        if self.status_details:
            out["statusDetails"] = dict(self.status_details)
        if document is not None:
            out["jobDocument"] = document
        return out

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, ExecutionStatus) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Execution:
        return cls(**{**data, "status": ExecutionStatus(data["status"])})


@dataclass
class Job:
    """A job in one region: its document, config, targets and rollout."""

    job_id: str
    document: str  # JSON text, as CreateJob's ``document``
    config: JobConfig
    targets: list[str]  # thing names and "group:<name>" targets, as given
    created_at: float
    status: JobStatus = JobStatus.IN_PROGRESS
    to_roll_out: list[str] = field(default_factory=list)  # things without an execution yet, in order
    rate_per_minute: float = 0.0
    tokens: float = 0.0
    last_tick: float = 0.0
    notified: int = 0  # executions queued so far (for the exponential rate)
    next_increase: int = 0  # the count (notified or succeeded) at which the rate grows next
    completed_at: float | None = None
    reason_code: str | None = None
    comment: str | None = None
    force_canceled: bool = False
    description: str = ""

    def parsed_document(self) -> Any:
        return json.loads(self.document)


class JobsState:
    """Every job and execution of one region, and the rules between them."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.executions: dict[tuple[str, str], list[Execution]] = {}  # (job, thing) -> attempts, oldest first
        # the same attempt lists, by job and by thing: a device's request and a job's rules read only theirs
        self._of_job: dict[str, dict[str, list[Execution]]] = {}
        self._of_thing: dict[str, dict[str, list[Execution]]] = {}
        self.groups: dict[str, list[str]] = {}  # thing group -> its things

    # ---------------------------------------------------------------- the control plane

    def create_job(
        self,
        job_id: str,
        targets: Sequence[str],
        document: str,
        config: JobConfig,
        now: float,
        *,
        description: str = "",
    ) -> set[str]:
        """CreateJob: ``targets`` are thing names or ``group:<name>``. Returns the things to notify."""
        if not _JOB_ID.fullmatch(job_id):
            raise JobsError("InvalidRequest", f"jobId {job_id!r} must be 1-64 of a-z A-Z 0-9 _ -")
        if job_id in self.jobs:
            raise JobsError("ResourceAlreadyExists", f"a job with id {job_id} already exists")
        if not targets:
            raise JobsError("InvalidRequest", "a job needs at least one target")
        if len(document.encode()) > MAX_DOCUMENT_BYTES:
            raise JobsError("InvalidRequest", f"the job document is over {MAX_DOCUMENT_BYTES} bytes")
        try:
            json.loads(document)
        except ValueError as exc:
            raise JobsError("InvalidRequest", f"the job document is not JSON: {exc}") from exc
        things = self._things_of(targets)
        job = Job(job_id, document, config, list(targets), now, description=description)
        job.to_roll_out = things
        job.rate_per_minute = float(config.base_rate_per_minute or config.maximum_per_minute)
        job.tokens = min(job.rate_per_minute, 1.0 + job.rate_per_minute / 60)  # the first second's share
        job.last_tick = now
        job.next_increase = config.increase_after_notified or config.increase_after_succeeded or 0
        self.jobs[job_id] = job
        touched = self._roll_out(job, now)
        self._maybe_complete(job, now)
        return touched

    def add_to_group(self, group: str, thing: str, now: float) -> set[str]:
        """A thing joins a thing group: continuous jobs targeting the group give it an execution now."""
        members = self.groups.setdefault(group, [])
        if thing in members:
            return set()
        members.append(thing)
        touched: set[str] = set()
        for job in self.jobs.values():
            targeted = job.config.continuous and f"group:{group}" in job.targets
            if targeted and job.status is JobStatus.IN_PROGRESS and (job.job_id, thing) not in self.executions:
                self._queue(job, thing, now)
                touched.add(thing)
        return touched

    def remove_from_group(self, group: str, thing: str, now: float) -> set[str]:
        """A thing leaves a group: its pending executions of continuous jobs on the group are REMOVED."""
        members = self.groups.get(group, [])
        if thing not in members:
            return set()
        members.remove(thing)
        touched: set[str] = set()
        for job in self.jobs.values():
            if job.config.continuous and f"group:{group}" in job.targets:
                latest = self._latest(job.job_id, thing)
                if latest is not None and not latest.status.terminal:
                    self._set(latest, ExecutionStatus.REMOVED, now)
                    touched.add(thing)
        return touched

    def cancel_job(
        self, job_id: str, now: float, *, force: bool = False, reason: str | None = None, comment: str | None = None
    ) -> set[str]:
        """CancelJob: QUEUED executions are CANCELED, IN_PROGRESS ones too with ``force``; things not
        rolled out yet get none."""
        job = self.job(job_id)
        if job.status is not JobStatus.IN_PROGRESS and not (force and job.status is JobStatus.CANCELED):
            raise JobsError("InvalidStateTransition", f"job {job_id} is {job.status}")
        job.status, job.reason_code, job.comment = JobStatus.CANCELED, reason, comment
        job.force_canceled = job.force_canceled or force
        job.completed_at = now
        job.to_roll_out = []
        touched = set()
        for thing, attempts in self._of_job.get(job_id, {}).items():
            latest = attempts[-1]
            if latest.status.terminal:
                continue
            if latest.status is ExecutionStatus.QUEUED or force:
                latest.force_canceled = latest.status is ExecutionStatus.IN_PROGRESS
                self._set(latest, ExecutionStatus.CANCELED, now)
                touched.add(thing)
        return touched

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobsError("ResourceNotFound", f"job {job_id} does not exist")
        return job

    def describe_job(self, job_id: str) -> dict[str, Any]:
        """DescribeJob's ``job``, with its process details (counts by execution status)."""
        job = self.job(job_id)
        counts = dict.fromkeys(ExecutionStatus, 0)
        for attempts in self._of_job.get(job_id, {}).values():
            counts[attempts[-1].status] += 1
        details = {f"numberOf{_camel(s)}Things": n for s, n in counts.items()}
        out: dict[str, Any] = {
            "jobId": job.job_id,
            "targetSelection": "CONTINUOUS" if job.config.continuous else "SNAPSHOT",
            "status": str(job.status),
            "forceCanceled": job.force_canceled,
            "targets": list(job.targets),
            "description": job.description,
            "createdAt": job.created_at,
            "lastUpdatedAt": job.completed_at or job.created_at,
            "jobProcessDetails": details,
        }
        if job.completed_at is not None:
            out["completedAt"] = job.completed_at
        if job.reason_code is not None:
            out["reasonCode"] = job.reason_code
        if job.comment is not None:
            out["comment"] = job.comment
        return out

    def executions_of(self, job_id: str, status: str | None = None) -> list[Execution]:
        """The latest execution of each thing of a job (ListJobExecutionsForJob), optionally by status."""
        self.job(job_id)
        found = [a[-1] for a in self._of_job.get(job_id, {}).values()]
        return [e for e in found if status is None or str(e.status) == status]

    # ---------------------------------------------------------------- the device's requests

    def pending(self, thing: str) -> list[Execution]:
        """The thing's executions that are not terminal: IN_PROGRESS first, then QUEUED, each oldest first."""
        latest = [attempts[-1] for attempts in self._of_thing.get(thing, {}).values()]
        live = [e for e in latest if not e.status.terminal]
        return sorted(live, key=lambda e: (e.status is not ExecutionStatus.IN_PROGRESS, e.queued_at, e.job_id))

    def get_pending(self, thing: str) -> dict[str, Any]:
        """``get``'s answer: ``inProgressJobs`` and ``queuedJobs``."""
        live = self.pending(thing)
        return {
            "inProgressJobs": [e.summary() for e in live if e.status is ExecutionStatus.IN_PROGRESS],
            "queuedJobs": [e.summary() for e in live if e.status is ExecutionStatus.QUEUED],
        }

    def next_execution(self, thing: str) -> Execution | None:
        """The head of the thing's pending list (what ``$next`` and notify-next name)."""
        live = self.pending(thing)
        return live[0] if live else None

    def start_next(self, thing: str, request: Mapping[str, Any], now: float) -> Execution | None:
        """``start-next``: an IN_PROGRESS execution as it is, else the oldest QUEUED one, now IN_PROGRESS."""
        details = _status_details(request)
        step = _step_timeout(request)
        live = self.pending(thing)
        if not live:
            return None
        head = live[0]
        if head.status is ExecutionStatus.IN_PROGRESS:
            return head
        self._start(head, details, step, now)
        return head

    def describe(self, thing: str, job_id: str, execution_number: int | None = None) -> Execution:
        """``<jobId>/get`` (``$next``: the head of the pending list)."""
        if job_id == "$next":
            head = self.next_execution(thing)
            if head is None:
                raise JobsError("ResourceNotFound", f"thing {thing} has no pending job execution")
            return head
        attempts = self.executions.get((job_id, thing))
        if not attempts:
            raise JobsError("ResourceNotFound", f"job {job_id} has no execution for thing {thing}")
        if execution_number is None:
            return attempts[-1]
        for execution in attempts:
            if execution.execution_number == execution_number:
                return execution
        raise JobsError("ResourceNotFound", f"job {job_id} has no execution {execution_number} for {thing}")

    def device_describe(self, thing: str, job_id: str, request: Mapping[str, Any]) -> Execution:
        """The device's ``<jobId>/get``: as :meth:`describe`, but a terminal execution is refused
        (TerminalStateReached), as IoT Core does."""
        number = request.get("executionNumber")
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
            raise JobsError("InvalidRequest", "executionNumber must be an integer")
        execution = self.describe(thing, job_id, number)
        if execution.status.terminal:
            raise JobsError("TerminalStateReached", f"the execution of {job_id} is {execution.status}")
        return execution

    def update(self, thing: str, job_id: str, request: Mapping[str, Any], now: float) -> Execution:
        """``<jobId>/update``: the device's status change, checked against every rule."""
        status_text = request.get("status")
        if not isinstance(status_text, str) or status_text not in ExecutionStatus.__members__:
            raise JobsError("InvalidRequest", f"status {status_text!r} is not a job execution status")
        status = ExecutionStatus(status_text)
        number = request.get("executionNumber")
        if number is not None and not isinstance(number, int):
            raise JobsError("InvalidRequest", "executionNumber must be an integer")
        execution = self.describe(thing, job_id, number)
        expected = request.get("expectedVersion")
        if expected is not None and expected != execution.version:
            raise JobsError(
                "VersionMismatch",
                f"expectedVersion {expected} but the execution's version is {execution.version}",
                execution,
            )
        if execution.status.terminal:
            raise JobsError(
                "InvalidStateTransition", f"the execution is {execution.status}: a terminal state", execution
            )
        if status not in DEVICE_STATUSES:
            raise JobsError(
                "InvalidStateTransition",
                f"a device may not set {status}; it may set IN_PROGRESS, SUCCEEDED, FAILED, REJECTED",
                execution,
            )
        details = _status_details(request)
        step = _step_timeout(request)
        if status is ExecutionStatus.IN_PROGRESS:
            if execution.status is ExecutionStatus.QUEUED:
                self._start(execution, details, step, now)
            else:
                if details is not None:
                    execution.status_details = details
                self._step(execution, step, now)
                execution.version += 1
                execution.last_updated_at = now
            return execution
        if details is not None:
            execution.status_details = details
        self._finish(execution, status, now)
        return execution

    # ---------------------------------------------------------------- the clock

    def tick(self, now: float) -> set[str]:
        """Roll out at each job's rate; time out overdue executions (and retry them). Returns the things
        to notify."""
        touched: set[str] = set()
        for job in list(self.jobs.values()):
            if job.status is JobStatus.IN_PROGRESS and job.to_roll_out:
                elapsed = max(0.0, now - job.last_tick)
                job.tokens = min(job.rate_per_minute, job.tokens + elapsed * job.rate_per_minute / 60)
                touched |= self._roll_out(job, now)
            job.last_tick = now
        for attempts in list(self.executions.values()):
            execution = attempts[-1]
            if execution.status is not ExecutionStatus.IN_PROGRESS:
                continue
            deadlines = [d for d in (execution.step_deadline, execution.in_progress_deadline) if d is not None]
            if deadlines and now >= min(deadlines):
                self._finish(execution, ExecutionStatus.TIMED_OUT, now)
                touched.add(execution.thing)
        return touched

    # ---------------------------------------------------------------- inside

    def _things_of(self, targets: Iterable[str]) -> list[str]:
        things: list[str] = []
        for target in targets:
            members = self.groups.get(target[6:], []) if target.startswith("group:") else [target]
            things += [t for t in members if t not in things]
        return things

    def _roll_out(self, job: Job, now: float) -> set[str]:
        touched = set()
        while job.to_roll_out and job.tokens >= 1.0:
            thing = job.to_roll_out.pop(0)
            job.tokens -= 1.0
            self._queue(job, thing, now)
            job.notified += 1
            touched.add(thing)
            self._maybe_increase(job, job.notified, job.config.increase_after_notified)
        return touched

    def _maybe_increase(self, job: Job, count: int, criterion: int | None) -> None:
        config = job.config
        if config.base_rate_per_minute is None or criterion is None or count < job.next_increase:
            return
        job.rate_per_minute = min(float(config.maximum_per_minute), job.rate_per_minute * config.increment_factor)
        job.next_increase += criterion

    def _queue(self, job: Job, thing: str, now: float) -> Execution:
        attempts = self.executions.get((job.job_id, thing))
        if attempts is None:
            attempts = self._index(job.job_id, thing, [])
        execution = Execution(job.job_id, thing, len(attempts) + 1, now, last_updated_at=now)
        attempts.append(execution)
        return execution

    def _index(self, job_id: str, thing: str, attempts: list[Execution]) -> list[Execution]:
        """Record a thing's attempt list for a job, in :attr:`executions` and both indexes (one list)."""
        self.executions[(job_id, thing)] = attempts
        self._of_job.setdefault(job_id, {})[thing] = attempts
        self._of_thing.setdefault(thing, {})[job_id] = attempts
        return attempts

    def _latest(self, job_id: str, thing: str) -> Execution | None:
        attempts = self.executions.get((job_id, thing))
        return attempts[-1] if attempts else None

    def _start(self, execution: Execution, details: dict[str, str] | None, step: float | None, now: float) -> None:
        execution.status = ExecutionStatus.IN_PROGRESS
        execution.started_at = now
        execution.last_updated_at = now
        execution.version += 1
        if details is not None:
            execution.status_details = details
        timeout = self.jobs[execution.job_id].config.in_progress_timeout_s
        execution.in_progress_deadline = None if timeout is None else now + timeout
        self._step(execution, step, now)

    def _step(self, execution: Execution, step: float | None, now: float) -> None:
        """A step timer replaces the previous one (-1 drops it); it never runs past the in-progress deadline."""
        if step is None:
            return
        if step < 0:
            execution.step_deadline = None
            return
        deadline = now + step
        if execution.in_progress_deadline is not None:
            deadline = min(deadline, execution.in_progress_deadline)
        execution.step_deadline = deadline

    def _set(self, execution: Execution, status: ExecutionStatus, now: float) -> None:
        execution.status = status
        execution.version += 1
        execution.last_updated_at = now
        execution.step_deadline = execution.in_progress_deadline = None

    def _finish(self, execution: Execution, status: ExecutionStatus, now: float) -> None:
        """A terminal state: then the job's retry, abort and completion rules."""
        self._set(execution, status, now)
        job = self.jobs[execution.job_id]
        if status is ExecutionStatus.SUCCEEDED:
            succeeded = sum(1 for a in self._of_job[job.job_id].values() if a[-1].status is status)
            self._maybe_increase(job, succeeded, job.config.increase_after_succeeded)
        if job.status is JobStatus.IN_PROGRESS and self._retry(job, execution, now):
            return
        if job.status is JobStatus.IN_PROGRESS:
            self._maybe_abort(job, now)
        self._maybe_complete(job, now)

    def _retry(self, job: Job, execution: Execution, now: float) -> bool:
        status = str(execution.status)
        if status not in ("FAILED", "TIMED_OUT"):
            return False
        allowed = sum(r.retries for r in job.config.retries if r.failure_type in (status, "ALL"))
        if execution.execution_number > allowed:
            return False
        self._queue(job, execution.thing, now)
        return True

    def _maybe_abort(self, job: Job, now: float) -> None:
        latest = [a[-1] for a in self._of_job.get(job.job_id, {}).values()]
        executed = [e for e in latest if e.status.terminal]
        for criterion in job.config.abort:
            if len(executed) < criterion.min_executed:
                continue
            kinds = (
                ("FAILED", "REJECTED", "TIMED_OUT") if criterion.failure_type == "ALL" else (criterion.failure_type,)
            )
            failed = sum(1 for e in executed if str(e.status) in kinds)
            if 100.0 * failed / len(executed) >= criterion.threshold_percentage:
                self.cancel_job(
                    job.job_id,
                    now,
                    reason="ABORTED",
                    comment=f"abort criterion {criterion.failure_type} >= {criterion.threshold_percentage}% met",
                )
                return

    def _maybe_complete(self, job: Job, now: float) -> None:
        if job.status is not JobStatus.IN_PROGRESS or job.config.continuous or job.to_roll_out:
            return
        if all(a[-1].status.terminal for a in self._of_job.get(job.job_id, {}).values()):
            job.status, job.completed_at = JobStatus.COMPLETED, now

    # ---------------------------------------------------------------- persistence

    def to_json(self) -> dict[str, Any]:
        return {
            "jobs": {jid: _job_json(job) for jid, job in self.jobs.items()},
            "executions": [[e.to_json() for e in attempts] for attempts in self.executions.values()],
            "groups": self.groups,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobsState:
        state = cls()
        for jid, job in data.get("jobs", {}).items():
            state.jobs[jid] = _job_from_json(job)
        for attempts in data.get("executions", []):
            loaded = [Execution.from_json(e) for e in attempts]
            if loaded:
                state._index(loaded[0].job_id, loaded[0].thing, loaded)
        state.groups = {g: list(t) for g, t in data.get("groups", {}).items()}
        return state


def _camel(status: ExecutionStatus) -> str:
    return "".join(part.capitalize() for part in str(status).split("_"))


def _status_details(request: Mapping[str, Any]) -> dict[str, str] | None:
    details = request.get("statusDetails")
    if details is None:
        return None
    if not isinstance(details, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in details.items()):
        raise JobsError("InvalidRequest", "statusDetails must map strings to strings")
    if len(details) > MAX_STATUS_DETAILS or any(len(v) > 1024 for v in details.values()):
        raise JobsError("InvalidRequest", f"statusDetails holds at most {MAX_STATUS_DETAILS} pairs of 1024 characters")
    return dict(details)


def _step_timeout(request: Mapping[str, Any]) -> float | None:
    minutes = request.get("stepTimeoutInMinutes")
    if minutes is None:
        return None
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not (minutes == -1 or 1 <= minutes <= 10080):
        raise JobsError("InvalidRequest", "stepTimeoutInMinutes must be 1-10080, or -1 to drop the step timer")
    return -1.0 if minutes == -1 else float(minutes) * 60


def _job_json(job: Job) -> dict[str, Any]:
    data = {k: v for k, v in job.__dict__.items() if k != "config"}
    data["status"] = str(job.status)
    data["config"] = {
        **{k: v for k, v in job.config.__dict__.items() if k not in ("abort", "retries")},
        "abort": [c.__dict__ for c in job.config.abort],
        "retries": [r.__dict__ for r in job.config.retries],
    }
    return data


def _job_from_json(data: Mapping[str, Any]) -> Job:
    config = dict(data["config"])
    config["abort"] = tuple(AbortCriterion(**c) for c in config["abort"])
    config["retries"] = tuple(RetryCriterion(**r) for r in config["retries"])
    return Job(**{**data, "status": JobStatus(data["status"]), "config": JobConfig(**config)})
