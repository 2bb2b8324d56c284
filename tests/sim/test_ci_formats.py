"""The report in CI formats: CSV (time series, summary) and JUnit XML (a test case per threshold)."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.sim.ci_formats import junit_xml, write_csv
from iotfleet.sim.report import Report
from tests.sim import report_parts as parts


def parsed(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 - the XML this package wrote, not untrusted input


def run_report() -> dict[str, Any]:
    worker = parts.worker(0, parts.SHARD_A)
    for second, region in ((100.5, "eu-west-1"), (101.5, "eu-west-1"), (103.5, "us-east-1")):
        worker.timeline.count("sent", 2, at=second)
        worker.timeline.count("acked", 2, at=second)
        worker.timeline.count(f"acked:{region}", 2, at=second)
        worker.timeline.latency_ms(3.0, at=second)
    worker.timeline.count("connects:eu-west-1", 2, at=100.1)
    ingest = parts.ingest("eu-west-1", parts.SHARD_A)
    ingest["per_second"] = {101: 3, 104: 1}
    return Report.of_run(workers=[worker], ingest=[ingest], duration_s=5.0, config={}).to_dict()


def test_the_csv_time_series_has_a_row_a_second_and_a_column_set_per_region(tmp_path: Path) -> None:
    series, summary = write_csv(run_report(), tmp_path / "out")
    rows = list(csv.DictReader(series.read_text().splitlines()))
    assert [r["t"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["sent"] for r in rows] == ["2", "2", "0", "2", "0"]
    assert [r["eu-west-1_ingested"] for r in rows] == ["0", "3", "0", "0", "1"]
    assert [r["eu-west-1_connected"] for r in rows] == ["2"] * 5
    assert rows[2]["ack_p99_ms"] == ""  # no ack in that second: empty, not zero
    figures = dict(csv.reader(summary.read_text().splitlines()))
    assert figures["metric"] == "value"
    assert figures["acked"] == str(run_report()["acked"])
    assert "latency_ms.ack.p99" in figures
    assert "regions.eu-west-1.ingested" in figures


def test_junit_has_one_test_case_per_threshold_and_fails_the_breached_ones() -> None:
    report = run_report()
    assert report["lost"] > 0  # the parts leave some acknowledged messages unstored
    suites = parsed(junit_xml(report, max_lost=0, max_error_rate=100.0))
    cases = suites.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["lost <= 0", "error rate <= 100.0"]
    failure = cases[0].find("failure")
    assert failure is not None
    assert failure.get("message") == f"lost {report['lost']} > 0"
    assert cases[1].find("failure") is None
    assert suites.get("failures") == "1"
    held = parsed(junit_xml(report, max_lost=10_000))
    assert held.get("tests") == "1"
    assert held.find("./testsuite/testcase/failure") is None


def test_report_csv_and_junit_work_on_a_saved_report(tmp_path: Path) -> None:
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(run_report()))
    result = CliRunner().invoke(cli, ["report", "csv", str(saved), "--out", str(tmp_path / "csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "csv" / "timeseries.csv").exists()
    result = CliRunner().invoke(cli, ["report", "junit", str(saved), "--max-lost", "0"])
    assert result.exit_code == 0, result.output
    assert parsed(result.output).get("failures") == "1"
    damaged = tmp_path / "bad.json"
    damaged.write_text("{}")
    result = CliRunner().invoke(cli, ["report", "junit", str(damaged)])
    assert result.exit_code == 2
    assert "not an iotfleet simulate report" in result.output
