"""Simulator shards as Kubernetes Indexed Job pods, on this machine: N processes with
``JOB_COMPLETION_INDEX`` set drive one running ``iotfleet cloud up``, and their merged report is the
whole run's, counted once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from iotfleet.cloud.control import ControlClient
from tests.conftest import cloud_up

pytestmark = pytest.mark.integration
IOTFLEET = [sys.executable, "-m", "iotfleet"]
SHARDS = 2


def test_shards_against_one_shared_cloud_merge_to_the_whole_run_with_nothing_lost(tmp_path: Path) -> None:
    with cloud_up("--json", "--control", "127.0.0.1:0", "--workdir", str(tmp_path / "cloud")) as cloud:
        assert cloud.stdout is not None
        line = cloud.stdout.readline()
        (tmp_path / "cloud.json").write_text(line)
        start_at = time.time() + 8  # a start barrier: every shard's simulated time starts then
        common = [
            *IOTFLEET, "simulate", "--cloud", str(tmp_path / "cloud.json"),
            *("--sites", "2", "--speed", "20", "--workers", "1"),
            *("--operator-every", "60s", "--operator-fraction", "0.25", "--command-every", "1m"),  # shard 0's
            *("--reboot-share", "0"),
        ]  # fmt: skip
        args = [
            *common, "--shard", f"auto/{SHARDS}", "--duration", "10s", "--start-at", f"{start_at:.3f}",
            *("--chaos", "kill:eu-west-1@3s", "--chaos", "restore:eu-west-1@6s"),  # run by shard 0 only
        ]  # fmt: skip
        shards = [
            subprocess.Popen(
                [*args, "--workdir", str(tmp_path / f"shard-{i}"), "--report", str(tmp_path / f"shard-{i}.json")],
                env={**os.environ, "JOB_COMPLETION_INDEX": str(i)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(SHARDS)
        ]
        try:
            outputs = [shard.communicate(timeout=240) for shard in shards]
        finally:
            for shard in shards:
                if shard.poll() is None:
                    shard.kill()
                    shard.wait()
        for shard, (_, err) in zip(shards, outputs, strict=True):
            assert shard.returncode == 0, err[-3000:]
        # what the cloud stored in all, read from it directly once every shard is done
        address = json.loads(line)["control"]["tcp"]
        whole = ControlClient(address).ingest_stats(None)
        merged_path = tmp_path / "merged.json"
        reports = [str(tmp_path / f"shard-{i}.json") for i in range(SHARDS)]
        merge = subprocess.run(
            [*IOTFLEET, "report", "merge", *reports, "--out", str(merged_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert merge.returncode == 0, merge.stderr
        # a pod restarted with the same index and workdir reuses its devices' identities
        again = subprocess.run(
            [*common, "--shard", "1/2", "--workdir", str(tmp_path / "shard-1"), "--duration", "3s",
             "--report", str(tmp_path / "again.json")],
            capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
    restarted = json.loads((tmp_path / "again.json").read_text())
    assert restarted["latency_ms"]["provision"]["count"] == 0  # no device provisioned again
    assert restarted["sent"] > 0
    parts = [json.loads(Path(r).read_text()) for r in reports]
    check_merged(parts, json.loads(merged_path.read_text()), whole, start_at)


def check_merged(
    parts: list[dict[str, Any]], merged: dict[str, Any], whole: list[dict[str, Any]], start_at: float
) -> None:
    """The merged report against its parts and against what the cloud stored in all."""
    assert [p["config"]["shard"] for p in parts] == ["0/2", "1/2"]  # the index came from JOB_COMPLETION_INDEX
    assert [p["devices"] for p in parts] == [40, 40]
    assert merged["devices"] == 80
    assert merged["sent"] == sum(p["sent"] for p in parts) > 300
    assert merged["lost"] == 0
    assert merged["ingested"] == merged["acked"] == merged["sent"]
    # every message stored in the cloud is in exactly one shard's report: nothing counted twice or missed
    assert merged["ingested"] == sum(len(seqs) for region in whole for seqs in region["by_device"].values())
    assert merged["latency_ms"]["e2e"]["count"] == sum(region["e2e"].count for region in whole)
    # the barrier: no shard published before --start-at
    for part in parts:
        assert part["config"]["start_at"] == pytest.approx(start_at, abs=0.01)
        assert part["timeseries"][0]["epoch"] >= int(start_at) - 1  # connects may come a moment before
    # one fault for the fleet, run by shard 0, measured across both shards' devices
    kill, restore = merged["chaos"]
    assert (kill["action"], restore["action"]) == ("kill", "restore")
    assert kill["devices_affected"] == kill["failed_over"] == 40  # site 1, homed in eu-west-1 (shard 0's)
    assert parts[1]["chaos"] == []
    assert parts[0]["latency_ms"]["provision"]["count"] == 40  # by claim, the first time
    # the operator, in shard 0, changed desired states across the fleet; each device applied its own
    operator = merged["shadow"]["operator"]
    assert operator["changes"] >= 20  # a quarter of 80 devices, each round (every 3 s real)
    assert operator["reconciled"] == operator["devices_changed"]
    assert merged["shadow"]["device"]["applied"] > 0  # by delta (a change made while it moved: by resync)
    commands = merged["commands"]
    assert commands["sent"] > 40  # 80 devices, one a minute simulated each, at 20x for ~8 s
    assert commands["delivered"] + commands["lost"] == commands["sent"]
    assert commands["delivered"] >= 0.8 * commands["sent"]  # some reach devices while they fail over
    assert sum(parts[1]["commands"]["handled"].values()) > 0  # shard 1's devices got shard 0's commands
