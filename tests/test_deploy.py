"""What `iotfleet k8s render` prints and deploy/grafana/iotfleet.json: valid for Kubernetes (checked
against its own schemas), runnable as written, and reading only metrics that a run serves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.sim.prometheus import RunMetrics
from iotfleet.sim.report import Report
from tests.sim import report_parts as parts

ROOT = Path(__file__).parent.parent
KUBERNETES = "1.31"  # any version with Indexed Jobs and their pod index annotation (GA in 1.24)


def render(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["k8s", "render", "--image", "registry.example/iotfleet:1", *args])
    assert result.exit_code == 0, result.output
    return list(yaml.safe_load_all(result.output))


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in documents}


def test_the_manifests_are_valid_kubernetes_objects() -> None:
    for args in (("--shards", "4", "--sites", "200"), ("--shards", "3", "--sites", "9", "--namespace", "load")):
        for document in render(*args):
            kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_an_indexed_job_of_n_pods_each_simulating_its_shard_with_metrics_scraped() -> None:
    documents = by_kind(render("--shards", "4", "--sites", "200", "--duration", "1h", "--name", "lights"))
    assert set(documents) == {"PersistentVolumeClaim/lights-results", "Job/lights-shards", "Job/lights-merge"}
    job = documents["Job/lights-shards"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 4, 4)
    pod = job["template"]
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9464",
        "prometheus.io/path": "/metrics",
    }
    [container] = pod["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["simulate", "--sites"]
    assert args[args.index("--shard") + 1] == "auto/4"
    assert args[args.index("--report") + 1] == "/results/lights-shard-$(SHARD_INDEX).json"
    [index] = container["env"]
    assert index["valueFrom"]["fieldRef"]["fieldPath"].endswith("['batch.kubernetes.io/job-completion-index']")
    claim = documents["Job/lights-shards"]["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert claim == {"claimName": "lights-results"}
    assert documents["PersistentVolumeClaim/lights-results"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_a_shards_arguments_are_what_simulate_accepts(tmp_path: Path) -> None:
    cloud = {
        "regions": [{"name": "eu-west-1", "host": "10.0.0.5", "port": 8883}],
        **dict.fromkeys(("ca_pem", "claim_cert_pem", "claim_key_pem"), "x"),
        "template": "t",
        "control": {"tcp": "10.0.0.5:7000"},
    }
    (tmp_path / "cloud.json").write_text(json.dumps(cloud))
    documents = by_kind(render("--shards", "2", "--sites", "4", "--cloud", str(tmp_path / "cloud.json")))
    assert json.loads(documents["ConfigMap/iotfleet-config"]["data"]["cloud.json"]) == cloud
    [container] = documents["Job/iotfleet-shards"]["spec"]["template"]["spec"]["containers"]
    # as the pod with index 1 runs them, with the volumes' paths under tmp_path
    args = [
        a.replace("$(SHARD_INDEX)", "1").replace("/results", str(tmp_path)).replace("/etc/iotfleet", str(tmp_path))
        for a in container["args"]
    ]
    result = subprocess.run(
        [sys.executable, "-m", "iotfleet", *args, "--check"],
        env={**os.environ, "JOB_COMPLETION_INDEX": "1"}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["run"]["shard"] == [1, 2]
    assert settings["run"]["cloud"] == str(tmp_path / "cloud.json")
    assert settings["run"]["metrics_port"] == 9464


def test_the_merge_job_waits_for_every_shard_then_merges_them(tmp_path: Path) -> None:
    documents = by_kind(render("--shards", "2", "--sites", "2"))
    [container] = documents["Job/iotfleet-merge"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["sh", "-c"]
    for index, things in enumerate((parts.SHARD_A, parts.SHARD_B)):
        report = Report.of_run(
            workers=[parts.worker(index, things)], ingest=None, duration_s=5.0,
            config={**parts.CONFIG, "shard": f"{index}/2"},
        ).to_dict()  # fmt: skip
        (tmp_path / f"iotfleet-shard-{index}.json").write_text(json.dumps(report))
    script = container["command"][2].replace("/results", str(tmp_path))
    bin_dir = str(Path(sys.executable).parent)  # this environment's iotfleet, as the image's
    result = subprocess.run(
        ["/bin/sh", "-c", script], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    merged = json.loads((tmp_path / "iotfleet-merged.json").read_text())
    assert merged["config"]["shards"] == ["0/2", "1/2"]
    assert (tmp_path / "iotfleet-report.html").read_text().startswith("<!DOCTYPE html>")
    assert "<testsuites" in (tmp_path / "iotfleet-junit.xml").read_text()


def test_render_refuses_what_could_not_work(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["k8s", "render", "--image", "i", "--shards", "8", "--sites", "4"])
    assert result.exit_code == 2
    assert "--sites 4 < --shards 8" in result.output
    result = runner.invoke(
        cli, ["k8s", "render", "--image", "i", "--shards", "1", "--sites", "1", "--name", "Big_Name"]
    )
    assert result.exit_code == 2
    assert "must be a DNS label" in result.output


def exposed_metric_names() -> set[str]:
    """Every sample name a run serves (a run with a failure, a failover and a local cloud's ingest)."""
    snapshot = {
        "sent": 3, "acked": 2, "failed": {"overflow": 1}, "by_region": {"eu-west-1": 1},
        "failovers": {"eu-west-1->us-east-1": 1}, "ack_histogram": parts.worker(0, parts.SHARD_A).ack_ms.to_dict(),
        "connect_histogram": parts.worker(0, parts.SHARD_A).connect_ms.to_dict(),
    }  # fmt: skip
    metrics = RunMetrics(0, lambda: {0: snapshot}, lambda: {"eu-west-1": 2})
    return {sample.name for family in metrics.collect() for sample in family.samples}


def test_the_grafana_dashboard_reads_only_metrics_that_a_run_serves() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "iotfleet.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exposed = exposed_metric_names()
    used = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert 'shard=~"$shard"' in target["expr"]
            used |= set(re.findall(r"iotfleet_[a-z_]+", target["expr"]))
    assert used <= exposed, used - exposed
    assert {"iotfleet_devices_connected", "iotfleet_publish_ack_seconds_bucket", "iotfleet_failovers_total"} <= used
