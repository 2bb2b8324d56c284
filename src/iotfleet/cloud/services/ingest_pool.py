"""A region's ingest scaled out over processes: ``LocalCloud(ingest_workers=N)``, ``--ingest-workers N``.

Each worker is a spawned process running one :class:`~iotfleet.cloud.services.ingest.IngestService`
on its own event loop, with its own MQTT connection (``iotfleet-service-ingest-<region>-<i>``) on the
shared subscription ``$share/iotfleet-ingest/...``: mosquitto hands each device message to one of
them, so parsing, validating and storing run on as many cores as there are workers. They write one
SQLite store; every transaction takes the write lock before it looks a message id up, so a message
delivered twice (a replay after a failover goes to any worker) is stored once and counted as a
duplicate, exactly as with one worker. Worker 0 alone also takes what cannot be shared (Basic Ingest
and lifecycle events; mosquitto delivers no ``$`` topic to a shared subscription).

The pool answers as one :class:`IngestService` does (:meth:`IngestPool.settle`, ``stats``,
``ingested``, ``query``, ``close``): it asks every worker over its pipe and merges their figures
(:func:`~iotfleet.cloud.services.ingest.merge_stats`), adding ``cpu_s``, the CPU time the workers used,
so the ingest's own CPU per message is known. A worker's background failures are recorded in the
cloud's :class:`~iotfleet.cloud.owned.Failures` with its index; a worker that dies is recorded the
moment it does (what it had received and not stored is lost, and the report counts it as lost).
Workers die with the cloud's process (:func:`~iotfleet._children.become_child`, and the end of their
pipe), and :meth:`IngestPool.close` stops each by its own PID if it does not exit when asked.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import signal
import sqlite3
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, cast

from iotfleet._children import become_child, signals_blocked
from iotfleet.cloud.owned import Failures
from iotfleet.cloud.rules import Rule
from iotfleet.cloud.services.base import ServiceConnection, ServiceHost
from iotfleet.cloud.services.ingest import IngestService, create_store, merge_stats
from iotfleet.config import Endpoint, Identity
from iotfleet.errors import CloudError
from iotfleet.metrics import Histogram
from iotfleet.topics import TopicScheme

__all__ = ["IngestPool", "WorkerSpec"]

START_TIMEOUT_S: Final = 60.0  # a worker imports iotfleet, opens the store, connects and subscribes
ANSWER_TIMEOUT_S: Final = 120.0  # settling writes what a worker holds; a full store may retry slowly
STOP_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one ingest worker process needs (pickled to it)."""

    region: str
    index: int
    path: Path
    scheme: TopicScheme
    max_store_bytes: int | None
    rules: tuple[Rule, ...]
    endpoint: Endpoint
    identity: Identity


