"""Watch a lamp fail over when its region dies, and fail back when it returns.

    iotfleet cloud up --json --thing lamp-1 > cloud.json &
    python examples/failover.py cloud.json

The lamp publishes twice a second. The script kills the preferred region through the running cloud's
control socket (what 'iotfleet cloud chaos kill eu-west-1 --workdir DIR' does), keeps publishing, then
restores it. Nothing is lost: messages sent while no region was reachable wait in the outbox.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from iotfleet import DeviceClient, DeviceEvent, EventKind, ReconnectPolicy
from iotfleet.cloud import CloudInfo
from iotfleet.cloud.control import send

# Seconds instead of IoT Core's minutes, so the walk-through takes a few seconds.
POLICY = ReconnectPolicy(
    keepalive_s=5,
    ping_timeout_s=2,
    connect_timeout_s=2,
    min_backoff_s=0.1,
    max_backoff_s=1,
    failover_after_failures=2,
    failback_probe_s=1,
)


def show(event: DeviceEvent) -> None:
    if event.kind is EventKind.FAILED_OVER:
        verb = "failed back" if event.failback else "failed over"
        print(f"  {event.thing} {verb}: {event.from_endpoint.region} -> {event.to_endpoint.region}")
    elif event.kind is EventKind.DISCONNECTED:
        print(f"  {event.thing} lost {event.endpoint.region}: {event.reason}")


async def main(info_file: Path) -> None:
    cloud = CloudInfo.load(info_file)
    identity, thing = cloud.identity()
    primary = cloud.endpoints[0].region
    async with DeviceClient(
        identity=identity,
        endpoints=cloud.endpoints,
        tenant=thing.tenant,
        site=thing.site,
        reconnect=POLICY,
        listeners=[show],
    ) as lamp:

        async def publish(seconds: float) -> set[str]:
            regions = set()
            for n in range(int(seconds * 2)):
                regions.add((await lamp.publish("telemetry", {"n": n})).endpoint.region)
                await asyncio.sleep(0.5)
            return regions

        print(f"publishing via {sorted(await publish(1))}")
        print(f"killing {primary}: {await asyncio.to_thread(send, cloud.workdir, 'kill', primary)}")
        print(f"publishing via {sorted(await publish(2))}")
        print(f"restoring {primary}: {await asyncio.to_thread(send, cloud.workdir, 'restore', primary)}")
        await asyncio.sleep(2)
        print(f"publishing via {sorted(await publish(1))}")
        print(f"acked {lamp.counters.acked} of {lamp.counters.enqueued}, failovers {lamp.counters.failovers}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
