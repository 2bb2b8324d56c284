"""A run's report as one self-contained HTML page: charts and tables that open offline, anywhere.

The charts are SVG, drawn here by pygal and written into the page: the page loads nothing (no script,
no style sheet, no font from elsewhere) and runs no JavaScript library, so it opens from a CI artifact, a
mail attachment or a file share as it is. What it shows:

- throughput over time by region (acknowledged messages a second) with the chaos events marked;
- devices connected by region, and errors a second;
- ack latency percentiles over time (p50, p95, p99 of each second, from its histogram);
- the ack, end-to-end and command latency distributions (share of messages per bucket);
- for each chaos event, the share of its devices that recovered over the seconds after it (failover RTO
  after a fault, failback after a restore): the RTO distribution as a curve;
- tables: the summary, the thresholds (held or breached), regions, chaos, shadow, commands, errors, config.

A run longer than :data:`MAX_POINTS` seconds is drawn in steps of several seconds: rates are the step's
mean, gauges its last value, percentiles those of the step's merged histograms (exact, not averaged).
Everything is read from the report's JSON document (``raw`` included), so a saved or merged report
renders the same as a run's own.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pygal
from pygal.style import Style

# pygal appends to sys.meta_path a finder for its map plugins (pygal.maps.*, not used here) that has only
# the legacy find_module: every import that no other finder resolves then warns (ImportWarning) on
# Python 3.11. Take it out again, before importing anything else.
sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, pygal.PluginImportFixer)]

from iotfleet.metrics import Histogram  # noqa: E402
from iotfleet.sim.report import FAULTS, Report, chaos_samples, summary_lines, threshold_checks  # noqa: E402

__all__ = ["MAX_POINTS", "html_report", "write_html"]

MAX_POINTS = 600  # points per line at most; longer runs are drawn in steps of several seconds

_REGION_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_FAULT_COLOUR, _RESTORE_COLOUR, _GREY = "#d62728", "#2ca02c", "#7f7f7f"
_PERCENTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
_DASHED = {"dasharray": "6, 4"}
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL)
# the regions' colours mark only their lines; the other charts have their own
_DISTRIBUTION_COLOURS = ("#17becf", "#bcbd22", "#9467bd")
_PERCENTILE_COLOURS = ("#6b6ecf", "#e7ba52", "#843c39")

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222;
       background: #f6f7f9; }
main { max-width: 1120px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 12px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #555; margin: 0 0 12px; }
section.chart { background: #fff; border: 1px solid #dde; border-radius: 6px; padding: 8px 12px; margin: 12px 0; }
section.chart h2 { margin: 4px 0; } section.chart p { color: #555; margin: 0 0 4px; }
table { border-collapse: collapse; background: #fff; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #dde; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef0f4; } td.num { text-align: right; }
.held { color: #176b2c; font-weight: 600; } .breached { color: #b3261e; font-weight: 600; }
.verdict { display: inline-block; padding: 4px 10px; border-radius: 4px; color: #fff; font-weight: 600; }
.verdict.held { background: #2e7d32; color: #fff; } .verdict.breached { background: #c62828; color: #fff; }
pre { background: #fff; border: 1px solid #dde; padding: 8px; overflow-x: auto; }
"""


