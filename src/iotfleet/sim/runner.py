"""The simulator's runner: worker processes, one DeviceClient (one connection, one identity) per device.

The parent splits the fleet by site over ``workers`` processes (spawned, never forked; DESIGN.md
decision 10). Each worker runs one event loop: it ramps its devices up at ``ramp_per_s``, runs each
device's tasks (:mod:`iotfleet.sim.workload`) in simulated time, and every second sends a snapshot of
its counters to the parent, which draws the live view and runs the chaos schedule. On stop, each worker
drains its devices' outboxes (``drain_s``), closes them and sends its final :class:`WorkerMetrics`.

A device type with a shadow (:class:`~iotfleet.sim.workload.ShadowSpec`) also runs a
:class:`~iotfleet.shadow.client.ShadowSync`: it reports its state when connected, applies the operator's
desired values from deltas, and resyncs after every new session (so after a failover). Shadow requests
go through the same outbox but are counted apart (``shadow``), never as data messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import multiprocessing
import os
import queue
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from iotfleet._rate import TokenBucket
from iotfleet.config import Endpoint, Identity, PublishLimits, ReconnectPolicy
from iotfleet.device.client import DeviceClient
from iotfleet.device.events import (
    Connected,
    ConnectFailed,
    DeviceEvent,
    Disconnected,
    FailedOver,
    PublishAcked,
    PublishFailed,
)
from iotfleet.errors import ClientError, IotFleetError
from iotfleet.metrics import Histogram, SeqSet
from iotfleet.provisioning import FleetProvisioner, IdentityStore
from iotfleet.shadow.client import ShadowSync
from iotfleet.sim.fleet import SimDevice
from iotfleet.sim.workload import DEVICE_TYPES, ShadowSpec

__all__ = ["ClaimSettings", "WorkerMetrics", "WorkerSpec", "run_workers"]

log = logging.getLogger(__name__)
SNAPSHOT_EVERY_S = 1.0
SHADOW_PREFIX = "$aws/things/"  # shadow requests; never a data topic


@dataclass(frozen=True, slots=True)
class ClaimSettings:
    """What ``--provision claim`` needs: the claim identity and the template."""

    claim: Identity
    template: str


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything one worker process needs (picklable)."""

    index: int
    devices: Sequence[SimDevice]
    endpoints: Sequence[Endpoint]
    identity_dir: Path
    ca_file: Path
    speed: float
    duration_s: float | None
    ramp_per_s: float
    reconnect: ReconnectPolicy
    limits: PublishLimits
    transport: str = "crt"
    drain_s: float = 10.0
    claim: ClaimSettings | None = None
    start_at: float = 0.0  # wall clock (epoch) when simulated time starts for every worker
    shadow: bool = True  # run each device type's shadow sync (when it has one)
    publish_rate: float | None = None  # this worker's share of the account-wide publish quota, msg/s


