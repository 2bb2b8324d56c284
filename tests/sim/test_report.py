"""Merging the report's shadow figures across workers and shards."""

from __future__ import annotations

from typing import Any

from iotfleet.sim.report import _add_shadow


def test_shadow_figures_add_up_and_a_zero_stays_a_measured_zero() -> None:
    total: dict[str, Any] = {"device": {}, "operator": None}
    _add_shadow(total, {"device": {"get": 2, "report_failures": 0}})
    _add_shadow(total, {"device": {"get": 1, "report_failures": 0}, "operator": None})
    operator = {"changes": 3, "devices_changed": 2, "reconciled": 2, "pending": 0, "errors": {"ShadowRejected": 0}}
    _add_shadow(total, {"operator": {**operator, "pending_devices": []}})
    _add_shadow(total, {"operator": {**operator, "pending": 1, "reconciled": 1, "pending_devices": ["lamp-9"]}})
    assert total["device"] == {"get": 3, "report_failures": 0}
    assert total["operator"] == {
        "changes": 6,
        "devices_changed": 4,
        "reconciled": 3,
        "pending": 1,
        "pending_devices": ["lamp-9"],
        "errors": {"ShadowRejected": 0},
    }
