"""The simulator's operator: changes devices' desired state through the local cloud's shadow service.

Every ``every_s`` simulated seconds it picks ``fraction`` of the devices (seeded, so runs repeat) and
sets a new desired state from their device type's :class:`~iotfleet.sim.workload.ShadowSpec`, in the
region each device is on: its home region, or while that one is failed the next one in its endpoint
order (an operator fails over too; classic shadows are replicated to the other regions, without a delta,
so the change must be made where the device is connected). At the end :meth:`Operator.reconcile` reads
every changed shadow back: a device is reconciled when its reported values equal the last desired ones.
The lag, from the desired change to the device's report, comes from the shadow's metadata timestamps,
whose resolution is one second (as in AWS IoT Core).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from iotfleet.errors import IotFleetError
from iotfleet.metrics import Histogram
from iotfleet.sim.access import CloudAccess
from iotfleet.sim.fleet import SimDevice, current_region
from iotfleet.sim.workload import DEVICE_TYPES

__all__ = ["Operator"]


class Operator:
    """Sets desired state for a fraction of the fleet on a schedule; checks it was applied."""

    def __init__(
        self,
        cloud: CloudAccess,
        regions: Sequence[str],
        devices: Sequence[SimDevice],
        *,
        fraction: float,
        every_s: float,
        speed: float,
        seed: int = 0,
    ) -> None:
        self.cloud = cloud
        self.regions = list(regions)
        self.devices = [d for d in devices if DEVICE_TYPES[d.device_type].shadow is not None]
        self.fraction = fraction
        self.every_real_s = every_s / speed
        self.rng = random.Random(seed)
        self.desired: dict[str, dict[str, Any]] = {}  # thing -> the last desired values set
        self.changes = 0
        self.errors: Counter[str] = Counter()
        self.rounds = 0

    def region_name(self, device: SimDevice, failed: Collection[str]) -> str:
        """Where ``device`` is: its home region, else the first that is not failed in its endpoint order."""
        return current_region(device.home, self.regions, failed)

    def tick(self, elapsed_s: float, failed: Collection[str], *, until_s: float | None = None) -> None:
        """Run every round that is due by ``elapsed_s`` real seconds into the run (none after ``until_s``)."""
        if self.fraction <= 0 or not self.devices:
            return
        while (self.rounds + 1) * self.every_real_s <= elapsed_s:
            self.rounds += 1
            if until_s is not None and self.rounds * self.every_real_s > until_s:
                return
            self.change(self.fraction, failed)

    def change(self, fraction: float, failed: Collection[str] = ()) -> None:
        """Set a new desired state now for ``fraction`` of the devices (at least one), picked at random."""
        count = min(len(self.devices), max(1, math.ceil(fraction * len(self.devices))))
        devices = self.rng.sample(self.devices, count)
        for device in devices:
            spec = DEVICE_TYPES[device.device_type].shadow
            if spec is None:
                continue
            desired = spec.desired(self.rng)
            try:
                self.cloud.shadow_update(self.region_name(device, failed), device.thing, desired)
            except IotFleetError as exc:
                self.errors[type(exc).__name__] += 1
                continue
            self.changes += 1
            self.desired[device.thing] = {**self.desired.get(device.thing, {}), **desired}

    def reconcile(self, failed: Collection[str] = ()) -> dict[str, Any]:
        """Which changed devices reported their last desired values, and how long they took (seconds)."""
        lag = Histogram()
        pending: list[str] = []
        by_thing = {d.thing: d for d in self.devices}
        for thing, desired in sorted(self.desired.items()):
            try:
                document = self.cloud.shadow_get(self.region_name(by_thing[thing], failed), thing)
            except IotFleetError as exc:
                self.errors[f"read back: {type(exc).__name__}"] += 1
                pending.append(thing)
                continue
            reported = document["state"].get("reported", {})
            if any(reported.get(key) != value for key, value in desired.items()):
                pending.append(thing)
                continue
            meta = document["metadata"]
            seconds = max(
                meta["reported"][key]["timestamp"] - meta.get("desired", {}).get(key, {}).get("timestamp", 0)
                for key in desired
            )
            lag.add(max(0, seconds) * 1000)
        return {
            "changes": self.changes,
            "devices_changed": len(self.desired),
            "reconciled": len(self.desired) - len(pending),
            "pending": len(pending),
            "pending_devices": pending[:20],
            "errors": dict(self.errors),
            "lag": lag,
        }
