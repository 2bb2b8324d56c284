"""The worker process: one event loop running its share of the fleet, one DeviceClient per device.

It ramps its devices up at ``ramp_per_s``, runs each device's tasks (:mod:`iotfleet.sim.workload`) in
simulated time through one :class:`~iotfleet.sim.runner.pacer.Pacer`, and every second puts a snapshot
of its counters on the results queue. On stop it drains its devices' outboxes (``drain_s``), closes
them and puts its final :class:`~iotfleet.sim.runner.metrics.WorkerMetrics`. It dies with its parent.

A device type with a shadow (:class:`~iotfleet.sim.workload.ShadowSpec`) also runs a
:class:`~iotfleet.shadow.client.ShadowSync`: it reports its state when connected, applies the operator's
desired values from deltas, and resyncs after every new session (so after a failover). Shadow requests
go through the same outbox but are counted apart (``shadow``), never as data messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import random
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from iotfleet._children import become_child
from iotfleet.config import Identity
from iotfleet.device.client import DeviceClient
from iotfleet.device.heap import settle_heap
from iotfleet.errors import ClientError, IotFleetError
from iotfleet.provisioning import FleetProvisioner, IdentityStore
from iotfleet.shadow.client import Shadow, ShadowSync
from iotfleet.sim.fleet import SimDevice, home_first
from iotfleet.sim.ota import run_ota
from iotfleet.sim.runner.messages import WorkerMessage, WorkerSpec
from iotfleet.sim.runner.metrics import WorkerMetrics
from iotfleet.sim.runner.pacer import Pacer
from iotfleet.sim.workload import DEVICE_TYPES, REBOOT, ShadowSpec
from iotfleet.transport.base import InboundMessage, Transport

__all__ = ["worker_entry"]

log = logging.getLogger(__name__)
SNAPSHOT_EVERY_S = 1.0
# How long the CRT's callbacks gather before the loop runs them (bench/BENCHMARKS.md: about an eighth of a
# 2,000-device worker's CPU went to waking the loop once per PUBACK). Ack latencies are measured on the
# CRT's thread, so they do not include it.
CALLBACK_COALESCE_S = 0.005


def worker_entry(spec: WorkerSpec, results: multiprocessing.Queue[Any], stop: MpEvent) -> None:
    from iotfleet.transport.crt import skip_system_trust_store  # noqa: PLC0415 - in the child only

    # Ctrl-C (and `timeout`'s SIGTERM) reach the whole process group: the parent alone decides (it sets
    # `stop`, the workers drain and report). They were blocked while the parent started us.
    parent = become_child()
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
        results.put((WorkerMessage.ERROR, spec.index, f"{type(exc).__name__}: {exc}"))
        raise
    if resource is not None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        metrics.cpu_s = usage.ru_utime + usage.ru_stime
        metrics.max_rss_kb = usage.ru_maxrss
    results.put((WorkerMessage.FINAL, spec.index, metrics))


def _transport(spec: WorkerSpec) -> Transport | str:
    """The worker's own awscrt transport gathers the CRT's callbacks for CALLBACK_COALESCE_S before it wakes
    the loop: thousands of PUBACKs a second then cost a few hundred wakeups, not one each."""
    if spec.transport != "crt":
        return spec.transport
    from iotfleet.transport.crt import CrtTransport  # noqa: PLC0415 - awscrt only when used

    return CrtTransport(coalesce_s=CALLBACK_COALESCE_S)


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
    template = spec.https_template if device.https and spec.https_template else spec.claim.template
    provisioner = FleetProvisioner(
        endpoints=home_first(spec.endpoints, device.home),
        claim=spec.claim.claim,
        template=template,
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
        self.sync = ShadowSync(Shadow(client), handlers=handlers)
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
            self.metrics.error(f"shadow: {type(exc).__name__}")

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
            self.client.queue(task.stream, payload)  # counted by the PublishAcked/PublishFailed events
        except ClientError as exc:
            metrics.error(f"enqueue: {type(exc).__name__}")
            return
        metrics.sent_one(self.device.thing)

    def failed(self, exc: Exception) -> None:
        self.metrics.error(f"task: {type(exc).__name__}")
        log.error("%s: a task failed", self.device.thing, exc_info=exc)


@dataclass
class _Worker:
    """What every device of one worker shares."""

    spec: WorkerSpec
    metrics: WorkerMetrics
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    clients: list[DeviceClient] = field(default_factory=list)
    pacer: Pacer = field(default_factory=Pacer)
    transport: Transport | str = "crt"


async def _run_device(device: SimDevice, worker: _Worker) -> None:
    spec, metrics = worker.spec, worker.metrics
    try:
        identity = await _identity(device, spec, metrics)
    except IotFleetError as exc:
        metrics.error(f"provision: {type(exc).__name__}")
        log.warning("%s: provisioning failed: %s", device.thing, exc)
        return
    metrics.region(device.home)["devices"] += 1
    https = device.https  # a constrained device: HTTPS publish, no MQTT (the endpoints: Simulation checked)
    client = DeviceClient(
        identity=identity,
        endpoints=home_first(spec.https_endpoints if https else spec.endpoints, device.home),
        tenant=device.tenant,
        site=device.site,
        transport="https" if https else worker.transport,
        reconnect=spec.reconnect,
        limits=spec.limits,
        listeners=[metrics.on_event],
        connect_wait_s=0,
        drain_on_close_s=spec.drain_s,
        basic_ingest=spec.basic_ingest,
    )
    worker.clients.append(client)
    metrics.started += 1
    async with client:
        if spec.commands and client.scope is not None and not https:
            command_filter = client.scheme.command_filter(client.scope)
            client.add_message_handler(command_filter, functools.partial(_on_command, client, metrics))
            await client.subscribe(command_filter)  # now if connected, else on the first session
        kind = DEVICE_TYPES[device.device_type]
        plan = _DevicePlan(device, client, spec, metrics, origin=asyncio.get_running_loop().time())
        if spec.shadow and kind.shadow is not None and not https:
            plan.shadow = _DeviceShadow(client, kind.shadow, plan.state, metrics)
        worker.pacer.add(plan)
        ota = None
        if spec.ota is not None and not https and hasattr(plan.state, "firmware"):
            rollout = run_ota(device, client, plan.state, spec.ota, metrics.ota, ca_file=spec.ca_file, speed=spec.speed)
            ota = asyncio.get_running_loop().create_task(rollout)
            ota.add_done_callback(functools.partial(_ota_ended, metrics))
        await worker.stopping.wait()
        plan.active = False
        if ota is not None:
            ota.cancel()
            await asyncio.gather(ota, return_exceptions=True)
        if plan.shadow is not None:
            await plan.shadow.stop()
        await client.close(spec.drain_s)


def _on_command(client: DeviceClient, metrics: WorkerMetrics, message: InboundMessage) -> None:
    """A command from the cloud: counted once by id; a reboot takes the device offline for a while."""
    try:
        body = json.loads(message.payload)
        command_id, command, sent_at_ms = int(body["id"]), str(body["command"]), int(body["sent_at_ms"])
        offline_s = float(body.get("offline_s", 0.0))
    except (ValueError, KeyError, TypeError):
        metrics.error("command: malformed")
        return
    if metrics.on_command(command_id, command, sent_at_ms) and command == REBOOT:
        client.reboot(offline_s)


def _ota_ended(metrics: WorkerMetrics, task: asyncio.Task[None]) -> None:
    """A device's rollout task ends only when the device stops (cancelled); anything else is counted."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        metrics.error(f"ota: {type(exc).__name__}")
        log.error("a device's firmware rollout task failed", exc_info=exc)