def write_html(report: Mapping[str, Any], path: Path, **thresholds: Any) -> Path:
    """Write :func:`html_report` to ``path`` (its folder made if needed); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(report, **thresholds), encoding="utf-8")
    return path


def html_report(report: Mapping[str, Any], *, max_lost: int = 0, max_error_rate: float | None = None) -> str:
    """The page of a report's JSON document (a run's, a saved or a merged one)."""
    parsed = Report.from_dict(report)
    rows = list(report.get("timeseries", []))
    regions = sorted({region for row in rows for region in row["regions"]} | set(report.get("regions", {})))
    first_epoch = rows[0]["epoch"] if rows else None
    samples = chaos_samples(parsed.chaos, parsed.raw)
    markers = [
        (entry, entry["epoch"] - first_epoch)
        for entry, _ in samples
        if first_epoch is not None and entry.get("epoch") is not None
    ]
    steps = _steps(rows, parsed.raw.timeline.latency)
    checks = threshold_checks(report, max_lost=max_lost, max_error_rate=max_error_rate)
    held = all(check.held for check in checks)

    parts = [
        _header(report, regions, first_epoch, held),
        _table("Summary", ["figure", "value"], [[label, value] for label, value in summary_lines(report)]),
        _table(
            "Thresholds",
            ["threshold", "result", "measured"],
            [[c.name, _Raw(_verdict(c.held, "held", "breached")), c.message] for c in checks],
        ),
    ]
    parts += _time_series_parts(steps, regions, markers)
    parts.append(_distribution_chart(parsed))
    parts += _ota_parts(None if parsed.raw.ota is None else parsed.raw.ota.summary(), markers, first_epoch)
    parts += _chaos_parts(samples)
    parts += _tables(report, regions)
    body = "\n".join(parts)
    title = html.escape(_title(report))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------- the data


class _Step:
    """Consecutive seconds of the time series drawn as one point."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], latency: Histogram) -> None:
        self.rows, self.latency = rows, latency
        self.t = rows[0]["t"] + len(rows) / 2  # drawn at its middle: a second's count is of [t, t + 1)

    def mean(self, region: str | None, key: str) -> float:
        if region is None:
            return float(sum(row[key] for row in self.rows)) / len(self.rows)
        return float(sum(row["regions"].get(region, {}).get(key, 0) for row in self.rows)) / len(self.rows)

    def last(self, region: str, key: str) -> float:
        return float(self.rows[-1]["regions"].get(region, {}).get(key, 0))

    def quantile(self, q: float) -> float | None:
        return self.latency.quantile(q) if self.latency.count else None


def _steps(rows: Sequence[Mapping[str, Any]], latency: Mapping[int, Histogram]) -> list[_Step]:
    """The time series in steps of ``ceil(len(rows) / MAX_POINTS)`` seconds, each with the merge of its
    seconds' ack latency histograms."""
    size = max(1, math.ceil(len(rows) / MAX_POINTS))
    steps = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        merged = Histogram()
        for row in chunk:
            if (histogram := latency.get(row["epoch"])) is not None:
                merged.merge(histogram)
        steps.append(_Step(chunk, merged))
    return steps


# ---------------------------------------------------------------------------------------------- charts


def _time_series_parts(
    steps: Sequence[_Step], regions: Sequence[str], markers: Sequence[tuple[Mapping[str, Any], float]]
) -> list[str]:
    """Throughput and devices connected by region, ack latency percentiles and errors, over the run."""
    if not steps:
        return []
    colours = [_REGION_COLOURS[i % len(_REGION_COLOURS)] for i in range(len(regions))]
    throughput: list[_Line] = [
        (region, colour, [(s.t, s.mean(region, "acked")) for s in steps], None)
        for region, colour in zip(regions, colours, strict=True)
    ]
    throughput.append(("sent (all regions)", _GREY, [(s.t, s.mean(None, "sent")) for s in steps], _DASHED))
    connected: list[_Line] = [
        (region, colour, [(s.t, s.last(region, "connected")) for s in steps], None)
        for region, colour in zip(regions, colours, strict=True)
    ]
    latency: list[_Line] = [
        (label, colour, [(s.t, s.quantile(q)) for s in steps], None)
        for (q, label), colour in zip(_PERCENTILES, _PERCENTILE_COLOURS, strict=True)
    ]
    errors: list[_Line] = [("errors", _FAULT_COLOUR, [(s.t, s.mean(None, "errors")) for s in steps], None)]
    return [
        _chart(
            "Throughput by region",
            "Acknowledged messages a second in each region, and all sent; chaos events dashed.",
            _time_chart("msg/s", throughput, markers),
        ),
        _chart(
            "Devices connected by region",
            "Connected at the end of each step (from each session's start and end).",
            _time_chart("devices", connected, markers),
        ),
        _chart(
            "Ack latency over time",
            "Percentiles of the publish-to-PUBACK time of the messages acknowledged in each step (ms, log scale).",
            _time_chart("ms", latency, markers, logarithmic=True),
        ),
        _chart(
            "Errors",
            "Errors a second (connect failures, timeouts, rejected requests), all regions.",
            _time_chart("errors/s", errors, markers),
        ),
    ]


class _Raw(str):
    """Markup already escaped, put into a table cell as it is."""

    __slots__ = ()


def _verdict(held: bool, yes: str, no: str) -> str:
    return f'<span class="{"held" if held else "breached"}">{yes if held else no}</span>'


