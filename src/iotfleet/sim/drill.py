"""``iotfleet drill failover``: a preset simulation that fails the fleet's region and measures recovery.

The fleet runs on region 1; after ``warmup_s`` region 1 is killed or blackholed, and every device's
recovery time (RTO) runs from the fault to its first publish acknowledged by region 2. Loss and
duplicates come from the ingest, as in any simulation; so does the shadow reconciliation of the
desired changes the operator makes while the region is down.
"""

from __future__ import annotations

import math
from typing import Any

from iotfleet.cloud.control import Action, Outage
from iotfleet.cloud.local import DEFAULT_REGIONS
from iotfleet.config import PublishLimits, ReconnectPolicy
from iotfleet.errors import ConfigError
from iotfleet.sim.fleet import FleetShape, Placement
from iotfleet.sim.runner import default_workers
from iotfleet.sim.simulate import LOCAL_RECONNECT, ChaosEvent, SimConfig, Simulation
from iotfleet.sim.workload import DEVICE_TYPES

__all__ = ["drill_config", "drill_speed", "run_drill"]


def drill_speed(rate: float, device_type: str = "luminaire") -> float:
    """The speed at which a device's telemetry comes ``rate`` times per real second.

    Telemetry every 10 simulated s at speed 10 x rate: ``rate`` messages per real second.
    """
    telemetry = next(t for t in DEVICE_TYPES[device_type].tasks if t.stream == "telemetry")
    return rate * telemetry.every_s


def drill_config(
    *,
    devices: int,
    rate: float,
    mode: str,
    warmup_s: float = 5.0,
    observe_s: float = 15.0,
    transport: str = "crt",
    workers: int | None = None,
    reconnect: ReconnectPolicy | None = None,
    standby: bool = False,
) -> SimConfig:
    """The drill as a simulation: ``devices`` on region 1 publishing ``rate`` messages/s each, region 1
    failed (``kill`` or ``blackhole``) after ``warmup_s``, observed for ``observe_s`` more; every device
    gets a new desired state while its region is down. With ``standby`` every device keeps a standby
    session open to region 2 (:class:`~iotfleet.config.ReconnectPolicy` ``standby``)."""
    if mode not in tuple(Outage):
        raise ConfigError("--mode is kill or blackhole")
    if devices < 1 or rate <= 0:
        raise ConfigError("--devices must be >= 1 and --rate > 0")
    assets = min(devices, 40)
    shape = FleetShape(sites=math.ceil(devices / assets), tenants=1, buildings=1, rooms=1, assets=assets)
    regions = list(DEFAULT_REGIONS)
    policy = reconnect or LOCAL_RECONNECT
    if standby:
        policy = policy.model_copy(update={"standby": True})
    return SimConfig(
        shape=shape,
        duration_s=warmup_s + observe_s,
        speed=drill_speed(rate),
        workers=workers or default_workers(),
        transport=transport,
        chaos=[ChaosEvent(Action(mode), regions[0], warmup_s)],
        regions=regions,
        placement=Placement(weights={regions[0]: 1.0}),  # every device homed in the region that fails
        reconnect=policy,
        limits=PublishLimits(enabled=False),
        operator_fraction=0.0,
        operator_on_fault=1.0,  # every device gets a new desired dim level while its region is down
    )


def run_drill(config: SimConfig) -> dict[str, Any]:
    """Run a drill's simulation (:func:`drill_config`); report RTO (fault to first publish acknowledged by
    region 2), loss, duplicates, how the fault was detected and the shadow reconciliation."""
    mode, policy = Outage(config.chaos[0].action), config.reconnect or LOCAL_RECONNECT
    report = Simulation(config).run()
    fault = next(e for e in report["chaos"] if e["action"] == mode)  # measured as in any run (report.chaos_effects)
    return {
        "mode": mode,
        "standby": policy.standby,
        "devices": report["devices"],
        "sent": report["sent"],
        "acked": report["acked"],
        "ingested": report["ingested"],
        "lost": report["lost"],
        "duplicates": report["duplicates"],
        "failed_over": fault["failed_over"],
        "rto_s": fault["rto_s"] or {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0},
        "detection": f"{mode}: "
        + (
            "connection reset"
            if mode == Outage.KILL
            else f"PUBACK or PINGRESP {policy.ping_timeout_s} s late (keepalive {policy.keepalive_s} s)"
        ),
        "shadow": _drill_shadow(report),
        "report": {k: v for k, v in report.items() if k != "raw"},
    }


def _drill_shadow(report: dict[str, Any]) -> dict[str, Any] | None:
    """Shadow reconciliation in the drill: desired changes made during the fault, applied after failover."""
    operator = report["shadow"]["operator"]
    if operator is None:
        return None
    lag = report["latency_ms"]["shadow_sync"]
    return {
        "changed": operator["devices_changed"],
        "reconciled": operator["reconciled"],
        "pending": operator["pending"],
        "sync_s": {k: round(lag[k] / 1000, 1) for k in ("p50", "p95", "max")} if lag["count"] else None,
        "resyncs": report["shadow"]["device"].get("resyncs", 0),
    }
