"""The device side of AWS IoT Jobs: ``async for job in device.jobs()``.

Each job execution the thing has, in the service's order (IN_PROGRESS first, then QUEUED, oldest
first), is started (``start-next``) and handed over as a :class:`JobExecution` with its document; the
device calls :meth:`~JobExecution.progress`, then :meth:`~JobExecution.succeed` or
:meth:`~JobExecution.fail` (or :meth:`~JobExecution.reject`). When nothing is pending the iterator
waits for ``notify-next`` or a new session. It resumes by itself after a reconnect or a failover: the
next ``start-next`` goes to the region the device is on, which returns the execution that is already
IN_PROGRESS there, or starts the next one.

Jobs are per region (IOT_CORE.md section 10), so a job created in every region has an execution in each.
A job this client finished in one region and finds again in another (after a failover or a failback)
is not run twice: its terminal status is reported there at once, and it is not handed over again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from iotfleet.device.correlated import Correlated
from iotfleet.device.events import DeviceEvent, EventKind
from iotfleet.errors import ConnectionLost, IotFleetError, RequestTimeout
from iotfleet.topics import JobsTopics
from iotfleet.transport.base import InboundMessage

__all__ = ["JobExecution", "JobRejected", "Jobs"]

log = logging.getLogger(__name__)


class JobRejected(IotFleetError):
    """The Jobs service refused a request: ``code`` is AWS's (InvalidStateTransition, VersionMismatch,
    ResourceNotFound, TerminalStateReached, InvalidRequest, RequestThrottled, ...)."""

    def __init__(self, code: str, message: str, *, state: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.error = message
        self.state = dict(state or {})


class _Device(Protocol):
    """What the jobs client needs of a :class:`~iotfleet.device.DeviceClient`."""

    thing: str

    async def publish_to(self, topic: str, payload: Any, *, qos: int = 1, timeout: float | None = None) -> Any: ...

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    def add_message_handler(self, topic_filter: str, handler: Callable[[InboundMessage], None]) -> None: ...

    def add_listener(self, listener: Callable[[DeviceEvent], None]) -> None: ...


@dataclass
class JobExecution:
    """One job execution on this device, IN_PROGRESS once handed over."""

    job_id: str
    execution_number: int
    document: Any
    status: str
    version: int
    status_details: dict[str, str]
    _jobs: Jobs

    async def progress(self, details: Mapping[str, str], *, step_timeout_min: int | None = None) -> None:
        """Report progress (IN_PROGRESS with ``details``); ``step_timeout_min`` restarts the step timer."""
        await self.report("IN_PROGRESS", details, step_timeout_min)

    async def succeed(self, details: Mapping[str, str] | None = None) -> None:
        await self.report("SUCCEEDED", details)

    async def fail(self, reason: str, details: Mapping[str, str] | None = None) -> None:
        await self.report("FAILED", {**(details or {}), "reason": reason})

    async def reject(self, reason: str) -> None:
        """Refuse the job (REJECTED): the device will not run it."""
        await self.report("REJECTED", {"reason": reason})

    async def report(self, status: str, details: Mapping[str, str] | None = None, step: int | None = None) -> None:
        """Send ``status`` (IN_PROGRESS, SUCCEEDED, FAILED, REJECTED) with ``details`` and a step timer."""
        request: dict[str, Any] = {"status": status, "includeJobExecutionState": True}
        if details is not None:
            request["statusDetails"] = dict(details)
        if step is not None:
            request["stepTimeoutInMinutes"] = step
        answer = await self._jobs.request("update", request, job_id=self.job_id)
        state = answer.get("executionState", {})
        self.status = str(state.get("status", status))
        self.version = int(state.get("versionNumber", self.version + 1))
        self.status_details = dict(state.get("statusDetails", self.status_details))
        if self.status not in ("QUEUED", "IN_PROGRESS"):
            self._jobs.finished[self.job_id] = (self.status, dict(self.status_details))


class Jobs:
    """A thing's jobs over its device client: requests matched on ``clientToken``, as AWS's
    IotJobsClientV2 does, and the executions as an async iterator (:meth:`executions`)."""

    def __init__(self, device: _Device, *, timeout: float = 10.0) -> None:
        self.device = device
        self.topics = JobsTopics(device.thing)
        self.timeout = timeout
        self.finished: dict[str, tuple[str, dict[str, str]]] = {}  # job id -> its terminal status, here
        self._requests = Correlated(device, "Jobs")
        self._wake = asyncio.Event()
        self._subscribed: asyncio.Task[None] | None = None
        device.add_message_handler(f"{self.topics.prefix}/#", self._on_message)
        device.add_listener(self._on_event)

    def _on_event(self, event: DeviceEvent) -> None:
        if event.kind is EventKind.CONNECTED:
            self._wake.set()  # a new session, maybe a new region: ask again

    def _on_message(self, message: InboundMessage) -> None:
        if message.topic == self.topics.notify_next:
            self._wake.set()
        elif message.topic.endswith(("/accepted", "/rejected")) and not self._requests.resolve(message):
            log.warning("%s: unreadable jobs answer on %s", self.device.thing, message.topic)

    async def _subscribe(self) -> None:
        if self._subscribed is None:
            self._subscribed = asyncio.get_running_loop().create_task(self.device.subscribe(f"{self.topics.prefix}/#"))
        await asyncio.shield(self._subscribed)

    async def request(
        self, op: str, body: Mapping[str, Any] | None = None, *, job_id: str | None = None
    ) -> dict[str, Any]:
        """One request (``get``, ``start-next``, or ``get``/``update`` of ``job_id``); the accepted answer,
        or :class:`JobRejected`."""
        await self._subscribe()
        topic = self.topics.request(op, job_id)
        _, message = await self._requests.request(topic, body or {}, self.timeout, f"jobs {op}")
        payload: dict[str, Any] = json.loads(message.payload)
        accepted = message.topic.endswith("/accepted")
        if not accepted:
            raise JobRejected(
                str(payload.get("code")), str(payload.get("message", "")), state=payload.get("executionState")
            )
        return payload

    async def executions(self) -> AsyncIterator[JobExecution]:
        """Every job execution this thing gets, started, until the client closes."""
        while True:
            self._wake.clear()
            try:
                answer = await self.request("start-next")
            except (ConnectionLost, RequestTimeout) as exc:
                log.info("%s: start-next: %s; asking again on the next session", self.device.thing, exc)
                await self._wait()
                continue
            execution = answer.get("execution")
            if execution is None:
                await self._wait()
                continue
            job = JobExecution(
                job_id=execution["jobId"],
                execution_number=int(execution.get("executionNumber", 1)),
                document=execution.get("jobDocument"),
                status=execution.get("status", "IN_PROGRESS"),
                version=int(execution.get("versionNumber", 1)),
                status_details=dict(execution.get("statusDetails") or {}),
                _jobs=self,
            )
            done = self.finished.get(job.job_id)
            if done is not None:  # finished in another region: say so here too, don't run it again
                with contextlib.suppress(JobRejected):
                    await job.report(done[0], done[1])
                continue
            yield job
            if job.status in ("QUEUED", "IN_PROGRESS"):
                await self._wait()  # the caller has not finished it: wait for a change before asking again

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), 60)
