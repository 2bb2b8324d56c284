"""Every example runs as written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_local_cloud_example_shows_own_topic_accepted_and_foreign_refused() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "local_cloud.py")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for region in ("eu-west-1", "us-east-1"):
        assert f"{region}: dt/acme/hq/lamp-1/power -> PUBACK 0x10" in lines  # nobody subscribed: 0x10
        assert f"{region}: dt/acme/hq/lamp-2/power -> PUBACK 0x87" in lines


@pytest.fixture(scope="module")
def cloud_json(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real 'iotfleet cloud up' with one thing, its JSON line saved to a file, as the examples expect."""
    workdir = tmp_path_factory.mktemp("cloud")
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iotfleet",
            "cloud",
            "up",
            "--json",
            "--workdir",
            str(workdir / "w"),
            "--thing",
            "lamp-1",
            "--no-quotas",  # the examples run back to back as lamp-1, faster than IoT Core's 1 CONNECT/s per id
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as cloud:
        try:
            assert cloud.stdout is not None
            line = cloud.stdout.readline()
            assert json.loads(line)["things"][0]["name"] == "lamp-1"
            (workdir / "cloud.json").write_text(line)
            yield workdir / "cloud.json"
        finally:
            cloud.send_signal(signal.SIGTERM)
            cloud.communicate(timeout=30)
    assert cloud.returncode == 0


def run_example(name: str, cloud_json: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), str(cloud_json)], capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("name", ["publish_async.py", "publish_blocking.py"])
def test_publish_examples_are_acknowledged_in_the_preferred_region(name: str, cloud_json: Path) -> None:
    lines = run_example(name, cloud_json)
    assert len(lines) == 5
    assert all(line.startswith("dt/demo/hq/lamp-1/telemetry seq=") for line in lines)
    assert all("acked by eu-west-1" in line for line in lines)


def test_failover_example_moves_to_the_next_region_and_back(cloud_json: Path) -> None:
    lines = run_example("failover.py", cloud_json)
    text = "\n".join(lines)
    assert lines[0] == "publishing via ['eu-west-1']"
    assert "killing eu-west-1: killed" in text
    assert "  lamp-1 failed over: eu-west-1 -> us-east-1" in lines
    assert "  lamp-1 failed back: us-east-1 -> eu-west-1" in lines
    assert lines[-2] == "publishing via ['eu-west-1']"
    acked, enqueued = lines[-1].split(",")[0].removeprefix("acked ").split(" of ")
    assert acked == enqueued


def test_luminaire_example_applies_desired_levels_and_reports_the_clamped_one(cloud_json: Path) -> None:
    lines = run_example("luminaire_shadow.py", cloud_json)
    assert "shadow: desired {'dim': 40} reported {'dim': 40} delta None" in lines
    assert "shadow: desired {'dim': 75} reported {'dim': 75} delta None" in lines
    assert "shadow: desired {'dim': 120} reported {'dim': 100} delta {'dim': 120}" in lines
    assert lines[-1] == "saved state: {'reported': {'dim': 100}}"


def test_provision_example_provisions_once_then_reuses_the_identity(cloud_json: Path, tmp_path: Path) -> None:
    command = [sys.executable, str(EXAMPLES / "provision_by_claim.py"), str(cloud_json), "lamp-0042", str(tmp_path)]
    runs = [subprocess.run(command, capture_output=True, text=True, timeout=90, check=False) for _ in range(2)]
    for result in runs:
        assert result.returncode == 0, result.stderr
    first, second = (r.stdout.splitlines() for r in runs)
    assert first[0] == "provisioning lamp-0042 by claim"
    assert second[0] == "identity already on disk"
    assert first[1] == second[1]  # the same thing and certificate
    assert first[1].startswith("thing lamp-0042 certificate ")
    assert first[2] == second[2] == "dt/acme/hq/lamp-0042/telemetry acked by eu-west-1"


def test_the_users_failover_test_example_passes_with_the_plugin_fixtures(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "test_regional_failover.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # outside this repository's tests/: only the installed plugin provides fixtures
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
