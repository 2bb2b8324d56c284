"""The local Jobs service: AWS IoT Jobs' device MQTT API in one region, over :class:`~iotfleet.cloud.jobs.JobsState`.

Requests arrive on ``$aws/things/<thing>/jobs/{get,start-next,<jobId>/get,<jobId>/update}``; answers go
to ``<request>/accepted`` or ``<request>/rejected`` with ``timestamp`` (epoch seconds) and the echoed
``clientToken``, as IOT_CORE.md section 10 has them (so AWS's ``IotJobsClientV2`` matches them). Any other
topic under a thing's jobs prefix that reaches the service (one its policy let the device publish) and is
not an answer or a notification is refused with ``InvalidTopic`` on ``<topic>/rejected``. When a
thing's pending executions change (one queued by the rollout, one started: QUEUED -> IN_PROGRESS, one
gone terminal, canceled, timed out) it gets ``$aws/things/<thing>/jobs/notify``, and ``.../notify-next``
when the head of its list changes. A clock task rolls jobs out at their rate and times executions out,
once a second. The state is kept in the region's ``jobs.json``, written at most once a second and when
the service stops.

Job documents: ``${aws:iot:s3-presigned-url:<url>}`` placeholders are replaced, each time a device
fetches the document, by a URL that expires (``presign``: by default the URL with AWS-like query
parameters; the local cloud's :class:`~iotfleet.cloud.objects.ObjectStore` serves the objects it holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from iotfleet._rate import TokenBucket, over_rate
from iotfleet.cloud.jobs import Execution, JobConfig, JobsError, JobsState
from iotfleet.cloud.objects import Presigner
from iotfleet.cloud.registry import Registry
from iotfleet.cloud.services.base import RegionService, ServiceHost
from iotfleet.transport.base import InboundMessage

__all__ = ["REQUEST_FILTERS", "JobsOperator", "JobsService"]

# The whole jobs namespace: a request to no operation gets InvalidTopic, so the service must see it. It
# sees its own answers and notifications too (the transport has no MQTT 5 no-local option), and drops them.
REQUEST_FILTERS = ("$aws/things/+/jobs/#",)
_JOBS_TOPIC = re.compile(r"\$aws/things/([^/]+)/jobs/(.*)")
_OPERATIONS = ("get", "start-next")  # $aws/things/<thing>/jobs/<op>
_EXECUTION_OPERATIONS = ("get", "update")  # $aws/things/<thing>/jobs/<jobId>/<op>
_NOTIFICATIONS = ("notify", "notify-next")
_PRESIGNED = re.compile(r"\$\{aws:iot:s3-presigned-url:([^}]+)\}")
RATE_PER_THING = 20.0  # device requests a second per thing; IoT Core names none (IOT_CORE.md section 10)
TICK_S = 1.0
T = TypeVar("T")


class JobsService(RegionService):
    """Serves one region's jobs topics, rolls its jobs out and times its executions out."""

    kind = "jobs"
    filters = REQUEST_FILTERS

    def __init__(
        self,
        *,
        region: str,
        registry: Registry,
        path: Path,
        presign: Callable[[str, int], str] | None = None,
        secret: bytes | None = None,
    ) -> None:
        super().__init__(region)
        self.registry = registry
        self.path = path
        self.state = JobsState.from_json(json.loads(path.read_text())) if path.exists() else JobsState()
        self.presign = presign or Presigner(secret).sign
        self.requests = 0
        self.rejected: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._announced: dict[str, tuple[Any, ...]] = {}  # thing -> the pending list it was last told
        self._heads: dict[str, tuple[str, int] | None] = {}  # thing -> the head it was last told
        self._dirty = False

    def start(self) -> None:
        self._spawn(self._clock())

    async def _clock(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tell(self.state.tick(time.time()))
            self.save()

    # ---------------------------------------------------------------- the MQTT path

    def on_message(self, message: InboundMessage) -> None:
        match = _JOBS_TOPIC.fullmatch(message.topic)
        if match is None:
            return
        thing, rest = match.groups()
        if rest in _NOTIFICATIONS or rest.endswith(("/accepted", "/rejected")):
            return  # an answer or a notification (the service's own, as a rule): no request
        self.requests += 1
        job_id, _, op = rest.rpartition("/")
        if not job_id or "/" in job_id or op not in _EXECUTION_OPERATIONS:
            job_id, op = "", rest  # an operation of the thing (get, start-next), or none: InvalidTopic
        self.serve(thing, op, job_id or None, message.payload, now=time.time())

    def serve(
        self, thing: str, op: str, job_id: str | None, payload: bytes, *, now: float
    ) -> tuple[str, dict[str, Any]]:
        """Answer one request (``op`` of the thing, or of its execution ``job_id``); return the answer's
        topic and body (also published). An ``op`` that is no operation is refused with InvalidTopic."""
        base = f"$aws/things/{thing}/jobs/" + (op if job_id is None else f"{job_id}/{op}")
        token: str | None = None
        try:
            request = _parse(payload)
            token = request.get("clientToken") if isinstance(request.get("clientToken"), str) else None
            if op not in (_OPERATIONS if job_id is None else _EXECUTION_OPERATIONS):
                raise JobsError("InvalidTopic", f"{base} is no operation of the Jobs service")
            if self.registry.thing(thing) is None:
                raise JobsError("ResourceNotFound", f"thing {thing} does not exist")
            if over_rate(self._buckets, thing, RATE_PER_THING, now):
                raise JobsError("RequestThrottled", f"thing {thing} is over {RATE_PER_THING:g} jobs requests a second")
            body = self._answer(thing, op, job_id, request, now)
            topic = f"{base}/accepted"
        except JobsError as exc:
            self.rejected[exc.code] = self.rejected.get(exc.code, 0) + 1
            body = {"code": exc.code, "message": exc.message}
            if exc.execution is not None and exc.code in ("InvalidStateTransition", "VersionMismatch"):
                body["executionState"] = exc.execution.state()
            topic = f"{base}/rejected"
        except Exception as exc:  # noqa: BLE001 - a bug or the disk: recorded, answered as IoT Core's InternalError
            self.failures.record(f"jobs {self.region}", exc)
            body, topic = {"code": "InternalError", "message": "Internal service failure"}, f"{base}/rejected"
        body["timestamp"] = int(now)
        if token is not None:
            body["clientToken"] = token
        self._publish(topic, body)
        return topic, body

    def _answer(
        self, thing: str, op: str, job_id: str | None, request: Mapping[str, Any], now: float
    ) -> dict[str, Any]:
        state = self.state
        if job_id is None and op == "get":
            return state.get_pending(thing)
        if job_id is None:  # start-next
            execution = state.start_next(thing, request, now)
            self.changed([thing])
            return {} if execution is None else {"execution": self._execution(execution)}
        if op == "get":
            execution = state.device_describe(thing, job_id, request)
            include = request.get("includeJobDocument", True)
            return {"execution": self._execution(execution, document=include is not False)}
        execution = state.update(thing, job_id, request, now)
        self.changed([thing])
        body: dict[str, Any] = {}
        if request.get("includeJobExecutionState"):
            body["executionState"] = execution.state()
        if request.get("includeJobDocument"):
            body["jobDocument"] = self.document(execution.job_id)
        return body

    def _execution(self, execution: Execution, *, document: bool = True) -> dict[str, Any]:
        return execution.data(self.document(execution.job_id) if document else None)

    def document(self, job_id: str) -> Any:
        """A job's document as a device gets it: JSON, presigned URLs filled in."""
        job = self.state.job(job_id)
        text = _PRESIGNED.sub(lambda m: self.presign(m.group(1), job.config.presigned_url_expires_s), job.document)
        return json.loads(text)

    # ---------------------------------------------------------------- telling devices

    def changed(self, things: Iterable[str]) -> None:
        self._dirty = True
        self.tell(things)

    def tell(self, things: Iterable[str]) -> None:
        """Send ``notify`` to each thing whose pending list changed (an execution in or out of it, or one
        whose status changed, as QUEUED -> IN_PROGRESS: the DG's criteria), ``notify-next`` if its head did."""
        now = int(time.time())
        for thing in things:
            self._dirty = True
            pending = self.state.pending(thing)
            listing = tuple((e.job_id, e.execution_number, str(e.status)) for e in pending)
            if self._announced.get(thing) != listing:
                self._announced[thing] = listing
                jobs: dict[str, list[dict[str, Any]]] = {}
                for status in ("IN_PROGRESS", "QUEUED"):
                    found = [e.summary() for e in pending if str(e.status) == status][:10]
                    if found:
                        jobs[status] = found
                self._publish(f"$aws/things/{thing}/jobs/notify", {"timestamp": now, "jobs": jobs})
            head = (pending[0].job_id, pending[0].execution_number) if pending else None
            if self._heads.get(thing, ...) != head:
                self._heads[thing] = head
                body: dict[str, Any] = {"timestamp": now}
                if pending:
                    body["execution"] = self._execution(pending[0])
                self._publish(f"$aws/things/{thing}/jobs/notify-next", body)

    def _publish(self, topic: str, body: Mapping[str, Any]) -> None:
        if self.connection is not None:
            self.connection.publish(topic, json.dumps(body, separators=(",", ":")).encode())

    def save(self) -> None:
        """Write the state if it changed (atomically: a file renamed into place)."""
        if not self._dirty:
            return
        self._dirty = False
        staged = self.path.with_name(self.path.name + ".tmp")
        try:
            staged.write_text(json.dumps(self.state.to_json()))
            staged.replace(self.path)
        except OSError as exc:
            self._dirty = True
            self.failures.record(f"jobs {self.region} store", exc)
        finally:
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)