async def _worker(
    spec: WorkerSpec, results: multiprocessing.Queue[Any], stop: MpEvent, parent: int | None = None
) -> WorkerMetrics:
    worker = _Worker(
        spec, WorkerMetrics(devices=len(spec.devices)), pacer=Pacer(spec.publish_rate), transport=_transport(spec)
    )
    metrics, stopping = worker.metrics, worker.stopping
    loop = asyncio.get_running_loop()
    deadline = None if spec.duration_s is None else loop.time() + spec.duration_s

    steady: list[float] = []  # (cpu, wall) when the whole fleet of this worker runs

    async def watch() -> None:
        while not stopping.is_set():
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            if not steady and ramped.is_set() and loop.time() >= ramped_at[0] + 2.0:
                settle_heap()  # every device's client exists by now: see its docstring
                steady.extend((time.process_time(), loop.time()))
                metrics.steady_since = time.time()
            metrics.outbox_depth = sum(len(c.outbox) for c in worker.clients)
            results.put((WorkerMessage.SNAPSHOT, spec.index, metrics.snapshot()))
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
        metrics.steady_until = time.time()
    await asyncio.gather(*runs, return_exceptions=False)
    await watcher
    await pacing
    metrics.account_rate_waits = worker.pacer.waits
    metrics.outbox_depth = sum(len(c.outbox) for c in worker.clients)
    return metrics
