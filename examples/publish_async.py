"""Connect a lamp to a running local cloud and publish telemetry, with asyncio.

iotfleet cloud up --json --thing lamp-1 > cloud.json &
python examples/publish_async.py cloud.json
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from iotfleet import DeviceClient
from iotfleet.cloud import CloudInfo


async def main(info_file: Path) -> None:
    cloud = CloudInfo.load(info_file)
    identity, thing = cloud.identity()
    async with DeviceClient(identity=identity, endpoints=cloud.endpoints, tenant=thing.tenant, site=thing.site) as lamp:
        for n in range(5):
            receipt = await lamp.publish("telemetry", {"n": n, "power_w": 11.5 + n, "dim": 80})
            took_ms = receipt.latency_s * 1000
            print(f"{receipt.topic} seq={receipt.seq} acked by {receipt.endpoint.region} in {took_ms:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
