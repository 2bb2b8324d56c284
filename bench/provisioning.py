"""Devices fully provisioned per second by claim (CSR + RegisterThing + reconnect), N at a time.

Each device runs :class:`~iotfleet.provisioning.FleetProvisioner` end to end against the local cloud:
connect with the shared claim certificate, CreateCertificateFromCsr (EC P-256 key and CSR made on the
device), RegisterThing with the default template, then connect again with the new identity. ``--concurrency``
devices are in flight at once. Baseline, same run, same concurrency: the two mTLS connections alone
(claim connect + disconnect, then a registered thing's connect + disconnect), i.e. what provisioning
costs before any service work. Devices, broker and services share the two cores.

    python bench/provisioning.py [--devices 1000] [--concurrency 100]
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

from iotfleet.cloud.broker import Quotas  # the benches measure speed, beyond IoT Core's quotas
from iotfleet.cloud.local import DEFAULT_TEMPLATE, LocalCloud, ThingSpec
from iotfleet.config import Identity
from iotfleet.provisioning import FleetProvisioner
from iotfleet.transport.base import ConnectOptions
from iotfleet.transport.crt import CrtRuntime, CrtTransport, skip_system_trust_store


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def measure(count: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(n: int) -> None:
        async with gate:
            started = time.perf_counter()
            await job(n)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    return count / (time.perf_counter() - started), latencies


async def run(cloud: LocalCloud, count: int, concurrency: int) -> None:
    transport = CrtTransport(CrtRuntime())
    endpoint = cloud.endpoints[0]
    claim = cloud.claim_identity
    things = cloud.register_things([ThingSpec(f"base-{n:05d}", "bench", "hq") for n in range(count)])

    async def connect_twice(n: int) -> None:
        for client_id, identity in ((f"claim-{n}", claim), (things[n].thing_name, things[n])):
            session = await transport.connect(endpoint, ConnectOptions(client_id=client_id, identity=identity))
            await session.close()

    async def provision(n: int) -> None:
        provisioner = FleetProvisioner(
            endpoints=[endpoint],
            claim=claim,
            template=DEFAULT_TEMPLATE,
            parameters={"Tenant": "bench", "Site": "hq", "SerialNumber": f"lamp-{n:05d}"},
            transport=transport,
            timeout=60,
        )
        device = await provisioner.provision()
        identity = Identity.from_pem(
            device.thing_name,
            certificate=device.certificate_pem,
            private_key=device.private_key_pem,
            ca=cloud.ca_file.read_bytes(),
            directory=cloud.workdir / "provisioned" / device.thing_name,
        )
        await provisioner.verify(identity, device.endpoint)

    cases = {"baseline: claim connect + device connect": connect_twice, "provision by claim (CSR)": provision}
    for name, job in cases.items():
        rate, latencies = await measure(count, concurrency, job)
        ms = [x * 1000 for x in latencies]
        print(
            f"{name:<42} {rate:>7.0f} devices/s  p50 {percentile(ms, 50):7.1f} ms  "
            f"p99 {percentile(ms, 99):7.1f} ms  ({len(ms)} devices)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--system-trust-store",
        action="store_true",
        help="Let s2n parse the system CA bundle for each new TLS context (the awscrt default).",
    )
    args = parser.parse_args()
    if not args.system_trust_store:
        skip_system_trust_store()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"machine: {platform.machine()} cores={os.cpu_count()} python={platform.python_version()}")
    store = "system CA bundle parsed per TLS context" if args.system_trust_store else "skip_system_trust_store()"
    print(f"{args.devices} devices, {args.concurrency} at a time, two regions (registrations replicate); {store}")
    with tempfile.TemporaryDirectory() as tmp, LocalCloud(workdir=Path(tmp) / "cloud", quotas=Quotas.none()) as cloud:
        asyncio.run(run(cloud, args.devices, args.concurrency))
        service = cloud.region(cloud.endpoints[0].region).provisioning
        if service is not None:
            print(
                f"service: requests {dict(service.requests)}, rejected {dict(service.rejected)}, "
                f"registered {service.registered}"
            )


if __name__ == "__main__":
    main()
