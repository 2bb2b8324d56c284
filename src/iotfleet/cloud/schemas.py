"""The schemas of device data the ingest checks, and the strict JSON it accepts.

Strict means: the payload is JSON as RFC 8259 defines it (Python's :mod:`json` also accepts ``NaN``,
``Infinity`` and ``-Infinity``, and turns ``1e400`` into ``inf``: all are refused here), every field
has its type (``true`` is not a number, although ``bool`` is an ``int`` in Python) and every number
is within its range. A payload that breaks a rule is refused with the reason, which the ingest keeps
with the payload as sent.
"""

from __future__ import annotations

import math
from typing import Any, Final

from iotfleet.shadow.document import NotJson, loads_strict

__all__ = ["EVENTS", "METRICS", "RANGES", "SCHEMAS", "NotJson", "loads_strict", "rejection_reason"]

_NUMBER = (int, float)
SCHEMAS: Final[dict[str, dict[str, tuple[type, ...]]]] = {
    "telemetry": {
        "ts": _NUMBER,
        "power_w": _NUMBER,
        "dim": (int,),
        "lux": _NUMBER,
        "occupancy": (bool,),
        "temperature_c": _NUMBER,
    },
    "usage": {"ts": _NUMBER, "period_s": _NUMBER, "energy_wh": _NUMBER},
    "fault": {"ts": _NUMBER, "code": (str,), "severity": (str,)},
    "spike": {"ts": _NUMBER, "power_w": _NUMBER, "baseline_w": _NUMBER},
}
METRICS: Final = {"telemetry": ("power_w", "dim", "lux", "temperature_c"), "usage": ("energy_wh",)}
EVENTS: Final = frozenset({"fault", "spike"})

# Inclusive ranges of every number a stream carries: physically plausible for a luminaire, and far
# inside what SQLite's INTEGER and REAL hold (so a stored value is always a finite JSON number).
RANGES: Final[dict[str, tuple[float, float]]] = {
    "ts": (0, 32_503_680_000),  # epoch seconds up to the year 3000
    "power_w": (0, 100_000),
    "baseline_w": (0, 100_000),
    "dim": (0, 100),
    "lux": (0, 200_000),  # full sunlight is about 100,000 lux
    "temperature_c": (-100, 200),
    "period_s": (0, 32_503_680_000),  # a device's first report counts from the epoch
    "energy_wh": (0, 1e9),
}
MAX_TEXT: Final = 256  # characters of a string field (a fault code, a severity)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def rejection_reason(stream: str, body: Any) -> str | None:  # noqa: PLR0911 - one return per rule
    """None when ``body`` fits the stream's schema, else the reason (kept with the reject)."""
    schema = SCHEMAS.get(stream)
    if schema is None:
        return f"unknown stream {stream!r}"
    if not isinstance(body, dict):
        return "payload is not a JSON object"
    for key, types in schema.items():
        value = body.get(key)
        if value is None:
            return f"missing field {key!r}"
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            return f"field {key!r} has type {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"field {key!r} is {value}, not a finite number"
        bounds = RANGES.get(key)
        if bounds is not None and isinstance(value, int | float) and not bounds[0] <= value <= bounds[1]:
            return f"{key} {value} is outside {_number(bounds[0])}-{_number(bounds[1])}"
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return f"field {key!r} is longer than {MAX_TEXT} characters"
    return None