@dataclass
class WorkerMetrics:
    """What one worker measured; merged by the parent. Latencies in ms."""

    devices: int = 0
    connected: int = 0
    sent: int = 0
    acked: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)
    failovers: Counter[str] = field(default_factory=Counter)  # "from->to"
    failbacks: int = 0
    by_region: dict[str, Counter[str]] = field(default_factory=dict)  # region -> acked, connected, connects
    connect_ms: Histogram = field(default_factory=Histogram)
    ack_ms: Histogram = field(default_factory=Histogram)
    provision_ms: Histogram = field(default_factory=Histogram)
    acked_seqs: dict[str, SeqSet] = field(default_factory=dict)
    sent_by_device: dict[str, int] = field(default_factory=dict)
    first_ack_at: dict[str, dict[str, float]] = field(default_factory=dict)  # thing -> region -> epoch s
    outbox_depth: int = 0
    provisioned: int = 0
    started: int = 0
    cpu_s: float = 0.0  # the worker process's CPU time, all of it
    steady_cpu_s: float = 0.0  # CPU from every device running (plus 2 s) to the stop
    steady_wall_s: float = 0.0
    max_rss_kb: int = 0
    # shadow traffic: acknowledged requests by operation ("get", "update"), deltas applied, resyncs, ...
    shadow: Counter[str] = field(default_factory=Counter)
    account_rate_waits: int = 0  # times the account publish rate held the worker's tasks back

    def region(self, name: str) -> Counter[str]:
        counters = self.by_region.get(name)
        if counters is None:
            counters = self.by_region[name] = Counter()
        return counters

    def on_event(self, event: DeviceEvent) -> None:  # noqa: PLR0912 - one branch per event kind
        if isinstance(event, PublishAcked | PublishFailed) and event.topic.startswith(SHADOW_PREFIX):
            op = event.topic.rsplit("/", 1)[-1]
            if isinstance(event, PublishAcked):
                self.shadow[op] += 1
            else:
                self.errors[f"shadow {op}: {event.reason}"] += 1
        elif isinstance(event, PublishAcked):
            self.acked += 1
            self.ack_ms.add(event.latency_s * 1000)
            region = event.endpoint.region
            self.region(region)["acked"] += 1
            seqs = self.acked_seqs.get(event.thing)
            if seqs is None:
                seqs = self.acked_seqs[event.thing] = SeqSet()
            seqs.add(event.seq)
            firsts = self.first_ack_at.setdefault(event.thing, {})
            if region not in firsts:
                firsts[region] = time.time()
        elif isinstance(event, Connected):
            self.connects += 1
            self.connected += 1
            self.connect_ms.add(event.connect_s * 1000)
            self.region(event.endpoint.region)["connected"] += 1
            self.region(event.endpoint.region)["connects"] += 1
        elif isinstance(event, Disconnected):
            self.connected -= 1
            self.region(event.endpoint.region)["connected"] -= 1
            self.disconnects[event.reason] += 1
        elif isinstance(event, ConnectFailed):
            self.errors[f"connect: {event.reason}"] += 1
        elif isinstance(event, FailedOver):
            if event.failback:
                self.failbacks += 1
            else:
                self.failovers[f"{event.from_endpoint.region}->{event.to_endpoint.region}"] += 1
        elif isinstance(event, PublishFailed):
            self.failed[event.reason] += 1
            self.errors[f"publish: {event.reason}"] += 1

    def snapshot(self) -> dict[str, Any]:
        """The small live figures sent every second (no per-device data)."""
        return {
            "devices": self.devices,
            "started": self.started,
            "provisioned": self.provisioned,
            "connected": self.connected,
            "sent": self.sent,
            "acked": self.acked,
            "errors": sum(self.errors.values()),
            "outbox": self.outbox_depth,
            "p99_ack_ms": self.ack_ms.quantile(0.99),
            "by_region": {r: c["connected"] for r, c in self.by_region.items()},
        }


# --------------------------------------------------------------------------- the worker process


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LEFT_TO_PARENT = {signal.SIGINT, signal.SIGTERM}  # signals a worker ignores: the parent stops the run


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when the parent dies, even by SIGKILL (Linux; elsewhere the
    worker's watch notices a new parent pid)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415 - Linux only

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d; the parent-pid watch remains", ctypes.get_errno())


def _parent_pid() -> int | None:
    parent = multiprocessing.parent_process()
    return None if parent is None else parent.pid


def _worker_entry(spec: WorkerSpec, results: multiprocessing.Queue[Any], stop: MpEvent) -> None:
    from iotfleet.transport.crt import skip_system_trust_store  # noqa: PLC0415 - in the child only

    # Ctrl-C (and `timeout`'s SIGTERM) reach the whole process group: the parent alone decides (it sets
    # `stop`, the workers drain and report). They were blocked while the parent started us, so none
    # kills us before this point.
    for signum in _LEFT_TO_PARENT:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _LEFT_TO_PARENT)
    _die_with_parent()
    parent = _parent_pid()
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died before the death signal was armed: nobody would read our results
    skip_system_trust_store()
    try:
        import resource  # noqa: PLC0415 - POSIX only; the SDK never needs it
    except ImportError:
        resource = None  # type: ignore[assignment]
    if resource is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):  # one socket per device
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        metrics = asyncio.run(_worker(spec, results, stop, parent))
    except BaseException as exc:  # reported to the parent, which fails the run with it
        results.put(("error", spec.index, f"{type(exc).__name__}: {exc}"))
        raise
    if resource is not None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        metrics.cpu_s = usage.ru_utime + usage.ru_stime
        metrics.max_rss_kb = usage.ru_maxrss
    results.put(("final", spec.index, metrics))


