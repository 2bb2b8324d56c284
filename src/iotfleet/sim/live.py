"""The live view while a simulation runs (rich): devices connected per region, msg/s, p99, outbox, errors.

Drawn only when stdout is a terminal; otherwise the run is quiet until the summary.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

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
        self._last: tuple[float, float] | None = None
        self._rate = 0.0

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
        acked = progress.total("acked")
        if self._last is not None and now > self._last[0]:
            self._rate = (acked - self._last[1]) / (now - self._last[0])
        self._last, self._last_draw = (now, acked), now
        self._live.update(self._table(progress))

    def _table(self, progress: Progress) -> Table:
        table = Table(title=f"iotfleet simulate — {time.monotonic() - progress.started:,.0f} s", show_header=False)
        started = progress.total("started")
        table.add_row("devices started", f"{started:,.0f} / {self.total:,} " + _bar(started / max(1, self.total)))
        provisioned = progress.total("provisioned")
        if provisioned:
            table.add_row("provisioned", f"{provisioned:,.0f}")
        for region, n in sorted(progress.by_region().items()):
            table.add_row(f"connected {region}", f"{n:,}")
        table.add_row("sent / acked", f"{progress.total('sent'):,.0f} / {progress.total('acked'):,.0f}")
        table.add_row("acked msg/s", f"{self._rate:,.0f}")
        p99 = max((s.get("p99_ack_ms", 0) for s in progress.snapshots.values()), default=0)
        table.add_row("ack p99 (worst worker)", f"{p99:,.1f} ms")
        table.add_row("outbox depth", f"{progress.total('outbox'):,.0f}")
        table.add_row("errors", f"{progress.total('errors'):,.0f}")
        for event in progress.chaos_done:
            table.add_row("chaos", f"{event['action']} {event['region']} at {event['done_at_s']:.1f} s")
        return table


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(min(1.0, fraction) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"
