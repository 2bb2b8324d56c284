"""A regional-failover integration test, written the way a user of iotfleet would write their own.

    pip install iotfleet            # the pytest plugin comes with it
    pytest examples/test_regional_failover.py

The fixtures come from the ``iotfleet.testing`` plugin: ``local_cloud`` (two regions on loopback),
``provisioned_device`` (a device provisioned by claim, as in the field) and ``region_faults``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from iotfleet import DeviceClient
from iotfleet.cloud import LocalCloud
from iotfleet.config import Identity
from iotfleet.device.events import DeviceEvent, FailedOver
from iotfleet.testing import LOCAL_FAST, RegionFaults  # LOCAL_FAST: seconds instead of IoT Core's minutes


def test_a_lamp_keeps_publishing_through_a_regional_outage(
    local_cloud: LocalCloud, provisioned_device: Callable[..., Awaitable[Identity]], region_faults: RegionFaults
) -> None:
    async def scenario() -> tuple[list[str], list[FailedOver]]:
        identity = await provisioned_device("lamp-0001", tenant="acme", site="hq")
        moves: list[FailedOver] = []

        def watch(event: DeviceEvent) -> None:
            if isinstance(event, FailedOver):
                moves.append(event)

        acked_by: list[str] = []
        async with DeviceClient(
            identity=identity,
            endpoints=local_cloud.endpoints,
            tenant="acme",
            site="hq",
            reconnect=LOCAL_FAST,
            listeners=[watch],
        ) as lamp:
            acked_by.append((await lamp.publish("telemetry", {"power_w": 12.0})).endpoint.region)
            with region_faults.outage("eu-west-1", mode="blackhole"):
                acked_by.append((await lamp.publish("telemetry", {"power_w": 12.5}, timeout=30)).endpoint.region)
            for _ in range(100):  # the preferred region is back: the lamp fails back to it
                if moves and moves[-1].failback:
                    break
                await asyncio.sleep(0.1)
            acked_by.append((await lamp.publish("telemetry", {"power_w": 13.0}, timeout=30)).endpoint.region)
        return acked_by, moves

    acked_by, moves = asyncio.run(scenario())
    assert acked_by == ["eu-west-1", "us-east-1", "eu-west-1"]
    assert [(m.from_endpoint.region, m.to_endpoint.region, m.failback) for m in moves] == [
        ("eu-west-1", "us-east-1", False),
        ("us-east-1", "eu-west-1", True),
    ]