class IngestPool:
    """``workers`` ingest processes for one region, read as one pipeline. Start with :meth:`start`."""

    def __init__(
        self,
        *,
        region: str,
        path: Path,
        scheme: TopicScheme,
        max_store_bytes: int | None,
        rules: Sequence[Rule],
        workers: int,
        endpoint: Endpoint,
        identity: Identity,
        failures: Failures,
    ) -> None:
        if workers < 1:
            raise CloudError(f"ingest workers must be at least 1, got {workers}")
        self.region = region
        self.path = path
        self.failures = failures
        self._specs = [
            WorkerSpec(region, i, path, scheme, max_store_bytes, tuple(rules), endpoint, identity)
            for i in range(workers)
        ]
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._pipes: list[Connection] = []
        self._locks: list[threading.Lock] = []  # one request at a time on each pipe
        self._gone: set[int] = set()  # workers that died or stopped answering
        self._closing = False
        self._final: dict[str, Any] | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def start(self) -> IngestPool:
        """Spawn the workers and return once each is connected and subscribed (or raise, stopping them)."""
        context = multiprocessing.get_context("spawn")
        create_store(self.path)
        try:
            with signals_blocked():  # inherited through the exec: a Ctrl-C cannot kill a worker half started
                for spec in self._specs:
                    ours, theirs = context.Pipe()
                    process = context.Process(
                        target=worker_entry, args=(spec, theirs), name=f"iotfleet-ingest-{spec.region}-{spec.index}"
                    )
                    process.start()
                    theirs.close()
                    self._processes.append(process)
                    self._pipes.append(ours)
                    self._locks.append(threading.Lock())
            for index in range(len(self._specs)):
                self._answer(index, START_TIMEOUT_S, "start")
        except BaseException:
            self._stop_processes()
            raise
        self.failures.thread(self._watch, f"ingest {self.region} workers watch")
        return self

    def _watch(self) -> None:
        """Record a worker that exits while the pool is not closing, the moment it does."""
        waiting = {p.sentinel: i for i, p in enumerate(self._processes)}
        while waiting and not self._closing:
            for sentinel in multiprocessing.connection.wait(list(waiting), timeout=1.0):
                index = waiting.pop(cast(int, sentinel))  # wait() returns what it was given: the sentinels
                if not self._closing:
                    self._lost(index, _ended(self._processes[index]))

    def _lost(self, index: int, what: str) -> None:
        if index not in self._gone:
            self._gone.add(index)
            self.failures.record(
                f"ingest {self.region} worker {index}",
                f"{what}; the messages it had received and not stored are lost",
            )

    # ---------------------------------------------------------------- asking the workers

    def _answer(self, index: int, timeout: float, what: str) -> Any:
        """The next answer on worker ``index``'s pipe; its new failures are recorded. Raises CloudError
        (and marks the worker gone) when it died, does not answer in time or failed the request."""
        pipe = self._pipes[index]
        try:
            if not pipe.poll(timeout):
                raise CloudError(f"ingest worker {index} of {self.region} did not answer {what} within {timeout:.0f}s")
            status, value, failures = pipe.recv()
        except (EOFError, OSError) as exc:
            self._lost(index, f"died ({type(exc).__name__} on its pipe)")
            raise CloudError(f"ingest worker {index} of {self.region} died; see the cloud's failures") from exc
        except CloudError:
            self._lost(index, f"did not answer {what}")
            raise
        for line in failures:
            self.failures.record(f"ingest {self.region} worker {index}", line)
        if status != "ok":
            raise CloudError(f"ingest worker {index} of {self.region} could not {what}: {value}")
        return value

    def _ask(self, verb: str, *args: Any, timeout: float = ANSWER_TIMEOUT_S) -> list[Any]:
        """Send one request to every live worker and return their answers; a worker that fails it is
        recorded and left out, so the others' figures are still read."""
        answers: list[Any] = []
        for index, pipe in enumerate(self._pipes):
            if index in self._gone:
                continue
            with self._locks[index]:
                try:
                    pipe.send((verb, args))
                except OSError as exc:
                    self._lost(index, f"could not be sent {verb} ({exc})")
                    continue
                try:
                    answers.append(self._answer(index, timeout, verb))
                except CloudError as exc:
                    if index not in self._gone:  # alive, but this request failed in it
                        self.failures.record(f"ingest {self.region} worker {index}", str(exc))
        return answers

    def _merged(self, answers: list[Any]) -> dict[str, Any]:
        if not answers:
            raise CloudError(f"no ingest worker of {self.region} answered; see the cloud's failures")
        merged = merge_stats([stats for stats, _ in answers])
        merged["cpu_s"] = sum(cpu for _, cpu in answers)
        merged["workers"] = len(self._specs)
        merged["received_by_worker"] = [stats["received"] for stats, _ in answers]  # how the share split
        return merged

    async def settle(self, sites: Collection[str] | None = None, *, cloud: bool = True) -> dict[str, Any]:
        """Every worker's :meth:`IngestService.settle`, merged (call on any event loop: the pipes are
        read on a thread)."""
        if self._final is not None:
            return self._final
        chosen = None if sites is None else set(sites)
        answers = await asyncio.get_running_loop().run_in_executor(None, self._ask, "settle", chosen, cloud)
        return self._merged(answers)

    def stats(self, sites: Collection[str] | None = None, *, cloud: bool = True) -> dict[str, Any]:
        """The figures (after :meth:`close`, the last ones each worker gave)."""
        if self._final is not None:
            return self._final
        return self._merged(self._ask("settle", None if sites is None else set(sites), cloud))

    @property
    def ingested(self) -> int:
        """Messages stored so far, summed over the workers (a cheap live reading, for a dashboard)."""
        if self._final is not None:
            return int(self._final["ingested"])
        return sum(self._ask("ingested", timeout=10.0))

    def wait_served_since(self, since: float, deadline: float) -> None:
        """Return once every live worker has a session subscribed at or after ``since`` (see
        :meth:`ServiceConnection.wait_served_since`), or at ``deadline``; a worker not back in time is
        recorded in the failures, by name."""
        self._ask("await-session", since, deadline, timeout=max(0.0, deadline - time.monotonic()) + 5.0)

    def flush(self) -> None:
        """Have every worker write everything it received."""
        self._ask("settle", None, False)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the store the workers share (after a :meth:`flush`)."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def close(self) -> None:
        """Have every worker write what is left and stop; keep their last figures; stop by PID any that
        does not exit."""
        if self._final is not None or not self._processes:
            return
        self._closing = True
        try:
            answers = self._ask("close")
            if answers:
                self._final = self._merged(answers)
        finally:
            self._stop_processes()
            if self._final is None:  # no worker answered: what they stored is in the store, unread
                self._final = {**_unanswered(self.region), "cpu_s": 0.0, "workers": len(self._specs)}

    def _stop_processes(self) -> None:
        self._closing = True
        for pipe in self._pipes:
            pipe.close()  # a worker still waiting for a request reads the end and exits
        for process in self._processes:
            process.join(timeout=STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()  # by its own PID; never by name
                process.join(timeout=5)


def _ended(process: multiprocessing.process.BaseProcess) -> str:
    """How a worker process ended, in words."""
    process.join(timeout=5)  # reap it, so its exit code is known
    code = process.exitcode
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _unanswered(region: str) -> dict[str, Any]:
    """The figures of a pool none of whose workers answered at the end."""
    return {
        "region": region,
        "ingested": 0,
        "duplicates": 0,
        "e2e": Histogram(),
        "by_device": {},
        "per_second": {},
        "received": 0,
        "rejected": {},
        "failed_batches": 0,
        "not_stored": 0,
        "hourly_not_stored": 0,
        "store_error": "no ingest worker answered at the end; the figures are lost (the store is intact)",
    }


# -------------------------------------------------------------------- the worker process


def worker_entry(spec: WorkerSpec, pipe: Connection) -> None:
    """One ingest worker: serve ``spec``'s share of the region until asked to close or the parent is gone."""
    become_child()
    from iotfleet.transport.crt import skip_system_trust_store  # noqa: PLC0415 - in the child only

    skip_system_trust_store()
    host = ServiceHost()
    try:
        service = IngestService(
            region=spec.region,
            path=spec.path,
            scheme=spec.scheme,
            max_store_bytes=spec.max_store_bytes,
            rules=spec.rules,
            unshared=spec.index == 0,
        )
        # a clean session: mosquitto keeps handing a shared subscription's messages to a member whose
        # session it keeps, so a dead worker's kept session would take its share for as long as it lasts
        connection = service.attach(spec.endpoint, spec.identity, host, instance=f"-{spec.index}", session_expiry_s=0)

        async def start() -> None:
            service.start()
            connection.start()
            await connection.wait_ready(START_TIMEOUT_S / 2)

        host.call(start(), timeout=START_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it from start()
        pipe.send(("error", f"{type(exc).__name__}: {exc}", []))
        host.stop()
        return
    reported = _Reported(host.failures)
    pipe.send(("ok", None, reported.new()))
    _serve(pipe, _Served(spec, host, service, connection), reported)


class _Reported:
    """The failures of a worker not yet sent to the parent."""

    def __init__(self, failures: Failures) -> None:
        self._failures = failures
        self._sent = 0

    def new(self) -> list[str]:
        kept = self._failures.kept()
        fresh, self._sent = kept[self._sent :], len(kept)
        return [str(f) for f in fresh]


@dataclass
class _Served:
    """What one worker serves, and how it answers the parent's requests."""

    spec: WorkerSpec
    host: ServiceHost
    service: IngestService
    connection: ServiceConnection

    @staticmethod
    def cpu_s() -> float:
        """This worker's CPU seconds so far (user and system, every thread)."""
        import resource  # noqa: PLC0415 - POSIX only, as the workers are

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def answer(self, verb: str, args: Any) -> Any:
        """The value that answers one request from the parent (raises if it cannot be answered)."""
        host, service = self.host, self.service
        if verb == "settle":
            sites, whole = args
            return host.call(service.settle(sites, cloud=whole), timeout=ANSWER_TIMEOUT_S), self.cpu_s()
        if verb == "ingested":
            return service.ingested
        if verb == "await-session":
            since, deadline = args
            wait = self.connection.wait_served_since(since, deadline)
            return host.call(wait, timeout=max(0.0, deadline - time.monotonic()) + 5.0)
        if verb == "close":
            host.stop()
            service.close()
            return service.stats(), self.cpu_s()
        raise CloudError(f"unknown request {verb!r}")


def _serve(pipe: Connection, served: _Served, reported: _Reported) -> None:
    while True:
        try:
            verb, args = pipe.recv()
        except (EOFError, OSError):  # the parent closed the pool or died: write what is left and go
            verb, args = "close", ()
        try:
            value = served.answer(verb, args)
        except Exception as exc:  # noqa: BLE001 - handed to the parent, which records it
            answer: tuple[str, Any, list[str]] = ("error", f"{type(exc).__name__}: {exc}", reported.new())
        else:
            answer = ("ok", value, reported.new())
        try:
            pipe.send(answer)
        except OSError:  # the parent is gone
            if verb != "close":
                served.host.stop()
                served.service.close()
            return
        if verb == "close":
            return
