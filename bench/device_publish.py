"""Acked QoS 1 publishes per CPU-second: DeviceClient (memory outbox) against a raw awscrt MQTT5 loop.

Same run, same broker (one local-cloud region, mTLS), same clients (each its own certificate), same
payload and the same in-flight window per client. CPU is this process's user+system time (every
thread: the CRT's and the event loop's), so the broker's share is excluded; the budget in DESIGN.md
is DeviceClient >= 0.8 x raw.

Two baselines, both raw awscrt with no iotfleet code:

- ``raw awscrt (callbacks)``: the CRT ceiling. The PUBACK callback, on a CRT thread, publishes the next
  message straight away; no event loop, no outbox, nothing to tell the application.
- ``raw awscrt (asyncio)``: what an asyncio application does with awscrt directly: per client a task
  that keeps ``window`` publishes in flight with ``await asyncio.wrap_future(client.publish(...))``.

DeviceClient adds the outbox, ordering, per-message ids, events and receipts on top of the second, and is
driven the same way: ``window`` tasks per client, each awaiting ``device.publish(...)`` in turn.

    python bench/device_publish.py [--clients 1000] [--messages 100000] [--window 10] [--rounds 2] [--quotas]
                                   [--gc default|settled]

The closed loop publishes far beyond IoT Core's quotas (100 publishes/s per connection, 20,000/s per
account), so the region's quotas are lifted (``Quotas.none()``). ``--quotas`` runs the quota engine with
rates no run reaches: every check is made and none refuses, which measures what the checks cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from awscrt import io, mqtt5

from iotfleet import DeviceClient, Identity, PublishLimits, ReconnectPolicy, settle_heap
from iotfleet.cloud.broker import Quotas
from iotfleet.cloud.local import LocalCloud, ThingSpec
from iotfleet.config import Endpoint
from iotfleet.transport.crt import CrtRuntime, CrtTransport

PAYLOAD = b'{"power_w":12.5,"dim":80,"lux":412,"occupied":true,"temp_c":21.4}' * 3


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of another process, e.g. the region's mosquitto."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name (Linux /proc), to see where a phase spent its time."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_split(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {after[k] - before.get(k, 0):.2f}" for k in sorted(after) if after[k] - before.get(k, 0) > 0.05
    )


class CollectorClock:
    """The cyclic collector's work during a phase, per generation: collections, and the CPU seconds of the
    thread that ran each (``time.thread_time``: a collection runs on the thread whose allocation set it off,
    so this is its CPU, not wall time that includes being descheduled)."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started: float | None = None

    def __enter__(self) -> CollectorClock:
        gc.callbacks.append(self._tick)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._tick)

    def _tick(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        elif self._started is not None:  # a "stop" whose "start" came before the clock: not this phase's
            generation = info["generation"]
            self.runs[generation] += 1
            self.seconds[generation] += time.thread_time() - self._started
            self._started = None

    def __str__(self) -> str:
        return ", ".join(
            f"gen{g} {n} ({s:.2f} CPU-s)" for g, (n, s) in enumerate(zip(self.runs, self.seconds, strict=True))
        )


class Phase:
    """Measures one phase: CPU seconds of this process, wall seconds, the CPU split by thread, and what the
    cyclic collector did (collections and their CPU seconds per generation, timed by ``gc.callbacks``).

    With ``--gc settled`` every row calls :func:`iotfleet.settle_heap` first (its clients are connected by
    then), as an application with many clients in one process would; ``--gc default`` leaves CPython's
    collector as it is.
    """

    settle = False

    def __enter__(self) -> Phase:
        if Phase.settle:
            settle_heap()
        self.cpu0, self.wall0, self.threads0 = cpu(), time.perf_counter(), thread_cpu()
        self.collector = CollectorClock().__enter__()  # last: nothing after it can fail and leave it registered
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu, self.wall = cpu() - self.cpu0, time.perf_counter() - self.wall0
        self.collector.__exit__()
        print("   threads:", cpu_split(self.threads0, thread_cpu()))
        print("   collector:", self.collector)


def lanes(per_client: int, window: int) -> list[int]:
    """How many messages each of a client's ``window`` concurrent lanes sends."""
    return [per_client // window + (1 if i < per_client % window else 0) for i in range(window)]


def wait_idle(quiet_s: float = 0.5, limit_s: float = 30.0) -> None:
    """Wait until this process is idle (under 2% of a core over ``quiet_s``), so that one run's teardown
    (a thousand clients disconnecting on the CRT threads) is not charged to the next run's phase."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu()
        time.sleep(quiet_s)
        if cpu() - before < 0.02 * quiet_s:
            return
    print(f"   (the process was still busy {limit_s:.0f} s after the run; the next phase may carry its tail)")


def stop_all(clients: list[mqtt5.Client], stopped: threading.Semaphore, limit_s: float = 60.0) -> None:
    """Stop every client and wait (``limit_s`` in all) for each one's "stopped" lifecycle event."""
    for client in clients:
        client.stop()
    deadline = time.monotonic() + limit_s
    waiting = len(clients)
    while waiting and stopped.acquire(timeout=max(0.0, deadline - time.monotonic())):
        waiting -= 1
    if waiting:
        print(f"   ({waiting} clients had not stopped after {limit_s:.0f} s; the next phase may carry their tail)")


def raw_client(
    endpoint: Endpoint, identity: Identity, runtime: CrtRuntime, on_connected: object, on_stopped: object
) -> mqtt5.Client:
    """A started awscrt MQTT5 client with the identity's mTLS credentials and no iotfleet code."""
    opts = io.TlsContextOptions.create_client_with_mtls_from_path(str(identity.cert_file), str(identity.key_file))
    opts.override_default_trust_store_from_path(None, str(identity.ca_file))
    client = mqtt5.Client(
        mqtt5.ClientOptions(
            host_name=endpoint.host,
            port=endpoint.port,
            bootstrap=runtime.bootstrap,
            tls_ctx=io.ClientTlsContext(opts),
            connect_options=mqtt5.ConnectPacket(client_id=identity.thing_name, keep_alive_interval_sec=1200),
            extended_validation_and_flow_control_options=mqtt5.ExtendedValidationAndFlowControlOptions.NONE,
            on_lifecycle_event_connection_success_fn=on_connected,
            on_lifecycle_event_stopped_fn=on_stopped,
        )
    )
    client.start()
    return client


def raw_crt(endpoint: Endpoint, things: list[tuple[Identity, str]], total: int, window: int) -> tuple[float, float]:
    """Connect every client, then publish ``total`` messages, ``window`` in flight per client."""
    runtime = CrtRuntime.shared()
    per_client = total // len(things)
    done = threading.Event()
    lock = threading.Lock()
    remaining = [per_client * len(things)]
    refused = [0]
    connected = threading.Semaphore(0)
    stopped = threading.Semaphore(0)
    clients: list[mqtt5.Client] = []

    for identity, _topic in things:
        clients.append(
            raw_client(endpoint, identity, runtime, lambda _d: connected.release(), lambda _d: stopped.release())
        )

    for _ in clients:
        connected.acquire(timeout=60)

    def pump(client: mqtt5.Client, topic: str, left: list[int]) -> None:
        def on_ack(future: Any) -> None:
            puback = future.result().puback
            with lock:
                remaining[0] -= 1
                if puback is None or puback.reason_code >= 0x80:
                    refused[0] += 1
                if remaining[0] == 0:
                    done.set()
            if left[0] > 0:
                left[0] -= 1
                client.publish(
                    mqtt5.PublishPacket(topic=topic, payload=PAYLOAD, qos=mqtt5.QoS.AT_LEAST_ONCE)
                ).add_done_callback(on_ack)

        for _ in range(min(window, left[0])):
            left[0] -= 1
            client.publish(
                mqtt5.PublishPacket(topic=topic, payload=PAYLOAD, qos=mqtt5.QoS.AT_LEAST_ONCE)
            ).add_done_callback(on_ack)

    with Phase() as phase:
        for client, (_, topic) in zip(clients, things, strict=True):
            pump(client, topic, [per_client])
        done.wait(timeout=600)
    stop_all(clients, stopped)
    if refused[0]:
        raise SystemExit(f"{refused[0]} publishes were refused: the bench measures accepted messages only")
    return phase.cpu, phase.wall


async def raw_asyncio(
    endpoint: Endpoint, things: list[tuple[Identity, str]], total: int, window: int
) -> tuple[float, float]:
    """awscrt used directly from asyncio: wrap_future per publish, ``window`` in flight per client."""
    runtime = CrtRuntime.shared()
    per_client = total // len(things)
    loop = asyncio.get_running_loop()
    clients: list[mqtt5.Client] = []
    stopped = threading.Semaphore(0)
    connected: list[asyncio.Future[None]] = []
    for identity, _ in things:
        fut: asyncio.Future[None] = loop.create_future()
        connected.append(fut)
        clients.append(
            raw_client(
                endpoint,
                identity,
                runtime,
                lambda _d, f=fut: loop.call_soon_threadsafe(f.set_result, None),
                lambda _d: stopped.release(),
            )
        )
    await asyncio.gather(*connected)

    async def lane(client: mqtt5.Client, topic: str, count: int) -> None:
        for _ in range(count):
            packet = mqtt5.PublishPacket(topic=topic, payload=PAYLOAD, qos=mqtt5.QoS.AT_LEAST_ONCE)
            await asyncio.wrap_future(client.publish(packet))

    with Phase() as phase:
        clients_topics = zip(clients, things, strict=True)
        await asyncio.gather(*(lane(c, t, n) for c, (_, t) in clients_topics for n in lanes(per_client, window)))
    await asyncio.to_thread(stop_all, clients, stopped)
    return phase.cpu, phase.wall


async def device_clients(
    endpoint: Endpoint, things: list[tuple[Identity, str]], total: int, window: int
) -> tuple[float, float]:
    transport = CrtTransport(CrtRuntime.shared())
    per_client = total // len(things)
    devices = [
        DeviceClient(
            identity=identity,
            endpoints=[endpoint],
            tenant="bench",
            site="hq",
            transport=transport,
            reconnect=ReconnectPolicy(connect_timeout_s=30),
            limits=PublishLimits(enabled=False, max_inflight=window),
            connect_wait_s=120,
        )
        for identity, _ in things
    ]
    await asyncio.gather(*(d.__aenter__() for d in devices))

    async def lane(device: DeviceClient, count: int) -> None:
        for _ in range(count):
            await device.publish("telemetry", PAYLOAD)

    with Phase() as phase:
        await asyncio.gather(*(lane(d, n) for d in devices for n in lanes(per_client, window)))
    assert sum(d.counters.acked for d in devices) == per_client * len(devices)
    await asyncio.gather(*(d.close() for d in devices))
    return phase.cpu, phase.wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quotas", action="store_true", help="check quotas (rates no run reaches)")
    parser.add_argument(
        "--gc",
        choices=("default", "settled"),
        default="default",
        help="the cyclic collector: CPython's defaults, or iotfleet.settle_heap() before each row's phase",
    )
    args = parser.parse_args()
    quotas = Quotas(1e9, 1e9, 1e9, 1e12) if args.quotas else Quotas.none()
    Phase.settle = args.gc == "settled"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    total = args.messages - args.messages % args.clients
    print(f"machine: {platform.machine()} cores={os.cpu_count()} python={platform.python_version()}")
    print(f"{args.clients} clients, mTLS, QoS 1, {len(PAYLOAD)}-byte payload, window {args.window}, {total} messages")
    print(f"quotas: {quotas}; collector: {args.gc}")
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCloud(["bench-1"], workdir=Path(tmp) / "cloud", quotas=quotas) as cloud,
    ):
        ids = cloud.register_things([ThingSpec(f"bench-{i:05d}", "bench", "hq") for i in range(args.clients)])
        things = [(i, f"dt/bench/hq/{i.thing_name}/telemetry") for i in ids]
        endpoint = cloud.endpoints[0]
        broker_pid = cloud.region("bench-1").broker.pid
        assert broker_pid is not None
        runs = {
            "raw awscrt (callbacks)": lambda: raw_crt(endpoint, things, total, args.window),
            "raw awscrt (asyncio)": lambda: asyncio.run(raw_asyncio(endpoint, things, total, args.window)),
            "DeviceClient": lambda: asyncio.run(device_clients(endpoint, things, total, args.window)),
        }
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for round_no in range(1, args.rounds + 1):
            for name, run in runs.items():
                wait_idle()
                broker_before = process_cpu(broker_pid)
                used, wall = run()
                broker = process_cpu(broker_pid) - broker_before  # connects included: the same in every run
                rates[name].append(total / used)
                print(
                    f"round {round_no} {name:<23} {total / used:>7.0f} msg/CPU-s {total / wall:>7.0f} msg/s wall"
                    f"  ({used:.2f} CPU-s, {wall:.2f} s; broker {broker:.2f} CPU-s, {broker / total * 1e6:.1f} µs/msg)"
                )
        mean = {name: sum(r) / len(r) for name, r in rates.items()}
        for name, rate in mean.items():
            print(f"mean {name:<23} {rate:>7.0f} msg/CPU-s")
        dev = mean["DeviceClient"]
        print(
            f"DeviceClient / raw (callbacks) = {dev / mean['raw awscrt (callbacks)']:.2f}; "
            f"DeviceClient / raw (asyncio) = {dev / mean['raw awscrt (asyncio)']:.2f}  (budget >= 0.8)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    main()