async def _identity(device: SimDevice, spec: WorkerSpec, metrics: WorkerMetrics) -> Identity:
    if spec.claim is None:
        directory = spec.identity_dir / device.thing
        return Identity(
            thing_name=device.thing,
            cert_file=directory / "cert.pem",
            key_file=directory / "key.pem",
            ca_file=spec.ca_file,
        )
    store = IdentityStore(spec.identity_dir / device.thing)
    if store.exists():
        return store.load().identity
    started = time.perf_counter()
    provisioner = FleetProvisioner(
        endpoints=spec.endpoints,
        claim=spec.claim.claim,
        template=spec.claim.template,
        parameters={"Tenant": device.tenant, "Site": device.site, "SerialNumber": device.thing},
        transport=spec.transport,
        timeout=30,
        attempts=8,
    )
    stored = await provisioner.provision_into(store, verify=False)
    metrics.provision_ms.add((time.perf_counter() - started) * 1000)
    metrics.provisioned += 1
    return stored.identity


class _DeviceShadow:
    """One simulated device's shadow: synced once connected, reports in the background, stopped before close."""

    def __init__(self, client: DeviceClient, spec: ShadowSpec, state: Any, metrics: WorkerMetrics) -> None:
        handlers = {key: functools.partial(apply, state) for key, apply in spec.apply.items()}
        self.sync = ShadowSync(client.shadow(), handlers=handlers)
        self.sync.reported = spec.reported(state)
        self.client = client
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn(self._start())

    async def _start(self) -> None:
        await self.client.wait_connected()
        await self.sync.start()

    def report(self, values: Mapping[str, Any]) -> None:
        self._spawn(self.sync.report(values))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.metrics.errors[f"shadow: {type(exc).__name__}"] += 1

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sync.stop()
        for key in ("applied", "stale_dropped", "report_failures", "resyncs"):
            self.metrics.shadow[key] += getattr(self.sync, key)


class _DevicePlan:
    """One device's tasks in simulated time: which is due next, and what it sends."""

    def __init__(
        self,
        device: SimDevice,
        client: DeviceClient,
        spec: WorkerSpec,
        metrics: WorkerMetrics,
        *,
        origin: float,
    ) -> None:
        self.device = device
        self.client = client
        self.spec = spec
        self.metrics = metrics
        self.shadow: _DeviceShadow | None = None
        self.rng = random.Random(device.seed)
        self.kind = DEVICE_TYPES[device.device_type]
        self.state = self.kind.new_state(device, self.rng)
        self.origin = origin  # loop time when this device's simulated clock started
        self.due = [task.next_gap(self.rng) * self.rng.random() for task in self.kind.tasks]  # random phase
        self.active = True

    def next_at(self) -> float:
        """Loop time of the next task."""
        return self.origin + min(self.due) / self.spec.speed

    def fire(self) -> None:
        """Run the task that is due: build its payload and queue it (or report it to the shadow)."""
        index = min(range(len(self.due)), key=self.due.__getitem__)
        task = self.kind.tasks[index]
        now = self.spec.start_at + self.due[index]
        self.due[index] += task.next_gap(self.rng)
        payload = task.build(self.state, self.rng, now)
        if payload is None:
            return
        if task.to_shadow:
            if self.shadow is not None:
                self.shadow.report(payload)
            return
        metrics = self.metrics
        try:
            self.client.enqueue(task.stream, payload).add_done_callback(_consume)
        except ClientError as exc:
            metrics.errors[f"enqueue: {type(exc).__name__}"] += 1
            return
        metrics.sent += 1
        thing = self.device.thing
        metrics.sent_by_device[thing] = metrics.sent_by_device.get(thing, 0) + 1


