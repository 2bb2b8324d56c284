"""The smart-lighting fleet: tenants → sites → buildings → rooms → assets, generated from a seed.

A site has ``buildings x rooms x assets`` luminaires (default 2 x 5 x 4 = 40). Sites are spread over the
tenants round-robin, so ``--sites 50`` with 4 tenants gives 2,000 devices over 4 tenants. The same
shape and seed always give the same fleet: names, the order of sites and every device's random stream.
Thing names are ``<site>-b<building>-r<room>-a<asset>``, valid IoT Core thing names and topic levels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from iotfleet.errors import ConfigError

__all__ = ["FleetShape", "SimDevice", "build_fleet", "shard_of"]


class FleetShape(BaseModel):
    """How big the fleet is; every count at least 1 (an integer: ``sites = true`` or ``2.5`` is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    sites: int = Field(default=1, ge=1)
    tenants: int = Field(default=4, ge=1)
    buildings: int = Field(default=2, ge=1)
    rooms: int = Field(default=5, ge=1)
    assets: int = Field(default=4, ge=1)
    seed: int = 1

    @property
    def devices_per_site(self) -> int:
        return self.buildings * self.rooms * self.assets

    @property
    def devices(self) -> int:
        return self.sites * self.devices_per_site


@dataclass(frozen=True, slots=True)
class SimDevice:
    """One simulated luminaire: where it is, and the seed of its own random stream."""

    thing: str
    tenant: str
    site: str
    site_index: int
    building: int
    room: int
    asset: int
    seed: int
    device_type: str = "luminaire"


def build_fleet(shape: FleetShape) -> list[SimDevice]:
    """Every device of the fleet, site by site, deterministically."""
    return list(_devices(shape))


def _devices(shape: FleetShape) -> Iterator[SimDevice]:
    width = max(4, len(str(shape.sites)))
    for s in range(shape.sites):
        site = f"site-{s + 1:0{width}d}"
        tenant = f"tenant-{s % shape.tenants + 1:02d}"
        for b in range(1, shape.buildings + 1):
            for r in range(1, shape.rooms + 1):
                for a in range(1, shape.assets + 1):
                    thing = f"{site}-b{b}-r{r:02d}-a{a:02d}"
                    seed = hash((shape.seed, s, b, r, a)) & 0x7FFFFFFF
                    yield SimDevice(thing, tenant, site, s, b, r, a, seed)


def shard_of(devices: list[SimDevice], index: int, count: int) -> list[SimDevice]:
    """The devices of shard ``index`` of ``count`` (``--shard index/count``): whole sites, round-robin."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count} is not valid: use i/n with 0 <= i < n, e.g. --shard 0/4")
    return [d for d in devices if d.site_index % count == index]
