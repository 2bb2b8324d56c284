"""The same as publish_async.py for a plain script: no asyncio in sight.

iotfleet cloud up --json --thing lamp-1 > cloud.json &
python examples/publish_blocking.py cloud.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from iotfleet import BlockingDeviceClient
from iotfleet.cloud import CloudInfo


def main(info_file: Path) -> None:
    cloud = CloudInfo.load(info_file)
    identity, thing = cloud.identity()
    with BlockingDeviceClient(
        identity=identity, endpoints=cloud.endpoints, tenant=thing.tenant, site=thing.site
    ) as lamp:
        for n in range(5):
            receipt = lamp.publish("telemetry", {"n": n, "power_w": 11.5 + n, "dim": 80})
            print(f"{receipt.topic} seq={receipt.seq} acked by {receipt.endpoint.region}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
