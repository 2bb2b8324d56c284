"""The live view: one row per region with its state, devices connected and acked rate; chaos as it happens."""

from __future__ import annotations

import io

from rich.console import Console

from iotfleet.sim.live import LiveView
from iotfleet.sim.simulate import Progress


def rendered(view: LiveView, progress: Progress) -> str:
    out = io.StringIO()
    Console(file=out, width=120, force_terminal=False, color_system=None).print(view.render(progress))
    return out.getvalue()


def test_each_region_has_its_row_and_a_failed_region_says_how() -> None:
    progress = Progress()
    view = LiveView(80, Console(file=io.StringIO()))
    progress.snapshots = {0: {"acked": 0, "acked_by_region": {"eu-west-1": 0, "us-east-1": 0}}}
    view.observe(progress, now=10.0)
    progress.snapshots = {
        0: {"started": 40, "acked": 100, "by_region": {"eu-west-1": 0, "us-east-1": 30}, "acked_by_region": {}},
        1: {"started": 40, "acked": 50, "by_region": {"us-east-1": 40}, "acked_by_region": {"us-east-1": 246}},
    }
    progress.failed = {"eu-west-1"}
    progress.chaos_done = [{"action": "kill", "region": "eu-west-1", "done_at_s": 4.0}]
    view.observe(progress, now=12.0)
    text = rendered(view, progress)
    assert "eu-west-1 │ kill" in text.replace("  ", " ").replace("  ", " ")
    assert "us-east-1" in text
    assert "70" in text  # connected in us-east-1: 30 + 40
    assert "123" in text
    assert "kill eu-west-1 at 4.0 s" in text
    assert "connected (all regions)" in text
    assert "80 / 80 [####################]" in text  # the ramp's bar, shown as it is (not taken for markup)
