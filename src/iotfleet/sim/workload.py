"""What a simulated device does, declared as paced tasks, and the payload schemas the ingest checks.

A :class:`DeviceType` is a list of :class:`Task` s: each runs every ``every_s`` simulated seconds on
average (exponential gaps when ``poisson``, else fixed with ±10% jitter) and builds one payload from the
device's state and its own random stream, or None to skip that turn. A user adds a device type in a few
lines::

    SENSOR = DeviceType("co2-sensor", tasks=(Task("telemetry", 60, lambda d, rng, now: {"co2": 400 + rng.random()}),))

A device type may also use its classic shadow (:class:`ShadowSpec`): the state it reports when a
session starts, how it applies each desired key, and what an operator would set; tasks marked
``to_shadow`` report their payload to the shadow instead of publishing it to a data stream.

``--speed X`` divides every interval by X. The luminaire's telemetry is sized so that one 40-device site
sends about 100 MB a day: 40 x 8,640 messages of ~290 bytes (see :func:`bytes_per_site_day`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from iotfleet.cloud.schemas import SCHEMAS, rejection_reason
from iotfleet.sim.fleet import SimDevice

__all__ = [
    "COMMANDS",
    "DEVICE_TYPES",
    "IDENTIFY",
    "LUMINAIRE",
    "REBOOT",
    "SCHEMAS",
    "DeviceType",
    "LuminaireState",
    "ShadowSpec",
    "Task",
    "bytes_per_site_day",
    "rejection_reason",
]

# The commands a device acts on (sent by the simulator's operator, sim/commands.py): identify blinks the
# lamp; reboot takes it offline for the payload's offline_s, then it starts over (DeviceClient.reboot).
IDENTIFY: Final = "identify"
REBOOT: Final = "reboot"
COMMANDS: Final = (IDENTIFY, REBOOT)

Builder = Callable[[Any, random.Random, float], Mapping[str, Any] | None]
DAY_S: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class Task:
    """Publish to ``stream`` every ``every_s`` simulated seconds; ``build`` makes the payload (or None).

    With ``to_shadow`` the payload is reported to the device's classic shadow instead.
    """

    stream: str
    every_s: float
    build: Builder
    poisson: bool = False
    to_shadow: bool = False

    def next_gap(self, rng: random.Random) -> float:
        if self.poisson:
            return rng.expovariate(1.0 / self.every_s)
        return self.every_s * (0.9 + 0.2 * rng.random())


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    """How a device type keeps its classic shadow.

    ``reported(state)`` is published when the device starts (and again after every new session);
    ``apply[key](state, value)`` applies a desired value and returns the value to report (None: as
    desired); ``desired(rng)`` is what the simulator's operator sets for a device of this type.
    """

    reported: Callable[[Any], dict[str, Any]]
    apply: Mapping[str, Callable[[Any, Any], Any]]
    desired: Callable[[random.Random], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A kind of device: its tasks, how to make one device's mutable state, and its shadow (if any)."""

    name: str
    tasks: tuple[Task, ...]
    new_state: Callable[[SimDevice, random.Random], Any] = field(default=lambda _d, _rng: None)
    shadow: ShadowSpec | None = None


# --------------------------------------------------------------------------- the luminaire


@dataclass(slots=True)
class LuminaireState:
    """One luminaire: its dim level (set through the shadow), health and energy counter."""

    device: SimDevice
    dim: int
    rated_w: float
    energy_wh: float = 0.0
    last_usage_at: float = 0.0
    faulty: bool = False
    firmware: str = "2.4.1"


def _new_luminaire(device: SimDevice, rng: random.Random) -> LuminaireState:
    return LuminaireState(device, dim=rng.choice([40, 60, 80, 100]), rated_w=rng.choice([18.0, 24.0, 36.0]))


def _power(state: LuminaireState, rng: random.Random) -> float:
    return 0.0 if state.faulty else round(state.rated_w * state.dim / 100 * (0.97 + 0.06 * rng.random()), 2)