class _Pacer:
    """One timer for all of a worker's devices: a heap of their next tasks, fired when due.

    One sleeping coroutine instead of one timer and one wait task per device per message (what a
    per-device loop costs), so a large, mostly idle fleet costs little CPU. With ``rate`` (this worker's
    share of the account-wide publish quota) a token bucket with 0.1 s of burst holds tasks back, late
    rather than dropped; ``waits`` counts how often it did.
    """

    def __init__(self, rate: float | None = None) -> None:
        self._heap: list[tuple[float, int, _DevicePlan]] = []
        self._order = itertools.count()
        self._wake: asyncio.Future[None] | None = None
        self._stopped = False
        self.rate = rate
        self._bucket = None if rate is None else TokenBucket(rate, capacity=max(1.0, rate / 10))
        self.waits = 0

    def add(self, plan: _DevicePlan) -> None:
        at = plan.next_at()
        heapq.heappush(self._heap, (at, next(self._order), plan))
        if self._heap[0][2] is plan:
            self._poke()

    def stop(self) -> None:
        self._stopped = True
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            now = loop.time()
            wake_at = None
            while self._heap and self._heap[0][0] <= now:
                wait = 0.0 if self._bucket is None else self._bucket.acquire(now)
                if wait > 0:
                    self.waits += 1
                    wake_at = now + wait
                    break
                _, _, plan = heapq.heappop(self._heap)
                if plan.active:
                    try:
                        plan.fire()
                    except Exception as exc:  # a device type's bug: counted and logged, the fleet goes on
                        plan.metrics.errors[f"task: {type(exc).__name__}"] += 1
                        log.exception("%s: a task failed", plan.device.thing)
                    heapq.heappush(self._heap, (plan.next_at(), next(self._order), plan))
            self._wake = loop.create_future()
            if wake_at is None and self._heap:
                wake_at = self._heap[0][0]
            timer = loop.call_at(wake_at, self._poke) if wake_at is not None else None
            try:
                await self._wake
            finally:
                if timer is not None:
                    timer.cancel()


@dataclass
class _Worker:
    """What every device of one worker shares."""

    spec: WorkerSpec
    metrics: WorkerMetrics
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    clients: list[DeviceClient] = field(default_factory=list)
    pacer: _Pacer = field(default_factory=_Pacer)


async def _run_device(device: SimDevice, worker: _Worker) -> None:
    spec, metrics = worker.spec, worker.metrics
    try:
        identity = await _identity(device, spec, metrics)
    except IotFleetError as exc:
        metrics.errors[f"provision: {type(exc).__name__}"] += 1
        log.warning("%s: provisioning failed: %s", device.thing, exc)
        return
    client = DeviceClient(
        identity=identity,
        endpoints=spec.endpoints,
        tenant=device.tenant,
        site=device.site,
        transport=spec.transport,
        reconnect=spec.reconnect,
        limits=spec.limits,
        listeners=[metrics.on_event],
        connect_wait_s=0,
        drain_on_close_s=spec.drain_s,
    )
    worker.clients.append(client)
    metrics.started += 1
    async with client:
        kind = DEVICE_TYPES[device.device_type]
        plan = _DevicePlan(device, client, spec, metrics, origin=asyncio.get_running_loop().time())
        if spec.shadow and kind.shadow is not None:
            plan.shadow = _DeviceShadow(client, kind.shadow, plan.state, metrics)
        worker.pacer.add(plan)
        await worker.stopping.wait()
        plan.active = False
        if plan.shadow is not None:
            await plan.shadow.stop()
        await client.close(spec.drain_s)


def _consume(future: asyncio.Future[Any]) -> None:
    """Receipts are counted by the PublishAcked/PublishFailed events; retrieve the outcome so none is logged."""
    if not future.cancelled():
        future.exception()


