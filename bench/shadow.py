"""Shadow update round trips per second and latency, 1,000 devices against the local shadow service.

After one unmeasured warm-up round (the shadow client's SUBSCRIBEs), each device does ``--rounds``
sequential ``shadow.update(reported=...)`` calls (publish to
``/update``, wait for ``/update/accepted`` with its clientToken). The baseline, same devices in the same
run: sequential QoS 1 publishes to the device's own data topic (publish, wait for the PUBACK), i.e. one
broker round trip with no service behind it. Devices, broker and shadow service share the two cores.

    python bench/shadow.py [--devices 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from iotfleet import DeviceClient, PublishLimits, ReconnectPolicy, Shadow
from iotfleet.cloud.broker import Quotas  # the benches measure speed, beyond IoT Core's quotas
from iotfleet.cloud.local import LocalCloud, ThingSpec
from iotfleet.transport.crt import CrtRuntime, CrtTransport


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def measure(
    devices: list[DeviceClient], rounds: int, op: Callable[[DeviceClient, int], Awaitable[object]]
) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def one(device: DeviceClient) -> None:
        for i in range(rounds):
            started = time.perf_counter()
            await op(device, i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(d) for d in devices))
    return len(latencies) / (time.perf_counter() - started), latencies


async def run(cloud: LocalCloud, count: int, rounds: int) -> None:
    identities = cloud.register_things([ThingSpec(f"lamp-{i:05d}", "bench", "hq") for i in range(count)])
    transport = CrtTransport(CrtRuntime())
    devices = [
        DeviceClient(
            identity=ident,
            endpoints=cloud.endpoints,
            tenant="bench",
            site="hq",
            transport=transport,
            reconnect=ReconnectPolicy(connect_timeout_s=30),
            limits=PublishLimits(enabled=False),
            connect_wait_s=120,
        )
        for ident in identities
    ]
    await asyncio.gather(*(d.__aenter__() for d in devices))
    shadows = {d: Shadow(d) for d in devices}
    cases: dict[str, Callable[[DeviceClient, int], Awaitable[object]]] = {
        "baseline: QoS 1 publish round trip": lambda d, i: d.publish("telemetry", b'{"dim": %d}' % i),
        "shadow update round trip": lambda d, i: shadows[d].update(reported={"dim": i}, timeout=60),
    }
    for name, op in cases.items():
        await measure(devices, 1, op)  # warm-up, not measured: subscriptions, topic caches
        rate, latencies = await measure(devices, rounds, op)
        ms = [x * 1000 for x in latencies]
        print(
            f"{name:<36} {rate:>7.0f}/s  p50 {percentile(ms, 50):6.1f} ms  p99 {percentile(ms, 99):7.1f} ms  "
            f"max {max(ms):7.1f} ms  ({len(ms)} round trips)"
        )
    await asyncio.gather(*(d.close() for d in devices))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"machine: {platform.machine()} cores={os.cpu_count()} python={platform.python_version()}")
    print(f"{args.devices} devices, mTLS, one region, {args.rounds} sequential round trips per device")
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCloud(["bench-1"], workdir=Path(tmp) / "cloud", quotas=Quotas.none()) as cloud,
    ):
        asyncio.run(run(cloud, args.devices, args.rounds))
        service = cloud.region("bench-1").shadow_service
        if service is not None:
            print(f"shadow service: {service.requests} requests, rejected by code {dict(service.rejected)}")


if __name__ == "__main__":
    main()
