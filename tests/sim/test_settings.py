"""`iotfleet simulate`'s settings: defaults, then the fleet file, then the flags given; all checked up front."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.errors import ConfigError
from iotfleet.sim.settings import load_settings


def checked(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["simulate", "--check", *args], env=env)
    assert result.exit_code == 0, result.output
    settings: dict[str, Any] = json.loads(result.output)
    return settings


def test_flags_given_beat_the_file_and_the_file_beats_the_defaults(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("[fleet]\nsites = 2\n[workload]\nspeed = 5\nduration = '1m'\n[thresholds]\nmax_lost = 3\n")
    from_file = checked("--config", str(fleet))
    assert (from_file["fleet"]["sites"], from_file["workload"]["speed"], from_file["workload"]["duration"]) == (
        2,
        5,
        60,
    )
    assert from_file["thresholds"]["max_lost"] == 3
    assert from_file["fleet"]["rooms"] == 5  # a default
    # a flag given wins, even when it equals the default (today --speed and the thresholds lost to the file)
    flags = checked("--config", str(fleet), "--speed", "1", "--max-lost", "0", "--sites", "4", "--duration", "5s")
    assert (flags["fleet"]["sites"], flags["workload"]["speed"], flags["workload"]["duration"]) == (4, 1, 5)
    assert flags["thresholds"]["max_lost"] == 0
    from_env = checked("--config", str(fleet), env={"IOTFLEET_SIMULATE_SPEED": "7"})
    assert from_env["workload"]["speed"] == 7


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[fleet]\nsites = 'two'\n", "fleet.sites: input should be a valid integer (got 'two')"),
        ("[fleet]\nsites = true\n", "fleet.sites: input should be a valid integer (got True)"),
        ("[workload]\nspeed = '10'\n", "workload.speed: input should be a valid number (got '10')"),
        ("[workload]\noperator_fraction = 2\n", "workload.operator_fraction: input should be less than or equal to 1"),
        ("[workload]\nduration = -5\n", "workload.duration: duration must be a positive number of seconds"),
        ("[thresholds]\nmax_lost = -1\n", "thresholds.max_lost: input should be greater than or equal to 0 (got -1)"),
        ("[thresholds]\nmax_error_rate = 'low'\n", "thresholds.max_error_rate: input should be a valid number"),
        ("[thresholds]\nmax_error_rate = nan\n", "thresholds.max_error_rate: input should be a finite number"),
        ("[thresholds]\nmax_losts = 1\n", "thresholds.max_losts: unknown key; known: max_error_rate, max_lost"),
        ("[workload]\nspeeed = 5\n", "workload.speeed: unknown key; known: abort_failure_pct, command_every, duration"),
        (
            "[target]\nendpoints = ['x:1']\nca = 'ca.pem'\nclaim_cert = 'c.pem'\nclaim_key = 'k.pem'\n",
            "target.ca: file ",
        ),
    ],
)
def test_a_bad_fleet_file_exits_2_naming_the_file_the_key_and_the_problem(
    tmp_path: Path, toml: str, expected: str
) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(toml)
    result = CliRunner().invoke(cli, ["simulate", "--config", str(fleet)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {fleet}: {expected}")
    assert "Traceback" not in result.output


def test_missing_claim_files_are_all_named_before_anything_starts(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    (tmp_path / "ca.pem").write_text("ca")
    fleet.write_text("[target]\nendpoints = ['eu-west-1=iot.example:8883']\nca = 'ca.pem'\n")
    fleet.write_text(fleet.read_text() + "claim_cert = 'claim.pem'\nclaim_key = 'claim.key'\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(fleet)
    assert caught.value.message == (
        f"{fleet}: target.claim_cert: file {tmp_path / 'claim.pem'} does not exist; "
        f"{fleet}: target.claim_key: file {tmp_path / 'claim.key'} does not exist"
    )


def test_a_report_path_that_cannot_be_written_fails_before_the_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["simulate", "--report", str(tmp_path / "no" / "such" / "r.json")])
    assert result.exit_code == 2
    assert (
        result.output
        == f"Error: --report: directory {tmp_path / 'no' / 'such'} does not exist; create it or name another path\n"
    )
    result = CliRunner().invoke(cli, ["simulate", "--report", str(tmp_path)])
    assert result.exit_code == 2


def test_rules_come_from_the_fleet_file_and_basic_ingest_from_a_flag(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        "[[rules]]\nname = 'alerts'\ntopic = 'dt/+/+/+/fault'\naction = 'republish:alerts/${topic()}'\n"
        "[[rules]]\nname = 'archive'\n"
    )
    config = load_settings(fleet, run={"basic_ingest": True}).sim_config()
    assert [(r.name, r.topic_filter, r.action) for r in config.rules] == [
        ("alerts", "dt/+/+/+/fault", "republish:alerts/${topic()}"),
        ("archive", None, "ingest"),
    ]
    assert config.basic_ingest
    fleet.write_text("[[rules]]\nname = 'bad name'\n")
    with pytest.raises(ConfigError, match="rule name 'bad name'"):
        load_settings(fleet)
    fleet.write_text("[rules]\nname = 'x'\n")
    with pytest.raises(ConfigError, match="rules: must be \\[\\[rules\\]\\] tables"):
        load_settings(fleet)


def test_shard_auto_takes_the_pods_index() -> None:
    assert checked("--sites", "8", "--shard", "auto/4", env={"JOB_COMPLETION_INDEX": "2"})["run"]["shard"] == [2, 4]
    result = CliRunner().invoke(cli, ["simulate", "--check", "--shard", "auto/4"], env={"JOB_COMPLETION_INDEX": ""})
    assert result.exit_code == 2
    assert "not a shard index" in result.output


def test_standby_and_keepalive_shape_one_reconnect_policy_and_ingest_workers_reach_the_embedded_cloud() -> None:
    config = load_settings(None, run={"standby": True, "keepalive": 45, "ingest_workers": 2}).sim_config()
    assert config.reconnect is not None
    assert (config.reconnect.standby, config.reconnect.keepalive_s) == (True, 45)
    assert config.reconnect.ping_timeout_s == 2.0  # the rest is the local cloud's policy
    assert config.ingest_workers == 2
    assert load_settings(None).sim_config().reconnect is None  # nothing given: the target's default
    assert checked("--standby", "--ingest-workers", "3")["run"]["ingest_workers"] == 3


def test_ingest_workers_are_refused_against_a_cloud_the_run_does_not_start(tmp_path: Path) -> None:
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_text("not read before the check")
    target = tmp_path / "fleet.toml"
    target.write_text(
        "[target]\nendpoints = ['eu-west-1=iot.example.com:8883']\nca = 'ca.pem'\nclaim_cert = 'c.pem'\n"
        "claim_key = 'k.pem'\n"
    )
    with pytest.raises(ConfigError, match="cloud up --ingest-workers"):
        load_settings(target, run={"ingest_workers": 2, "provision": "claim"}).sim_config()