async def _worker(
    spec: WorkerSpec, results: multiprocessing.Queue[Any], stop: MpEvent, parent: int | None = None
) -> WorkerMetrics:
    worker = _Worker(spec, WorkerMetrics(devices=len(spec.devices)), pacer=_Pacer(spec.publish_rate))
    metrics, stopping = worker.metrics, worker.stopping
    loop = asyncio.get_running_loop()
    deadline = None if spec.duration_s is None else loop.time() + spec.duration_s

    steady: list[float] = []  # (cpu, wall) when the whole fleet of this worker runs

    async def watch() -> None:
        while not stopping.is_set():
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            if not steady and ramped.is_set() and loop.time() >= ramped_at[0] + 2.0:
                steady.extend((time.process_time(), loop.time()))
            metrics.outbox_depth = sum(len(c.outbox) for c in worker.clients)
            results.put(("snapshot", spec.index, metrics.snapshot()))
            if stop.is_set() or (deadline is not None and loop.time() >= deadline):
                stopping.set()
            if parent is not None and os.getppid() != parent:
                log.error("worker %d: the parent process is gone; exiting", spec.index)
                os._exit(1)  # nobody reads the results; draining would only keep the devices running

    ramped = asyncio.Event()
    ramped_at = [0.0]
    watcher = loop.create_task(watch())
    pacing = loop.create_task(worker.pacer.run())
    runs = []
    gap = 1.0 / spec.ramp_per_s if spec.ramp_per_s > 0 else 0.0
    for device in spec.devices:
        if stopping.is_set():
            break
        runs.append(loop.create_task(_run_device(device, worker)))
        if gap:
            await asyncio.sleep(gap)
    ramped_at[0] = loop.time()
    ramped.set()
    await stopping.wait()
    worker.pacer.stop()
    if steady:
        metrics.steady_cpu_s = time.process_time() - steady[0]
        metrics.steady_wall_s = loop.time() - steady[1]
    await asyncio.gather(*runs, return_exceptions=False)
    await watcher
    await pacing
    metrics.account_rate_waits = worker.pacer.waits
    metrics.outbox_depth = sum(len(c.outbox) for c in worker.clients)
    return metrics


# --------------------------------------------------------------------------- the parent side


def run_workers(  # noqa: PLR0912 - one loop reading one queue; each branch is one message kind
    specs: Sequence[WorkerSpec],
    stop: MpEvent,
    on_snapshot: Any,
    on_tick: Any,
    timeout_s: float | None,
) -> list[WorkerMetrics]:
    """Start one spawned process per spec, feed snapshots to ``on_snapshot(index, dict)``, call
    ``on_tick()`` about every 0.2 s (chaos, live view), and return every worker's final metrics."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[Any] = context.Queue()
    processes = [
        context.Process(target=_worker_entry, args=(spec, results, stop), name=f"iotfleet-worker-{spec.index}")
        for spec in specs
    ]
    with _signals_blocked():  # inherited through the exec: a Ctrl-C cannot kill a worker while it starts
        for process in processes:
            process.start()
    finals: dict[int, WorkerMetrics] = {}
    failures: list[str] = []
    started = time.monotonic()
    try:
        while len(finals) + len(failures) < len(processes):
            on_tick()
            try:
                kind, index, body = results.get(timeout=0.2)
            except queue.Empty:
                if all(not p.is_alive() for p in processes):
                    try:  # a last message may still be in the pipe
                        kind, index, body = results.get(timeout=1.0)
                    except queue.Empty:
                        failures.append("a worker process exited without reporting")
                        break
                elif timeout_s is not None and time.monotonic() - started > timeout_s:
                    stop.set()
                    failures.append(f"workers did not finish within {timeout_s:.0f}s")
                    break
                else:
                    continue
            if kind == "snapshot":
                on_snapshot(index, body)
            elif kind == "final":
                finals[index] = body
            else:
                failures.append(f"worker {index}: {body}")
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()  # by its own PID; never by name
                process.join(timeout=5)
        results.close()
    if failures:
        raise IotFleetError("; ".join(failures))
    return [finals[i] for i in sorted(finals)]


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread; one that arrives meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _LEFT_TO_PARENT)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)