class JobsOperator:
    """The control plane's jobs operations on one region (CreateJob, CancelJob, Describe..., thing
    groups), run on the services' loop so devices are told at once."""

    def __init__(self, service: JobsService, host: ServiceHost) -> None:
        self.service = service
        self._host = host

    def _change(self, work: Callable[[JobsState, float], set[str]]) -> None:
        """Apply a change on the services' loop; tell the things it touched and save the state."""
        service = self.service

        async def apply() -> None:
            service.changed(work(service.state, time.time()))
            service.save()

        self._host.call(apply())

    def _read(self, work: Callable[[JobsState], T]) -> T:
        """Read the state on the services' loop (nothing to tell, nothing to save)."""
        service = self.service

        async def read() -> T:
            return work(service.state)

        return self._host.call(read())

    def create_job(
        self, job_id: str, targets: list[str], document: str, config: JobConfig, description: str = ""
    ) -> dict[str, Any]:
        self._change(
            lambda state, now: state.create_job(job_id, targets, document, config, now, description=description)
        )
        return self.describe_job(job_id)

    def cancel_job(
        self, job_id: str, *, force: bool = False, reason: str | None = None, comment: str | None = None
    ) -> None:
        self._change(lambda state, now: state.cancel_job(job_id, now, force=force, reason=reason, comment=comment))

    def add_to_group(self, group: str, things: list[str]) -> None:
        def work(state: JobsState, now: float) -> set[str]:
            touched: set[str] = set()
            for thing in things:
                touched |= state.add_to_group(group, thing, now)
            return touched

        self._change(work)

    def remove_from_group(self, group: str, thing: str) -> None:
        self._change(lambda state, now: state.remove_from_group(group, thing, now))

    def describe_job(self, job_id: str) -> dict[str, Any]:
        return self._read(lambda state: state.describe_job(job_id))

    def executions(self, job_id: str, status: str | None = None) -> list[dict[str, Any]]:
        return self._read(lambda state: [e.data(None) for e in state.executions_of(job_id, status)])

    def describe_execution(self, job_id: str, thing: str, execution_number: int | None = None) -> dict[str, Any]:
        def work(state: JobsState) -> dict[str, Any]:
            return state.describe(thing, job_id, execution_number).data(self.service.document(job_id))

        return self._read(work)


def _parse(payload: bytes) -> dict[str, Any]:
    if not payload.strip():
        return {}
    try:
        request = json.loads(payload)
    except ValueError as exc:
        raise JobsError("InvalidJson", f"the request is not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise JobsError("InvalidJson", "the request must be a JSON object")
    return request
