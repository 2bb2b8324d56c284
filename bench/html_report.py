"""What the HTML report costs: the CPU to render a report's page and the page's size, against writing
the same report's JSON (what every run with --report already pays), in the same process.

    python bench/html_report.py REPORT.json [--rounds 5]

The page is drawn after the run from the report's JSON document, so it adds nothing while a run goes
on; its cost is this render once at the end. CPU is this process's user+system time, best of --rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

from iotfleet.sim.html_report import html_report


def best_cpu_s(work: Callable[[], str], rounds: int) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(rounds):
        start = time.process_time()
        out = work()
        best = min(best, time.process_time() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(
        f"report: {args.report.name}: {report['devices']:,} devices, {report['duration_s']:.0f} s, "
        f"{len(report.get('timeseries', [])):,} time series rows, {len(report.get('chaos', []))} chaos events"
    )
    json_s, text = best_cpu_s(lambda: json.dumps(report, indent=1), args.rounds)
    html_s, page = best_cpu_s(lambda: html_report(report), args.rounds)
    print(f"| output | CPU s (best of {args.rounds}) | size |")
    print("| --- | ---: | ---: |")
    print(f"| JSON report (baseline) | {json_s:.3f} | {len(text.encode()) / 1e3:,.0f} KB |")
    print(f"| HTML report | {html_s:.3f} | {len(page.encode()) / 1e3:,.0f} KB |")
    print(f"ratio HTML/JSON: CPU {html_s / json_s:.2f}x, size {len(page) / len(text):.3f}x")


if __name__ == "__main__":
    main()
