"""A device process killed with SIGKILL mid-stream resends everything unacknowledged when restarted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from tests.conftest import TEST_QUOTAS, Watcher

pytestmark = pytest.mark.integration

DEVICE = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from iotfleet import DeviceClient, Endpoint, Identity, OutboxPolicy, PublishLimits
    from iotfleet.config import LOCAL_FAST

    args = json.loads(sys.argv[1])
    identity = Identity(**args["identity"])
    endpoints = [Endpoint(**e) for e in args["endpoints"]]
    # one region: the device waits for it to come back instead of failing over
    policy = LOCAL_FAST.model_copy(update={"failover_after_failures": 100, "failover_after_s": 1000})

    async def main() -> None:
        async with DeviceClient(identity=identity, endpoints=endpoints, tenant="acme", site="hq", reconnect=policy,
                                outbox=OutboxPolicy(path=Path(args["outbox"])), limits=PublishLimits(enabled=False),
                                connect_wait_s=0, drain_on_close_s=30) as device:
            for i in range(args["count"]):
                device.enqueue("power", json.dumps({"n": i}).encode())
            print(f"queued {len(device.outbox)}", flush=True)
            if args["then"] == "wait":
                await asyncio.sleep(3600)  # killed here
            await device.flush(timeout=30)
            print(f"flushed, outbox {len(device.outbox)}, resent {device.counters.sent}", flush=True)

    asyncio.run(main())
    """
)


def run_device(cloud: LocalCloud, lamp: Identity, outbox: Path, count: int, then: str) -> subprocess.Popen[str]:
    args = {
        "identity": lamp.model_dump(mode="json"),
        "endpoints": [e.model_dump() for e in cloud.endpoints],
        "outbox": str(outbox),
        "count": count,
        "then": then,
    }
    return subprocess.Popen([sys.executable, "-c", DEVICE, json.dumps(args)], stdout=subprocess.PIPE, text=True)


def pending_ids(outbox: Path) -> set[str]:
    with sqlite3.connect(outbox) as db:
        return {row[0] for row in db.execute("SELECT message_id FROM outbox")}


def test_sigkilled_device_resends_everything_unacknowledged(tmp_path: Path) -> None:
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", quotas=TEST_QUOTAS) as cloud:
        lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
        region = cloud.region("eu-west-1")
        outbox = tmp_path / "outbox.sqlite"

        region.blackhole()  # nothing gets acknowledged while the first process runs
        with run_device(cloud, lamp, outbox, 500, then="wait") as first:
            assert first.stdout is not None
            assert first.stdout.readline().strip() == "queued 500"
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        unacked = pending_ids(outbox)
        assert len(unacked) == 500
        region.restore()

        async def watch_second_run() -> Watcher:
            watcher = await Watcher(cloud).start()
            with run_device(cloud, lamp, outbox, 0, then="flush") as second:
                out, _ = await asyncio.to_thread(second.communicate, timeout=60)
            assert second.returncode == 0, out
            assert "flushed, outbox 0" in out
            await watcher.wait_for(lambda: unacked <= watcher.ids.keys())
            await watcher.close()
            return watcher

        watcher = asyncio.run(watch_second_run())
        assert unacked <= watcher.ids.keys(), f"{len(unacked - watcher.ids.keys())} messages were never resent"
        assert pending_ids(outbox) == set()
        seqs = sorted(int(m.property("iotfleet-seq") or 0) for _, m in watcher.messages)
        assert seqs[:500] == list(range(1, 501))  # replayed in order, numbered as first queued