def _style(colours: Sequence[str]) -> Style:
    return Style(
        background="white",
        plot_background="white",
        foreground="#333",
        foreground_strong="#222",
        foreground_subtle="#ccc",
        colors=tuple(colours) or ("#1f77b4",),
        font_family="system-ui, sans-serif",
        label_font_size=12,
        major_label_font_size=12,
        legend_font_size=12,
        value_font_size=11,
        opacity="1",
        opacity_hover="1",
        stroke_opacity="1",
        stroke_opacity_hover="1",
        stroke_width="2",
        stroke_width_hover="2",
        guide_stroke_color="#ccc",
        major_guide_stroke_color="#aaa",
    )


_Line = tuple[str, str, Sequence[tuple[float, float | None]], Mapping[str, Any] | None]


def _time_chart(
    unit: str,
    lines: Sequence[_Line],
    markers: Sequence[tuple[Mapping[str, Any], float]],
    *,
    logarithmic: bool = False,
    x_title: str = "seconds from the start",
    high: float | None = None,
) -> str:
    """An XY chart over seconds: one line each, and each chaos event as a dashed vertical line. With
    ``logarithmic``, y is drawn on a log scale (pygal's own would make x logarithmic too)."""
    if logarithmic:
        lines = [
            (title, colour, [(x, math.log10(y) if y is not None and y > 0 else None) for x, y in points], stroke)
            for title, colour, points, stroke in lines
        ]
    values = [y for _, _, points, _ in lines for _, y in points if y is not None]
    low = math.floor(min(values)) if logarithmic and values else 0.0
    if high is None:
        high = max(values) if values else 1.0
    colours = [colour for _, colour, _, _ in lines]
    chart = pygal.XY(
        style=_style([*colours, *(_marker_colour(e) for e, _ in markers)]),
        js=[],
        width=1000,
        height=340,
        show_dots=False,
        x_title=x_title,
        y_title=unit,
        legend_at_bottom=True,
        legend_at_bottom_columns=min(6, max(1, len(lines) + len(markers))),
        truncate_legend=-1,
        dynamic_print_values=False,
        print_values=False,
        allow_interruptions=True,
        range=(low, math.ceil(high) if logarithmic else high * 1.05 if high > 0 else 1.0),
        include_x_axis=not logarithmic,
    )
    if logarithmic:
        chart.y_labels = [
            {"label": f"{10.0**power:g}", "value": float(power)} for power in range(int(low), math.ceil(high) + 1)
        ]
    for title, _, points, stroke in lines:
        chart.add(title, points, stroke_style=dict(stroke) if stroke else None)
    for event, at in markers:
        chart.add(_marker_title(event, at), [(at, low), (at, high)], stroke_style=_DASHED)
    return _svg(chart)


def _svg(chart: Any) -> str:
    """The chart's SVG without pygal's script of its own configuration, which only its tooltip script
    (not loaded: the page loads nothing) would read. ElementTree escapes ``<`` in a script's text, so the
    first ``</script>`` ends the element."""
    return _SCRIPT.sub("", str(chart.render(is_unicode=True, disable_xml_declaration=True)))


def _marker_colour(event: Mapping[str, Any]) -> str:
    return _FAULT_COLOUR if event["action"] in (*FAULTS, "abort") else _RESTORE_COLOUR


def _marker_title(event: Mapping[str, Any], at: float) -> str:
    return f"{event['action']} {event['region']} at {at:.0f} s"


def _chart(title: str, caption: str, svg: str) -> str:
    return f'<section class="chart"><h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>\n{svg}\n</section>'


def _ota_parts(
    ota: Mapping[str, Any] | None, markers: Sequence[tuple[Mapping[str, Any], float]], first_epoch: int | None
) -> list[str]:
    """The firmware rollout: devices on the new version over the run (the chaos events and the abort
    dashed), and each region's job."""
    if not ota or not ota.get("curve"):
        return []
    offset = ota["created_at"] - first_epoch if first_epoch is not None and ota.get("created_at") else 0.0
    curve = [(offset + t, float(n)) for t, n in ota["curve"]]
    end = max(curve[-1][0], offset + (ota["time_to_s"].get("100%") or 0.0))
    lines: list[_Line] = [
        (f"devices on {ota['version']}", _REGION_COLOURS[0], curve, None),
        ("devices targeted", _GREY, [(offset, ota["targets"]), (end, ota["targets"])], _DASHED),
    ]
    events = list(markers)
    if ota.get("aborted") and ota["aborted"].get("at_s") is not None:
        abort = {"action": "abort", "region": ota["aborted"]["region"]}
        events.append((abort, offset + ota["aborted"]["at_s"]))
    caption = (
        f"Devices that reported SUCCEEDED on {ota['version']} after their reboot, from the job's creation at "
        f"{offset:.0f} s; chaos events and an abort dashed."
    )
    chart = _chart("Firmware rollout", caption, _time_chart("devices", lines, events, high=float(ota["targets"])))
    rows = [
        [region, job.get("status"), job.get("reasonCode", ""), *_process_counts(job)]
        for region, job in sorted(ota.get("regions", {}).items())
    ]
    table = _table("Rollout job by region", ["region", "status", "reason", *_PROCESS_COLUMNS], rows)
    return [chart, table]


