"""What the parent and a worker process exchange: the worker's spec, and the kinds of its messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from iotfleet.config import Endpoint, Identity, PublishLimits, ReconnectPolicy
from iotfleet.sim.fleet import SimDevice
from iotfleet.sim.ota import OtaSpec

__all__ = ["ClaimSettings", "WorkerMessage", "WorkerSpec"]


class WorkerMessage(StrEnum):
    """The first item of every ``(kind, worker index, body)`` a worker puts on the results queue."""

    SNAPSHOT = "snapshot"  # body: the live figures (WorkerMetrics.snapshot), about every second
    FINAL = "final"  # body: the worker's WorkerMetrics, once, after it drained and closed its devices
    ERROR = "error"  # body: "<exception type>: <message>", when the worker failed


@dataclass(frozen=True, slots=True)
class ClaimSettings:
    """What ``--provision claim`` needs: the claim identity and the template."""

    claim: Identity
    template: str


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything one worker process needs (picklable)."""

    index: int
    devices: Sequence[SimDevice]
    endpoints: Sequence[Endpoint]
    identity_dir: Path
    ca_file: Path
    speed: float
    duration_s: float | None
    ramp_per_s: float
    reconnect: ReconnectPolicy
    limits: PublishLimits
    transport: str = "crt"
    drain_s: float = 10.0
    claim: ClaimSettings | None = None
    start_at: float = 0.0  # wall clock (epoch) when simulated time starts for every worker
    shadow: bool = True  # run each device type's shadow sync (when it has one)
    publish_rate: float | None = None  # this worker's share of the account-wide publish quota, msg/s
    basic_ingest: str | None = None  # the rule that gets the devices' data by Basic Ingest, if any
    commands: bool = False  # devices subscribe to their commands and act on them
    https_endpoints: Sequence[Endpoint] = ()  # each region's HTTPS publish endpoint, for devices with `https`
    https_template: str | None = None  # the template devices with `https` provision by claim with
    ota: OtaSpec | None = None  # the luminaires take part in this firmware rollout (IoT Jobs)
