"""The command line, run as a user runs it: a real process, real brokers."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from iotfleet.cli import _advertise, _write_whole, cli
from iotfleet.cloud.local import DEFAULT_TEMPLATE, LocalCloud
from iotfleet.transport.tls import tls_client_context
from tests.conftest import cloud_up, process_alive, wait_until


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_cloud_up_json_prints_one_line_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with cloud_up("--json", "--workdir", str(tmp_path / "w")) as proc:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        keys = {"regions", "ca_file", "claim_cert", "claim_key", "template", "templates", "account", "workdir"}
        inline = {"ca_pem", "claim_cert_pem", "claim_key_pem"}  # what a shard on another machine needs
        assert set(info) == {*keys, *inline, "quotas", "control", "api_url"}
        assert info["api_url"].startswith("http://127.0.0.1:")
        iot = boto3.client(
            "iot", endpoint_url=info["api_url"], region_name="us-east-1",
            aws_access_key_id="AKIDLOCAL", aws_secret_access_key="local",  # noqa: S106 - read, never verified
        )  # fmt: skip
        us_east = info["regions"][1]
        assert iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == f"localhost:{us_east['port']}"
        assert info["ca_pem"] == Path(info["ca_file"]).read_text()
        assert info["control"] == {"unix": str(tmp_path / "w" / "control.sock"), "tcp": None}  # no --control
        assert info["quotas"]["connect_per_client"] == 1.0  # IoT Core's quotas, on by default
        assert [r["name"] for r in info["regions"]] == ["eu-west-1", "us-east-1"]
        assert all(r["host"] == "localhost" for r in info["regions"])
        assert all(
            Path(info[k]).is_absolute() and Path(info[k]).exists() for k in ("ca_file", "claim_cert", "claim_key")
        )
        assert info["template"] == "iotfleet-default"
        ctx = tls_client_context(Path(info["ca_file"]), Path(info["claim_cert"]), Path(info["claim_key"]))
        for region in info["regions"]:
            with socket.create_connection(("127.0.0.1", region["port"]), timeout=2) as raw:
                ctx.wrap_socket(raw, server_hostname="localhost").close()
        brokers = children_of(proc.pid)
        assert len(brokers) == 2
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == ""  # exactly one JSON line, nothing else on stdout
    assert not [pid for pid in brokers if process_alive(pid)]


def test_the_cli_and_the_simulator_runner_import_where_resource_does_not_exist() -> None:
    code = (
        "import sys; sys.modules['resource'] = None\n"  # as on Windows: `import resource` fails
        "import iotfleet.cli, iotfleet.sim.runner\n"
        "from click.testing import CliRunner\n"
        "print(CliRunner().invoke(iotfleet.cli.cli, ['simulate', '--help']).exit_code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_doctor_passes_on_a_prepared_machine() -> None:
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "ok    mosquitto" in result.output
    assert "all checks passed" in result.output


def test_doctor_names_a_missing_mosquitto_and_the_fix(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {**os.environ, "PATH": str(bindir)}  # an empty PATH: no mosquitto (the venv's python runs by path)
    # /usr/sbin is searched as a fallback, so hide it by running where it holds no mosquitto
    if shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin"):
        code = (
            "import shutil, sys; from iotfleet.cli import cli; "
            "shutil.which = lambda *a, **k: None; sys.exit(cli(['doctor'], standalone_mode=True))"
        )
    else:
        code = "import sys; from iotfleet.cli import cli; sys.exit(cli(['doctor']))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "FAIL  mosquitto" in result.stdout
    assert "apt-get install -y mosquitto" in result.stdout


def test_doctor_without_awsiotsdk_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "awsiot", None)  # what an install without the test extra looks like
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: iotfleet doctor needs the awsiotsdk package")
    assert "pip install awsiotsdk" in result.output


def test_bad_configuration_exits_2_with_one_clear_line() -> None:
    result = CliRunner().invoke(cli, ["policy", "render", "--data", "dt/{thing}/{stream}"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ")
    assert "lacks {site}, {tenant}" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cloud_up_rejects_a_bad_region_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["cloud", "up", "--regions", "EU_West", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "region name 'EU_West'" in result.output


def test_policy_render_prints_the_device_policy() -> None:
    result = CliRunner().invoke(cli, ["policy", "render", "--region", "eu-west-1", "--account", "123456789012"])
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert (
        doc["Statement"][0]["Resource"] == "arn:aws:iot:eu-west-1:123456789012:client/${iot:Connection.Thing.ThingName}"
    )


def provision_args(cloud: LocalCloud, out: Path, *params: str) -> list[str]:
    args = ["provision", "--claim-cert", str(cloud.claim.cert_file), "--claim-key", str(cloud.claim.key_file)]
    args += ["--ca", str(cloud.ca_file), "--template", DEFAULT_TEMPLATE, "--out", str(out), "--timeout", "5"]
    for endpoint in cloud.endpoints:
        args += ["--endpoint", f"{endpoint.region}={endpoint.host}:{endpoint.port}"]
    for param in params:
        args += ["--param", param]
    return args


def test_provision_saves_the_identity_and_prints_it(local_cloud: LocalCloud, tmp_path: Path) -> None:
    args = provision_args(local_cloud, tmp_path / "id", "Tenant=acme", "Site=hq", "SerialNumber=lamp-9")
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    printed = json.loads(first.output)
    assert (printed["thing_name"], printed["already_provisioned"]) == ("lamp-9", False)
    assert Path(printed["key"]).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    record = local_cloud.region("eu-west-1").registry.certificate(printed["certificate_id"])
    assert record is not None
    assert record.thing == "lamp-9"
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0
    assert json.loads(again.output)["already_provisioned"] is True


def test_provision_rejection_exits_1_naming_the_step(local_cloud: LocalCloud, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, provision_args(local_cloud, tmp_path / "id", "Tenant=acme", "SerialNumber=x"))
    assert result.exit_code == 1
    assert "Error: RegisterThing rejected: 400 InvalidParameters: Parameter Site is required" in result.output
    assert not (tmp_path / "id").exists()


def test_provision_bad_param_syntax_exits_2(local_cloud: LocalCloud, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, provision_args(local_cloud, tmp_path / "id", "SerialNumber"))
    assert result.exit_code == 2
    assert "is not Key=Value" in result.output


def test_provision_with_a_template_the_broker_refuses_exits_1_naming_the_step(
    local_cloud: LocalCloud, tmp_path: Path
) -> None:
    args = provision_args(local_cloud, tmp_path / "id", "Tenant=acme", "Site=hq", "SerialNumber=x")
    args[args.index(DEFAULT_TEMPLATE)] = "no-such-template"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output  # a refusal by the cloud is a rejection, as the README says
    # the claim policy covers the cloud's templates only: the SUBSCRIBE to this one's answers is refused first
    assert result.output.startswith("Error: Subscribe rejected: 403 AccessDenied: the claim certificate may not")
    assert "no-such-template/provision/json/rejected" in result.output
    assert not (tmp_path / "id").exists()


def test_report_merge_names_a_damaged_report_and_an_unwritable_output(tmp_path: Path) -> None:
    damaged = tmp_path / "shard0.json"
    damaged.write_text(json.dumps({"devices": 1, "raw": {"acked": {}}}))
    result = CliRunner().invoke(cli, ["report", "merge", str(damaged)])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {damaged}: the report lacks errors, failed, histograms")
    empty: dict[str, Any] = {
        "duration_s": 1.0,
        "raw": {k: {} for k in ("acked", "ingested", "histograms", "regions", "totals")},
    }
    empty["raw"].update({k: {} for k in ("sent", "errors", "failed", "rejects", "failovers")}, ingest_duplicates=0)
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    result = CliRunner().invoke(cli, ["report", "merge", str(tmp_path / "empty.json"), "--out", "/dev/full"])
    assert result.exit_code == 2, result.output
    assert result.output == "Error: cannot write the merged report to /dev/full: No space left on device\n"


def test_sigusr1_prints_every_threads_stack_and_the_cloud_runs_on(tmp_path: Path) -> None:
    with cloud_up("--json", "--workdir", str(tmp_path / "w"), "--regions", "eu-west-1") as proc:
        out, err = proc.stdout, proc.stderr
        assert out is not None
        assert err is not None
        assert json.loads(out.readline())["regions"]
        proc.send_signal(signal.SIGUSR1)
        dumped: list[str] = []

        def read() -> bool:
            ready, _, _ = select.select([err], [], [], 0)
            if ready:
                dumped.append(err.readline())
            return any("most recent call first" in line for line in dumped)

        assert wait_until(read, timeout=10, interval=0.01), dumped
        assert proc.poll() is None  # a dump, not a stop


def test_advertise_names_a_reachable_host_for_listeners_bound_to_every_address() -> None:
    info: dict[str, Any] = {
        "regions": [
            {"name": "eu-west-1", "host": "0.0.0.0", "port": 8883},  # noqa: S104 - data, not a bind
            {"name": "b", "host": "10.1.1.1", "port": 1},
        ],
        "control": {"unix": "/w/control.sock", "tcp": "0.0.0.0:7000"},
    }
    _advertise(info, "cloud.lab")
    assert [r["host"] for r in info["regions"]] == ["cloud.lab", "10.1.1.1"]  # a named address stays
    assert info["control"]["tcp"] == "cloud.lab:7000"


def test_a_report_is_renamed_into_place_whole_and_a_device_is_written_to_not_replaced(tmp_path: Path) -> None:
    report = tmp_path / "shard-0.json"
    report.write_text("old")
    before = report.stat().st_ino
    _write_whole(report, '{"new": true}')
    assert report.read_text() == '{"new": true}'
    assert report.stat().st_ino != before  # a new file took its place: a reader sees old or new, never half
    assert [p.name for p in tmp_path.iterdir()] == ["shard-0.json"]  # no staged file left behind
    null = Path(os.devnull)
    _write_whole(null, "discarded")
    assert null.is_char_device()