_PROCESS_COLUMNS = ("queued", "in progress", "succeeded", "failed", "timed out", "rejected", "canceled", "removed")


def _process_counts(job: Mapping[str, Any]) -> list[int]:
    details = job.get("jobProcessDetails", {})
    names = ("Queued", "InProgress", "Succeeded", "Failed", "TimedOut", "Rejected", "Canceled", "Removed")
    return [int(details.get(f"numberOf{name}Things", 0)) for name in names]


def _distribution_chart(parsed: Report) -> str:
    """The ack, end-to-end and command latency distributions: each one's share of messages in buckets
    of half a doubling (the histograms' buckets, 24 a doubling, put together in twelves)."""
    histograms = {"ack": parsed.raw.histograms.get("ack"), "end-to-end": parsed.raw.histograms.get("e2e")}
    if parsed.raw.commands is not None:
        histograms["command"] = parsed.raw.commands.latency
    shares: dict[str, dict[int, float]] = {}
    for name, histogram in histograms.items():
        if histogram is None or not histogram.count:
            continue
        bins: dict[int, float] = {}
        for index, n in histogram.buckets.items():
            half_doubling = math.ceil(2 * index / histogram.precision)
            bins[half_doubling] = bins.get(half_doubling, 0.0) + 100.0 * n / histogram.count
        shares[name] = bins
    if not shares:
        return ""
    low = min(min(bins) for bins in shares.values())
    high = max(max(bins) for bins in shares.values())
    chart = pygal.Bar(
        style=_style(_DISTRIBUTION_COLOURS[: len(shares)]),
        js=[],
        width=1000,
        height=340,
        x_title="latency, ms (upper edge of each bucket)",
        y_title="% of messages",
        legend_at_bottom=True,
        x_label_rotation=40,
        show_minor_x_labels=False,
        x_labels_major_every=2,
        print_values=False,
    )
    chart.x_labels = [f"{2 ** (k / 2):.3g}" for k in range(low, high + 1)]
    for name, bins in shares.items():
        chart.add(name, [round(bins.get(k, 0.0), 3) for k in range(low, high + 1)])
    return _chart(
        "Latency distributions",
        "Share of the messages (ack, end-to-end) and commands whose latency fell in each bucket; "
        "buckets are half a doubling wide.",
        _svg(chart),
    )


def _chaos_parts(samples: Sequence[tuple[Mapping[str, Any], Sequence[float]]]) -> list[str]:
    """For faults and for restores, one chart of the share of devices recovered over the seconds after
    each event (a curve per event: its RTO or failback distribution), and the chaos table."""
    parts = []
    for kind, title, caption, of in (
        (
            True,
            "Failover after each fault",
            "Share of the devices the faulted region was serving that published (acknowledged) in another region, "
            "by seconds after the fault: the RTO distribution. A curve below 100% left devices behind.",
            "devices_affected",
        ),
        (
            False,
            "Failback after each restore",
            "Share of the devices a region's fault had sent away that published there again, by seconds after "
            "its restore.",
            "devices_away",
        ),
    ):
        events = [(e, sorted(seconds)) for e, seconds in samples if (e["action"] in FAULTS) == kind and e.get(of)]
        if not events:
            continue
        lines: list[_Line] = []
        for event, seconds in events:
            total = event[of]
            curve = [(0.0, 0.0), *((round(s, 3), round(100.0 * (i + 1) / total, 3)) for i, s in enumerate(seconds))]
            label = f"{event['action']} {event['region']} at {event.get('done_at_s', event.get('at_s', 0.0)):.0f} s"
            lines.append((label, _marker_colour(event), curve, None))
        colours = [_REGION_COLOURS[i % len(_REGION_COLOURS)] for i in range(len(lines))]
        lines = [
            (label, colour, points, stroke) for (label, _, points, stroke), colour in zip(lines, colours, strict=True)
        ]
        svg = _time_chart("% of devices", lines, (), x_title="seconds after the event", high=100.0)
        parts.append(_chart(title, caption, svg))
    rows = []
    for event, _ in samples:
        spread = event.get("rto_s") or event.get("failback_s") or {}
        rows.append(
            [
                event["action"],
                event["region"],
                event.get("done_at_s", event.get("at_s")),
                event.get("devices_affected", event.get("devices_away")),
                event.get("failed_over", event.get("devices_returned")),
                *(spread.get(k) for k in ("p50", "p95", "p99", "max")),
                event.get("lost"),
            ]
        )
    if rows:
        parts.append(
            _table(
                "Chaos",
                ["action", "region", "at s", "devices there / away", "moved / returned",
                 "RTO or failback p50 s", "p95 s", "p99 s", "max s", "lost"],
                rows,
            )
        )  # fmt: skip
    return parts


