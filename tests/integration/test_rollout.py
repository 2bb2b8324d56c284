"""`iotfleet simulate --ota` and `--https-fraction` as a user runs them: real processes, real brokers, a
firmware rollout over IoT Jobs with the home region killed in the middle of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import browser
from tests.integration.test_simulate import simulate

pytestmark = pytest.mark.integration


def test_a_rollout_survives_its_region_dying_midway_and_https_devices_lose_nothing(tmp_path: Path) -> None:
    html = tmp_path / "run.html"
    code, report, summary = simulate(
        tmp_path,
        "rollout",
        *("--sites", "1", "--duration", "45s", "--speed", "10", "--command-every", "off"),
        *("--https-fraction", "0.25", "--ota", "2.5.0", "--rollout-per-minute", "120", "--ota-size", "65536"),
        *("--chaos", "kill:eu-west-1@8s", "--chaos", "restore:eu-west-1@20s", "--html", str(html)),
    )
    assert code == 0, summary
    https = report["config"]["https"]["devices"]
    assert 0 < https < 40
    # every message, over MQTT or HTTPS, acknowledged and stored once, through the outage
    assert report["lost"] == 0
    assert report["ingested"] == report["acked"] == report["sent"]
    assert report["chaos"][0]["failed_over"] == report["chaos"][0]["devices_affected"] > 0
    ota = report["ota"]
    assert ota["targets"] == 40 - https  # the MQTT luminaires; HTTPS-only devices hold no jobs connection
    assert ota["updated"] == ota["targets"], ota
    assert ota["failed"] == 0
    assert ota["downloads"] >= ota["updated"]  # a download cut by the outage is made again
    assert ota["reboots"] >= ota["updated"]
    assert ota["time_to_s"]["50%"] <= ota["time_to_s"]["95%"] <= ota["time_to_s"]["100%"]
    assert ota["curve"][-1][1] == ota["updated"]
    # both regions rolled the job out: devices took it where they were, and finished it in both
    regions = ota["regions"]
    assert set(regions) == {"eu-west-1", "us-east-1"}
    assert all(r["jobProcessDetails"]["numberOfSucceededThings"] > 0 for r in regions.values())
    assert "firmware rollout" in summary
    page = browser.load(html, tmp_path / "browser")
    assert page.console == []
    assert "Firmware rollout" in html.read_text()


def test_failing_updates_abort_the_rollout_in_every_region(tmp_path: Path) -> None:
    code, report, summary = simulate(
        tmp_path,
        "abort",
        *("--sites", "1", "--duration", "25s", "--speed", "10", "--command-every", "off", "--no-shadow"),
        *("--ota", "9.9.9", "--ota-failure-rate", "1", "--abort-failure-pct", "50", "--rollout-per-minute", "60"),
    )
    assert code == 0, summary
    ota = report["ota"]
    assert ota["updated"] == 0
    assert ota["failures"] == {"apply-failed": ota["failed"]}
    aborted = ota["aborted"]
    assert aborted is not None, ota
    assert aborted["at_s"] > 0
    # the abort stopped the rollout: devices not yet notified never got the job
    assert 10 <= ota["failed"] < ota["targets"]
    assert ota["not_updated"] == ota["targets"] - ota["failed"]
    statuses = {region: job["status"] for region, job in ota["regions"].items()}
    assert statuses == {"eu-west-1": "CANCELED", "us-east-1": "CANCELED"}
    assert ota["regions"][aborted["region"]]["reasonCode"] == "ABORTED"
    assert "ABORTED in" in summary