def _telemetry(state: LuminaireState, rng: random.Random, now: float) -> dict[str, Any]:
    power = _power(state, rng)
    state.energy_wh += power * 10 / 3600
    occupied = rng.random() < 0.4
    return {
        "ts": round(now, 3),
        "power_w": power,
        "dim": state.dim,
        "lux": round(state.dim * 5.2 * (0.9 + 0.2 * rng.random()), 1),
        "occupancy": occupied,
        "temperature_c": round(21 + 4 * rng.random(), 2),
        "voltage_v": round(229 + 3 * rng.random(), 1),
        "current_a": round(power / 230, 4),
        "power_factor": round(0.92 + 0.06 * rng.random(), 3),
        "driver_temp_c": round(38 + 10 * rng.random(), 1),
        "building": state.device.building,
        "room": state.device.room,
        "asset": state.device.asset,
        "firmware": state.firmware,
        "rssi_dbm": -rng.randint(45, 85),
        "uptime_s": int(now) % 1_000_000,
    }


def _usage(state: LuminaireState, _rng: random.Random, now: float) -> dict[str, Any]:
    report = {
        "ts": round(now, 3),
        "period_s": round(now - state.last_usage_at, 1),
        "energy_wh": round(state.energy_wh, 3),
    }
    state.energy_wh, state.last_usage_at = 0.0, now
    return report


def _fault(state: LuminaireState, rng: random.Random, now: float) -> dict[str, Any]:
    if state.faulty:  # a failed lamp is repaired before it fails again
        state.faulty = False
        return {"ts": round(now, 3), "code": "repaired", "severity": "info"}
    state.faulty = rng.random() < 0.5
    code = "lamp-failure" if state.faulty else "driver-overheat"
    return {"ts": round(now, 3), "code": code, "severity": "critical" if state.faulty else "warning"}


def _spike(state: LuminaireState, rng: random.Random, now: float) -> dict[str, Any]:
    baseline = _power(state, rng)
    return {"ts": round(now, 3), "power_w": round(baseline * (2 + 3 * rng.random()), 2), "baseline_w": baseline}


def _health(state: LuminaireState) -> dict[str, Any]:
    return {"faulty": state.faulty, "firmware": state.firmware}


def _status(state: LuminaireState, _rng: random.Random, _now: float) -> dict[str, Any]:
    return _health(state)


def _shadow_state(state: LuminaireState) -> dict[str, Any]:
    return {"dim": state.dim, **_health(state)}


def _set_dim(state: LuminaireState, value: Any) -> int:
    """Apply a desired dim level; a value that is not a number 0-100 leaves the lamp as it is (and says so)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        state.dim = int(value)
    return state.dim


LUMINAIRE: Final = DeviceType(
    "luminaire",
    tasks=(
        Task("telemetry", 10.0, _telemetry),
        Task("usage", 3600.0, _usage),
        Task("fault", 6 * 3600.0, _fault, poisson=True),
        Task("spike", 2 * 3600.0, _spike, poisson=True),
        Task("status", 3600.0, _status, poisson=True, to_shadow=True),
    ),
    new_state=_new_luminaire,
    shadow=ShadowSpec(
        reported=_shadow_state,
        apply={"dim": _set_dim},
        desired=lambda rng: {"dim": rng.randrange(0, 101, 10)},
    ),
)
DEVICE_TYPES: Final[dict[str, DeviceType]] = {"luminaire": LUMINAIRE}


def bytes_per_site_day(devices_per_site: int = 40, samples: int = 200) -> float:
    """Estimated payload bytes a site sends per simulated day (mean payload size x rate, per task)."""
    rng = random.Random(7)
    device = SimDevice("site-0001-b1-r01-a01", "tenant-01", "site-0001", 0, 1, 1, 1, 7)
    state = _new_luminaire(device, rng)
    total = 0.0
    for task in (t for t in LUMINAIRE.tasks if not t.to_shadow):
        sizes = [len(json.dumps(task.build(state, rng, 1.7e9 + i))) for i in range(samples)]
        total += sum(sizes) / len(sizes) * DAY_S / task.every_s
    return total * devices_per_site
