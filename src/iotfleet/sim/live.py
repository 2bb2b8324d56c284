"""The live view while a simulation runs (rich): one row per region (its state, devices connected, acked
msg/s), the fleet's totals, msg/s, p99, outbox, errors, and each chaos event as it happens.

Drawn only when stdout is a terminal; otherwise the run is quiet until the summary.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from iotfleet.sim.simulate import Progress

__all__ = ["LiveView"]


class LiveView:
    """Call it with each :class:`Progress`; it redraws at most twice a second."""

    def __init__(self, total_devices: int, console: Console | None = None) -> None:
        self.console = console or Console()
        self.enabled = self.console.is_terminal
        self.total = total_devices
        self._live: Live | None = None
        self._last_draw = 0.0
        self._last: tuple[float, float, dict[str, int]] | None = None
        self._rate = 0.0
        self._region_rates: dict[str, float] = {}

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._live = Live(self._table(Progress()), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if self._live is None or now - self._last_draw < 0.5:
            return
        self.observe(progress, now)
        self._last_draw = now
        self._live.update(self.render(progress))

    def observe(self, progress: Progress, now: float) -> None:
        """Take the figures at ``now`` (monotonic seconds): the acked rates come from two observations."""
        acked, by_region = progress.total("acked"), progress.by_region("acked_by_region")
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            self._rate = (acked - self._last[1]) / elapsed
            self._region_rates = {r: (n - self._last[2].get(r, 0)) / elapsed for r, n in by_region.items()}
        self._last = (now, acked, by_region)

    def render(self, progress: Progress) -> Group:
        """The regions' table and the fleet's, as of the last observation."""
        return Group(self._regions(progress), self._table(progress))

    def _regions(self, progress: Progress) -> Table:
        """One row per region: up or failed (by the chaos schedule), devices connected, acked msg/s."""
        table = Table("region", "state", "connected", "acked msg/s", title="regions")
        connected = progress.by_region()
        for region in sorted({*connected, *self._region_rates, *progress.failed}):
            state = next(
                (
                    e["action"]
                    for e in reversed(progress.chaos_done)
                    if e["region"] == region and region in progress.failed
                ),
                "up",
            )
            table.add_row(region, state, f"{connected.get(region, 0):,}", f"{self._region_rates.get(region, 0.0):,.0f}")
        return table

    def _table(self, progress: Progress) -> Table:
        table = Table(title=f"iotfleet simulate — {time.monotonic() - progress.started:,.0f} s", show_header=False)
        started = progress.total("started")
        bar = Text(f"{started:,.0f} / {self.total:,} " + _bar(started / max(1, self.total)))  # no markup: [###]
        table.add_row("devices started", bar)
        provisioned = progress.total("provisioned")
        if provisioned:
            table.add_row("provisioned", f"{provisioned:,.0f}")
        table.add_row("sent / acked", f"{progress.total('sent'):,.0f} / {progress.total('acked'):,.0f}")
        table.add_row("acked msg/s", f"{self._rate:,.0f}")
        p99 = max((s.get("p99_ack_ms", 0) for s in progress.snapshots.values()), default=0)
        table.add_row("ack p99 (worst worker)", f"{p99:,.1f} ms")
        table.add_row("outbox depth", f"{progress.total('outbox'):,.0f}")
        table.add_row("errors", f"{progress.total('errors'):,.0f}")
        for event in progress.chaos_done:
            table.add_row("chaos", f"{event['action']} {event['region']} at {event['done_at_s']:.1f} s")
        total = sum(progress.by_region().values())
        table.add_row("connected (all regions)", f"{total:,}")
        return table


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(min(1.0, fraction) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"
