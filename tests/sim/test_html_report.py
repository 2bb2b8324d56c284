"""The HTML report: one page that loads nothing from elsewhere, escapes what the report holds, and draws
its charts in a real browser."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from iotfleet.cli import cli
from iotfleet.metrics import Histogram
from iotfleet.sim.html_report import MAX_POINTS, _steps, html_report
from iotfleet.sim.report import Report
from tests import browser
from tests.sim import report_parts as parts

HOSTILE = '<img src=x onerror="alert(1)">'
START = 1.7e9  # the parts' devices acknowledge in eu-west-1 from here, in us-east-1 from 30 s on


def run_report(*, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Two regions for 40 s; eu-west-1 killed at 20 s and restored at 30 s (the parts' devices move then)."""
    worker = parts.worker(0, parts.SHARD_A)
    for second in range(40):
        region = "us-east-1" if 20 <= second < 30 else "eu-west-1"
        acked = 4 + second % 5
        worker.timeline.count("sent", acked, at=START + second)
        worker.timeline.count("acked", acked, at=START + second)
        worker.timeline.count(f"acked:{region}", acked, at=START + second)
        for ms in (2.0, 5.0, 9.0, 14.0 + second):
            worker.timeline.latency_ms(ms, at=START + second)
    worker.timeline.count("connects:eu-west-1", 2, at=START)
    worker.timeline.count("errors", 3, at=START + 20)
    chaos = [
        {"action": "kill", "region": "eu-west-1", "at_s": 20.0, "done_at_s": 20.0, "epoch": START + 20},
        {"action": "restore", "region": "eu-west-1", "at_s": 30.0, "done_at_s": 30.0, "epoch": START + 30},
    ]
    worker.ack_moves = {t: [(START, "eu-west-1"), (START + 21.5, "us-east-1")] for t in parts.SHARD_A}
    ingest = parts.ingest("eu-west-1", parts.SHARD_A)
    report = Report.of_run(
        workers=[worker], ingest=[ingest], duration_s=40.0, config=config or parts.CONFIG, chaos=chaos
    )
    return report.to_dict()


class Resources(HTMLParser):
    """Every attribute of the page that would make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            fetches = name in {"src", "href", "xlink:href", "srcset", "data", "poster", "action"}
            if fetches and value and not value.startswith("#"):
                self.fetched.append(f"{tag} {name}={value}")


def test_the_page_loads_nothing_runs_no_script_and_shows_every_part_of_the_run() -> None:
    page = html_report(run_report())
    resources = Resources()
    resources.feed(page)
    assert resources.fetched == []
    assert "script" not in resources.tags
    assert "link" not in resources.tags
    assert not re.search(r"url\((?!#)|@import", page)
    assert resources.tags.count("svg") == 7  # 4 over time, the latency distributions, failover, failback
    for title in (
        "Throughput by region", "Devices connected by region", "Ack latency over time", "Errors",
        "Latency distributions", "Failover after each fault", "Failback after each restore",
        "Summary", "Thresholds", "Chaos", "Regions", "Configuration",
    ):  # fmt: skip
        assert f"<h2>{title}</h2>" in page
    assert "kill eu-west-1 at 20 s" in page  # the chaos events, marked on the time series
    assert "restore eu-west-1 at 30 s" in page
    assert "thresholds breached" in page  # the parts lose a message on purpose


def test_what_the_report_holds_is_escaped() -> None:
    page = html_report(run_report(config={**parts.CONFIG, "target": HOSTILE}))
    assert HOSTILE not in page
    assert "onerror=&quot;alert(1)&quot;" in page.replace("\\&quot;", "&quot;")


def test_a_long_run_is_drawn_in_steps_whose_percentiles_are_of_the_merged_seconds() -> None:
    seconds = 3 * MAX_POINTS + 1
    rows = [{"t": t, "epoch": 1000 + t, "sent": 1, "regions": {}} for t in range(seconds)]
    latency = {}
    for t in range(seconds):
        histogram = Histogram()
        histogram.add(float(t % 3 + 1) * 10)  # 10, 20, 30 ms in turn
        latency[1000 + t] = histogram
    steps = _steps(rows, latency)
    assert len(steps) <= MAX_POINTS
    assert sum(len(step.rows) for step in steps) == seconds  # every second in exactly one step
    full = steps[0]
    assert len(full.rows) == 4
    assert full.mean(None, "sent") == 1.0
    assert full.quantile(0.99) == 30.0  # of the step's four seconds merged, not a mean of their p99s
    assert (full.quantile(0.5) or 0.0) <= 20.0


def test_report_html_renders_a_saved_and_a_merged_report(tmp_path: Path) -> None:
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(run_report()))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({**run_report(), "config": {**parts.CONFIG, "shard": "0/2"}}))
    b.write_text(json.dumps({**run_report(), "config": {**parts.CONFIG, "shard": "1/2"}}))
    merged = tmp_path / "merged.json"
    runner = CliRunner()
    assert runner.invoke(cli, ["report", "merge", str(a), str(b), "--out", str(merged)]).exit_code == 0
    for source in (saved, merged):
        out = tmp_path / "pages" / f"{source.stem}.html"
        result = runner.invoke(cli, ["report", "html", str(source), "--out", str(out), "--max-lost", "100"])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == str(out)
        page = out.read_text()
        assert "thresholds held" in page  # --max-lost 100 forgives the parts' loss
        assert "<h2>Throughput by region</h2>" in page
    assert "merged from 2 shard reports" in (tmp_path / "pages" / "merged.html").read_text()


def test_report_html_names_what_is_wrong_with_its_input(tmp_path: Path) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text('{"hello": 1}')
    result = CliRunner().invoke(cli, ["report", "html", str(notes), "--out", str(tmp_path / "x.html")])
    assert result.exit_code == 2
    assert "not an iotfleet simulate report" in result.output


@browser.needs_chromium
def test_the_page_draws_its_charts_in_headless_chromium_with_a_quiet_console(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(html_report(run_report()))
    loaded = browser.load(page, tmp_path)
    assert loaded.console == []
    assert loaded.colours() > 100  # text, lines, bars: not a blank page
    # each legend square is about 200 pixels of its colour: the rest is the line (or bars) drawn
    assert loaded.pixels_near("#1f77b4") > 2500  # eu-west-1's lines
    assert loaded.pixels_near("#ff7f0e") > 1500  # us-east-1's
    assert loaded.pixels_near("#6b6ecf") > 600  # the ack p50 line
    assert loaded.pixels_near("#17becf") > 5000  # the ack latency distribution's bars
