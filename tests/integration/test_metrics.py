"""`iotfleet simulate --metrics-port`: Prometheus metrics scraped over HTTP while a run goes on."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until

pytestmark = pytest.mark.integration
IOTFLEET = [sys.executable, "-m", "iotfleet"]


Samples = dict[str, list[tuple[str, dict[str, str], float]]]  # family -> (sample name, labels, value)


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - a loopback http URL this test built
        text = answer.read().decode()
    return {
        family.name: [(sample.name, sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def total(samples: Samples, family: str) -> float:
    return sum(value for name, _, value in samples.get(family, []) if not name.endswith("_created"))


def test_a_running_simulation_serves_its_metrics_to_prometheus(tmp_path: Path) -> None:
    command = [
        *IOTFLEET, "simulate", *("--sites", "1", "--duration", "30s", "--speed", "10", "--workers", "1"),
        *("--metrics-port", "0", "--metrics-host", "127.0.0.1", "--report", str(tmp_path / "r.json")),
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            url = ""
            for line in proc.stderr:
                if line.startswith("metrics: "):
                    url = line.split(" ", 1)[1].strip()
                    break
            assert url.startswith("http://127.0.0.1:"), url
            seen: Samples = {}

            def all_connected_and_stored() -> bool:
                nonlocal seen
                seen = scrape(url)
                connected = total(seen, "iotfleet_devices_connected")
                return connected == 40 and total(seen, "iotfleet_ingested") > 0

            assert wait_until(all_connected_and_stored, timeout=60, interval=0.5), seen
            proc.terminate()  # Ctrl-C's way: the run stops and reports
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    [(_, labels, sent)] = [s for s in seen["iotfleet_messages_sent"] if s[0].endswith("_total")]
    assert labels == {"shard": "0"}
    assert sent >= total(seen, "iotfleet_messages_acked") > 0
    regions = {labels["region"]: value for _, labels, value in seen["iotfleet_devices_connected"]}
    assert regions == {"eu-west-1": 40.0}  # one site, homed in the first region
    buckets = [(labels["le"], value) for name, labels, value in seen["iotfleet_publish_ack_seconds"] if "le" in labels]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts)  # cumulative
    assert buckets[-1][0] == "+Inf"
    [count] = [v for name, _, v in seen["iotfleet_publish_ack_seconds"] if name.endswith("_count")]
    assert buckets[-1][1] == count > 0
    stored = {labels["region"]: value for _, labels, value in seen["iotfleet_ingested"]}
    assert stored["eu-west-1"] > 0  # the embedded cloud's ingest, where the devices are
    assert stored["us-east-1"] == 0
    assert "iotfleet_failovers" in seen  # a family with no series yet: no device moved
    assert "iotfleet_connect_seconds" in seen
