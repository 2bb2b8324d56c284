"""`iotfleet simulate`, `report merge` and `drill failover` as a user runs them: real processes, real brokers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.sim.fleet import FleetShape, build_fleet
from tests import browser

pytestmark = pytest.mark.integration
IOTFLEET = [sys.executable, "-m", "iotfleet"]
DRILL_TIMES = ("--warmup", "3", "--observe", "12", "--json")
REQUIRED = ("devices", "duration_s", "sent", "acked", "ingested", "lost", "duplicates", "throughput_msgs_per_s")


def simulate(tmp_path: Path, name: str, *args: str) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / f"{name}.json"
    result = subprocess.run(
        [*IOTFLEET, "simulate", "--report", str(report), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert report.exists(), result.stderr
    return result.returncode, json.loads(report.read_text()), result.stdout


def test_two_sites_for_20s_lose_nothing_and_ingest_everything_acked(tmp_path: Path) -> None:
    code, report, summary = simulate(
        tmp_path,
        "run",
        *("--sites", "2", "--duration", "20s", "--speed", "10"),
        *("--operator-every", "60s", "--operator-fraction", "0.25"),  # rounds at 6 s and 12 s of the run
        *("--csv", str(tmp_path / "csv"), "--junit", str(tmp_path / "junit.xml")),
    )
    assert code == 0, summary
    series = (tmp_path / "csv" / "timeseries.csv").read_text().splitlines()
    assert series[0].startswith("t,epoch,sent,acked,ingested,errors,ack_p99_ms,eu-west-1_connected")
    assert len(series) == len(report["timeseries"]) + 1
    junit = (tmp_path / "junit.xml").read_text()
    assert 'tests="1" failures="0"' in junit  # the loss threshold, held
    for key in (*REQUIRED, "latency_ms", "errors", "regions"):
        assert key in report
    for kind in ("ack", "e2e"):
        assert {"p50", "p95", "p99", "max"} <= set(report["latency_ms"][kind])
    assert report["devices"] == 80
    assert report["sent"] > 1000  # 80 devices, telemetry every 10 simulated s at 10x, for 20 s
    assert report["lost"] == 0
    assert report["ingested"] == report["acked"] == report["sent"]
    assert report["latency_ms"]["e2e"]["count"] == report["ingested"]
    rows = report["timeseries"]  # one row a second, which adds up to the totals
    assert [row["t"] for row in rows] == list(range(len(rows)))
    for key in ("sent", "acked", "ingested"):
        assert sum(row[key] for row in rows) == report[key]
    assert max(row["regions"]["eu-west-1"]["connected"] for row in rows) == 40
    # the steady windows' acks are some of the run's acks (the ramp's and the drain's left out): each
    # latency bucket holds at most what the whole run's does
    steady, acks = report["raw"]["histograms"]["ack_steady"], report["raw"]["histograms"]["ack"]
    assert 0 < steady["count"] < acks["count"]
    assert all(n <= acks["buckets"][bucket] for bucket, n in steady["buckets"].items())
    assert steady["max"] <= acks["max"]
    assert "ack ms, steady" in summary
    for region in ("eu-west-1", "us-east-1"):  # one site homed in each region, as latency routing would
        counts = report["regions"][region]
        assert counts["devices"] == counts["connects"] == 40
        assert counts["acked"] == counts["ingested"] > 0
        assert counts["lifecycle_connected"] >= 40  # IoT Core's presence events, received
        assert counts["connected"] == 40  # at the end of the run, before the devices closed
    assert "lost" in summary
    assert "thresholds" in summary
    # shadow traffic: every device synced on start; the operator's changes were all applied and reported
    device, operator = report["shadow"]["device"], report["shadow"]["operator"]
    assert device["get"] >= 80
    assert device["update"] >= 80
    assert operator["changes"] == 40  # 2 rounds x 25% of 80 devices
    assert operator["reconciled"] == operator["devices_changed"] > 0
    assert operator["pending"] == 0
    assert report["latency_ms"]["shadow_sync"]["count"] == operator["reconciled"]
    assert "shadow (operator)" in summary


def test_basic_ingest_sends_every_message_to_the_ingest_rule(tmp_path: Path) -> None:
    code, report, summary = simulate(
        tmp_path, "basic", *("--sites", "1", "--duration", "6s", "--speed", "20", "--basic-ingest")
    )
    assert code == 0, summary
    assert report["lost"] == 0
    assert report["ingested"] == report["acked"] > 0
    assert report["regions"]["eu-west-1"]["basic_ingest"] == report["acked"]  # every one, no broker fan-out
    assert report["config"]["basic_ingest"] == "iotfleet_ingest"


def test_commands_reach_every_connected_device_and_reboots_come_back(tmp_path: Path) -> None:
    args = ("--sites", "1", "--duration", "10s", "--speed", "20", "--command-every", "2m", "--no-shadow")
    code, report, summary = simulate(tmp_path, "identify", *args, "--reboot-share", "0")
    assert code == 0, summary
    commands = report["commands"]
    assert commands["sent"] > 20  # 40 devices, one command each 2 simulated minutes, at 20x, for ~5 s
    assert (commands["delivered"], commands["lost"]) == (commands["sent"], 0)  # every device was connected
    assert commands["latency_ms"]["count"] == commands["sent"]
    assert "commands" in summary

    code, report, summary = simulate(tmp_path, "reboot", *args, "--reboot-share", "0.25")
    commands = report["commands"]
    assert commands["delivered"] + commands["lost"] == commands["sent"]
    assert commands["delivered"] >= 0.7 * commands["sent"]  # the rest went to devices offline rebooting
    reboots = commands["handled"]["reboot"]
    assert reboots >= 4  # about a quarter of some 50 commands
    assert report["reconnects"] >= reboots  # each rebooted device came back
    assert report["lost"] == 0  # and nothing it had queued was lost
    assert report["errors"]["total"] == 0


def test_killing_the_preferred_region_mid_run_loses_nothing(tmp_path: Path) -> None:
    code, report, summary = simulate(
        tmp_path,
        "chaos",
        *("--sites", "1", "--duration", "16s", "--speed", "20"),
        *("--chaos", "kill:eu-west-1@4s", "--chaos", "restore:eu-west-1@7s"),
        *("--max-error-rate", "0"),  # connection errors during the failover breach this on purpose: exit 1
        *("--html", str(tmp_path / "chaos.html")),
    )
    assert report["lost"] == 0
    assert report["ingested"] == report["acked"]
    assert report["failovers_by_route"] == {"eu-west-1->us-east-1": 40}
    assert report["regions"]["us-east-1"]["acked"] > 0
    assert report["regions"]["us-east-1"]["lifecycle_connected"] == 40  # every device's arrival, told
    kill, restore = report["chaos"]  # measured in the run, as the drill measures its fault
    assert (kill["action"], kill["devices_affected"], kill["failed_over"], kill["lost"]) == ("kill", 40, 40, 0)
    assert 0 < kill["rto_s"]["p50"] <= kill["rto_s"]["p99"] <= kill["rto_s"]["max"] < 3.0
    assert (restore["action"], restore["devices_away"], restore["devices_returned"]) == ("restore", 40, 40)
    assert 0 < restore["failback_s"]["max"] < 9.0  # a failback probe every 5 s, make before break
    assert report["failbacks"] == 40
    assert code == 1
    assert report["thresholds"]["breaches"][0].startswith("error rate")
    assert "BREACHED" in summary
    page = (tmp_path / "chaos.html").read_text()
    assert "thresholds breached" in page
    assert "kill eu-west-1 at" in page  # marked on the time series, and its own failover curve
    assert "<h2>Failover after each fault</h2>" in page


@browser.needs_chromium
def test_a_runs_html_report_draws_in_headless_chromium(tmp_path: Path) -> None:
    code, _, summary = simulate(
        tmp_path, "page", *("--sites", "1", "--duration", "8s", "--speed", "20", "--html", str(tmp_path / "r.html"))
    )
    assert code == 0, summary
    loaded = browser.load(tmp_path / "r.html", tmp_path)
    assert loaded.console == []
    assert loaded.colours() > 100
    assert loaded.pixels_near("#1f77b4") > 1000  # eu-west-1 (the one-site fleet's home): two legend squares are ~400
    assert loaded.pixels_near("#17becf") > 2000  # the ack latency distribution


def test_a_blackhole_drill_detects_the_outage_and_fails_every_device_over() -> None:
    result = subprocess.run(
        [*IOTFLEET, "drill", "failover", *("--devices", "40", "--rate", "2", "--mode", "blackhole"), *DRILL_TIMES],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    drill = json.loads(result.stdout)
    assert {"devices", "sent", "ingested", "lost", "duplicates", "rto_s"} <= set(drill)
    assert (drill["devices"], drill["failed_over"], drill["lost"]) == (40, 40, 0)
    assert 0 < drill["rto_s"]["p50"] <= drill["rto_s"]["p95"] <= drill["rto_s"]["max"]
    assert "PUBACK or PINGRESP 2.0 s late" in drill["detection"]
    # --rate 2 is 2 messages per second per device (it was 0.5: the speed was 10 / rate)
    per_device_per_s = drill["sent"] / 40 / (3 + 12)
    assert 2 * 0.8 <= per_device_per_s <= 2 * 1.2, per_device_per_s
    # every device's desired state was changed in region 2 during the outage, and each applied it there
    shadow = drill["shadow"]
    assert (shadow["changed"], shadow["reconciled"], shadow["pending"]) == (40, 40, 0)
    assert shadow["resyncs"] >= 80  # one on start, one after the failover


def test_shard_reports_merge_to_the_totals_of_one_run(tmp_path: Path) -> None:
    common = ("--sites", "2", "--duration", "8s", "--speed", "10")
    shards = [simulate(tmp_path, f"shard{i}", *common, "--shard", f"{i}/2")[1] for i in range(2)]
    whole = simulate(tmp_path, "whole", *common)[1]
    merged_file = tmp_path / "merged.json"
    result = CliRunner().invoke(
        cli,
        ["report", "merge", str(tmp_path / "shard0.json"), str(tmp_path / "shard1.json"), "--out", str(merged_file)],
    )
    assert result.exit_code == 0, result.output
    merged = json.loads(merged_file.read_text())
    for key in ("devices", "sent", "acked", "ingested", "lost", "duplicates"):
        assert merged[key] == sum(s[key] for s in shards), key
    assert merged["latency_ms"]["ack"]["count"] == sum(s["latency_ms"]["ack"]["count"] for s in shards)
    for key in ("get", "update", "resyncs"):
        assert merged["shadow"]["device"][key] == sum(s["shadow"]["device"][key] for s in shards), key
    everyone = sorted(d.thing for d in build_fleet(FleetShape(sites=2)))
    assert sorted(merged["raw"]["acked"]) == sorted(whole["raw"]["acked"]) == everyone
    assert merged["devices"] == whole["devices"] == 80
    assert abs(merged["sent"] - whole["sent"]) <= 0.1 * whole["sent"]  # same fleet, rate and duration
    assert merged["lost"] == whole["lost"] == 0


def test_bad_usage_exits_2_naming_the_problem() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--duration", "soon"])
    assert result.exit_code == 2
    assert "duration 'soon' is not a positive number" in result.output
    result = CliRunner().invoke(cli, ["simulate", "--chaos", "kill:mars-1@3s", "--duration", "1s"])
    assert result.exit_code == 2
    assert "chaos event names region 'mars-1'" in result.output


def test_provisioning_every_device_by_claim_then_reusing_the_identities(tmp_path: Path) -> None:
    args = (
        "--sites",
        "1",
        "--duration",
        "6s",
        "--speed",
        "10",
        "--provision",
        "claim",
        "--workdir",
        str(tmp_path / "w"),
    )
    code, first, summary = simulate(tmp_path, "claim1", *args)
    assert code == 0, summary
    assert first["latency_ms"]["provision"]["count"] == 40  # a provisioning storm: every device
    assert first["lost"] == 0
    assert first["ingested"] == first["acked"] > 0
    _, second, _ = simulate(tmp_path, "claim2", *args)
    assert second["latency_ms"]["provision"]["count"] == 0  # identities cached in the workdir are reused
    assert second["lost"] == 0