# ---------------------------------------------------------------------------------------------- tables


def _title(report: Mapping[str, Any]) -> str:
    return f"iotfleet simulate: {report.get('devices', 0):,} devices, {report.get('duration_s', 0.0):.0f} s"


def _header(report: Mapping[str, Any], regions: Sequence[str], first_epoch: int | None, held: bool) -> str:
    config = report.get("config", {})
    shape = config.get("shape", {})
    facts = [f"{report.get('devices', 0):,} devices"]
    if shape.get("sites"):
        facts.append(f"{shape['sites']} sites")
    facts.append(f"{report.get('duration_s', 0.0):.1f} s")
    if regions:
        facts.append("regions " + ", ".join(regions))
    if config.get("merged_from"):
        facts.append(f"merged from {config['merged_from']} shard reports")
    if first_epoch is not None:
        facts.append("started " + dt.datetime.fromtimestamp(first_epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
    verdict = "thresholds held" if held else "thresholds breached"
    return (
        f'<h1>{html.escape(_title(report))}</h1>\n<p class="sub">{html.escape(" · ".join(facts))}</p>\n'
        f'<p><span class="verdict {"held" if held else "breached"}">{verdict}</span></p>'
    )


def _cell(value: Any) -> str:
    if isinstance(value, _Raw):
        return f"<td>{value}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{html.escape(str(value).lower() if value is not None else '-')}</td>"
    if isinstance(value, int | float):
        text = f"{value:,}" if isinstance(value, int) else f"{value:,.3f}".rstrip("0").rstrip(".")
        return f'<td class="num">{text}</td>'
    if isinstance(value, Mapping | list):
        return f"<td>{html.escape(json.dumps(value, sort_keys=True))}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return (
        f"<h2>{html.escape(title)}</h2>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    )


def _tables(report: Mapping[str, Any], regions: Sequence[str]) -> list[str]:
    """Regions, shadow, commands, errors and rejects, and the run's configuration."""
    parts = []
    by_region = report.get("regions", {})
    if by_region:
        keys = sorted({key for counts in by_region.values() for key in counts})
        parts.append(
            _table(
                "Regions", ["region", *keys], [[r, *(by_region.get(r, {}).get(k, 0) for k in keys)] for r in regions]
            )
        )
    shadow = report.get("shadow") or {}
    shadow_rows = [[f"device {k}", v] for k, v in sorted((shadow.get("device") or {}).items())]
    shadow_rows += [
        [f"operator {k}", v] for k, v in sorted((shadow.get("operator") or {}).items()) if k != "pending_devices"
    ]
    if shadow_rows:
        parts.append(_table("Shadow", ["figure", "value"], shadow_rows))
    commands = report.get("commands")
    if commands:
        latency = commands.get("latency_ms", {})
        rows = [[k, commands[k]] for k in ("sent", "delivered", "lost", "not_sent") if k in commands]
        rows += [[f"sent {name}", n] for name, n in sorted(commands.get("by_command", {}).items())]
        rows += [[f"handled {name}", n] for name, n in sorted(commands.get("handled", {}).items())]
        rows += [[f"latency ms {k}", latency.get(k)] for k in ("p50", "p95", "p99", "max") if k in latency]
        parts.append(_table("Commands", ["figure", "value"], rows))
    errors = {k: v for k, v in report.get("errors", {}).items() if k != "total"}
    if errors:
        parts.append(_table("Errors", ["error", "count"], sorted(errors.items(), key=lambda kv: -kv[1])))
    if report.get("rejects"):
        parts.append(_table("Ingest rejects", ["reason", "count"], sorted(report["rejects"].items())))
    config = json.dumps(report.get("config", {}), indent=1, sort_keys=True)
    parts.append(f"<h2>Configuration</h2>\n<pre>{html.escape(config)}</pre>")
    return parts
