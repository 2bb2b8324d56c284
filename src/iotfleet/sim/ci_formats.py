"""A report in the formats CI systems read: CSV (the time series and the summary) and JUnit XML.

``write_csv(report, directory)`` writes ``timeseries.csv`` (one row a second: ``t``, ``epoch``, ``sent``,
``acked``, ``ingested``, ``errors``, ``ack_p99_ms``, then ``<region>_connected``, ``<region>_acked`` and
``<region>_ingested`` for each region) and ``summary.csv`` (``metric,value``: the headline figures, the
latency percentiles, per region figures). ``junit_xml(report, ...)`` is one ``<testsuite>`` with one
``<testcase>`` per threshold, failed when breached, so a CI system shows a breached loss or error rate
as a failed test. Both are stdlib (csv, xml.etree), which quotes and escapes what the report holds.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from iotfleet.sim.report import threshold_checks

__all__ = ["junit_xml", "summary_rows", "timeseries_rows", "write_csv"]

_LATENCY = ("p50", "p95", "p99", "max")


def timeseries_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """The time series as rows, the header first."""
    rows = report.get("timeseries", [])
    regions = sorted({region for row in rows for region in row["regions"]})
    header = ["t", "epoch", "sent", "acked", "ingested", "errors", "ack_p99_ms"]
    header += [f"{region}_{key}" for region in regions for key in ("connected", "acked", "ingested")]
    out: list[list[Any]] = [header]
    for row in rows:
        values = [row["t"], row["epoch"], row["sent"], row["acked"], row["ingested"], row["errors"]]
        values.append("" if row["ack_p99_ms"] is None else row["ack_p99_ms"])
        for region in regions:
            figures = row["regions"].get(region, {})
            values += [figures.get("connected", 0), figures.get("acked", 0), figures.get("ingested", 0)]
        out.append(values)
    return out


def summary_rows(report: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(metric, value)`` pairs: the headline figures, latency percentiles, commands and regions."""
    for key in (
        "devices", "duration_s", "sent", "acked", "ingested", "lost", "duplicates", "unacked", "failed",
        "throughput_msgs_per_s", "failovers", "failbacks", "reconnects",
    ):  # fmt: skip
        yield key, "" if report.get(key) is None else report.get(key, "")
    yield "errors", report["errors"]["total"]
    for name, figures in sorted(report.get("latency_ms", {}).items()):
        for stat in _LATENCY:
            yield f"latency_ms.{name}.{stat}", figures.get(stat, "")
    commands = report.get("commands")
    if commands:
        for key in ("sent", "delivered", "lost"):
            yield f"commands.{key}", commands[key]
        for stat in _LATENCY:
            yield f"commands.latency_ms.{stat}", commands["latency_ms"].get(stat, "")
    for region, counts in sorted(report.get("regions", {}).items()):
        for key, value in sorted(counts.items()):
            yield f"regions.{region}.{key}", value
    thresholds = report.get("thresholds")
    if thresholds is not None:
        yield "thresholds.held", thresholds["held"]


def write_csv(report: Mapping[str, Any], directory: Path) -> list[Path]:
    """Write ``timeseries.csv`` and ``summary.csv`` into ``directory`` (made if needed); return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    series, summary = directory / "timeseries.csv", directory / "summary.csv"
    with series.open("w", newline="") as out:
        csv.writer(out).writerows(timeseries_rows(report))
    with summary.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["metric", "value"])
        writer.writerows(summary_rows(report))
    return [series, summary]


def junit_xml(report: Mapping[str, Any], *, max_lost: int = 0, max_error_rate: float | None = None) -> str:
    """JUnit XML: one test case per threshold of the run, a failure for each breach."""
    checks = threshold_checks(report, max_lost=max_lost, max_error_rate=max_error_rate)
    failures = sum(not check.held for check in checks)
    suite = ET.Element(
        "testsuite",
        name="iotfleet simulate",
        tests=str(len(checks)),
        failures=str(failures),
        errors="0",
        time=f"{report.get('duration_s', 0.0):.3f}",
    )
    for check in checks:
        case = ET.SubElement(suite, "testcase", classname="iotfleet.thresholds", name=check.name, time="0")
        if check.held:
            ET.SubElement(case, "system-out").text = check.message
        else:
            ET.SubElement(case, "failure", message=check.message, type="ThresholdBreached").text = check.message
    suites = ET.Element("testsuites", tests=str(len(checks)), failures=str(failures))
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
