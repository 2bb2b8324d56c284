"""A luminaire that keeps its dim level in sync with its shadow while an operator changes it.

    iotfleet cloud up --json --thing lamp-1 > cloud.json &
    python examples/luminaire_shadow.py cloud.json

The lamp reports its dim level; an operator sets a desired level; the lamp's handler applies it and
reports what the hardware really did (it clamps to 0-100, so a desired 120 leaves a delta of 120 while
100 is reported). The reported state is kept in a file, so a restarted lamp republishes it. The
operator's requests go through the lamp's own connection here; any client allowed to update the shadow
(the AWS console, a backend) does the same.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from iotfleet import DeviceClient
from iotfleet.cloud import CloudInfo
from iotfleet.shadow.client import Shadow, ShadowSync


class Luminaire:
    def __init__(self) -> None:
        self.dim = 100

    def set_dim(self, level: int) -> int:
        self.dim = max(0, min(100, int(level)))  # the hardware clamps: report what it really does
        print(f"  lamp: dim set to {self.dim}")
        return self.dim


async def main(info_file: Path) -> None:
    cloud = CloudInfo.load(info_file)
    identity, thing = cloud.identity()
    lamp = Luminaire()
    state_file = Path(tempfile.mkdtemp()) / f"{identity.thing_name}.shadow.json"
    async with DeviceClient(
        identity=identity, endpoints=cloud.endpoints, tenant=thing.tenant, site=thing.site
    ) as device:
        shadow = Shadow(device)  # build it once: each Shadow subscribes to its topics
        sync = ShadowSync(shadow, handlers={"dim": lamp.set_dim}, state_file=state_file)
        await sync.start()
        await shadow.update(reported={"dim": lamp.dim})
        print(f"reported dim {lamp.dim}")
        # The operator's side: any client allowed to update the shadow. Here the device's own connection
        # stands in, asking for levels the lamp then applies through its handler.
        for level in (40, 75, 120):
            print(f"operator: desired dim {level}")
            await shadow.update(desired={"dim": level})
            for _ in range(100):
                doc = await shadow.get()
                if (doc.state.reported or {}).get("dim") == min(level, 100):
                    break
                await asyncio.sleep(0.05)
            print(f"shadow: desired {doc.state.desired} reported {doc.state.reported} delta {doc.state.delta}")
        await sync.stop()
    print(f"saved state: {json.loads(state_file.read_text())}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
