"""The smart-lighting fleet: tenants → sites → buildings → rooms → assets, generated from a seed.

A site has ``buildings x rooms x assets`` luminaires (default 2 x 5 x 4 = 40). Sites are spread over the
tenants round-robin, so ``--sites 50`` with 4 tenants gives 2,000 devices over 4 tenants. The same
shape and seed always give the same fleet: names, the order of sites and every device's random stream.
Thing names are ``<site>-b<building>-r<room>-a<asset>``, valid IoT Core thing names and topic levels.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iotfleet.config import Endpoint
from iotfleet.errors import ConfigError

__all__ = [
    "FleetShape",
    "Placement",
    "SimDevice",
    "build_fleet",
    "current_region",
    "home_first",
    "home_regions",
    "shard_of",
    "site_name",
]


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
    home: str = ""  # the region its endpoint list starts with (set by the simulation's placement)
    https: bool = False  # publishes its data over HTTPS only, with no MQTT connection (--https-fraction)


def build_fleet(shape: FleetShape) -> list[SimDevice]:
    """Every device of the fleet, site by site, deterministically."""
    return list(_devices(shape))


def _devices(shape: FleetShape) -> Iterator[SimDevice]:
    for s in range(shape.sites):
        site = site_name(shape, s)
        tenant = f"tenant-{s % shape.tenants + 1:02d}"
        for b in range(1, shape.buildings + 1):
            for r in range(1, shape.rooms + 1):
                for a in range(1, shape.assets + 1):
                    thing = f"{site}-b{b}-r{r:02d}-a{a:02d}"
                    seed = hash((shape.seed, s, b, r, a)) & 0x7FFFFFFF
                    yield SimDevice(thing, tenant, site, s, b, r, a, seed)


class Placement(BaseModel):
    """Where sites live: the fleet file's ``[placement]``. ``weights`` (region -> share, default equal)
    spread the sites over the regions as latency-based routing would spread a fleet; ``sites`` pins
    named sites (``"site-0003" = "us-east-1"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, float] = Field(default_factory=dict)
    sites: dict[str, str] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for region, weight in value.items():
            if not weight > 0:
                raise ValueError(f"the weight of {region} must be > 0 (leave a region out to home no site there)")
        return value

    def check(self, regions: Sequence[str]) -> None:
        """Every region named is one of the run's (:class:`ConfigError` otherwise)."""
        named = {*self.weights, *self.sites.values()}
        unknown = sorted(named - set(regions))
        if unknown:
            raise ConfigError(f"[placement] names {', '.join(unknown)}; the regions are {', '.join(regions)}")


def site_name(shape: FleetShape, index: int) -> str:
    """The name of site ``index`` (from 0): ``site-0001``, ..."""
    return f"site-{index + 1:0{max(4, len(str(shape.sites)))}d}"


def home_regions(shape: FleetShape, regions: Sequence[str], placement: Placement | None = None) -> list[str]:
    """Each site's home region, by site index, for the whole fleet (every shard computes the same).

    Pinned sites go where ``placement.sites`` says; the others are dealt out in site order by smooth
    weighted round robin over ``placement.weights`` (default: every region equally), so the count per
    region follows the weights at every prefix of the fleet, and equal weights alternate.
    """
    placement = placement or Placement()
    placement.check(regions)
    weights = placement.weights or dict.fromkeys(regions, 1.0)
    order = [r for r in regions if r in weights]  # the configured order breaks ties
    total = sum(weights.values())
    credit = dict.fromkeys(order, 0.0)
    homes = []
    for index in range(shape.sites):
        pinned = placement.sites.get(site_name(shape, index))
        if pinned is not None:
            homes.append(pinned)
            continue
        for region in order:
            credit[region] += weights[region]
        chosen = max(order, key=lambda r: credit[r])
        credit[chosen] -= total
        homes.append(chosen)
    return homes


def home_first(endpoints: Sequence[Endpoint], home: str) -> list[Endpoint]:
    """``endpoints`` with those of region ``home`` first, the others after in their given order."""
    return [e for e in endpoints if e.region == home] + [e for e in endpoints if e.region != home]


def current_region(home: str, regions: Sequence[str], failed: Collection[str]) -> str:
    """Where a device homed in ``home`` is expected to be: its home, else the first region that is not
    failed in its endpoint order (home first, then ``regions`` in order); its home when all are failed."""
    order = [home, *(r for r in regions if r != home)] if home in regions else list(regions)
    return next((r for r in order if r not in failed), order[0])


SHARD_INDEX_VARIABLES: Final = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX")  # Kubernetes, AWS Batch


def parse_shard(text: str, environ: Mapping[str, str]) -> tuple[int, int]:
    """``i/n`` as ``(i, n)``; ``auto/n`` takes ``i`` from the Indexed Job's ``JOB_COMPLETION_INDEX``
    (Kubernetes) or the array job's ``AWS_BATCH_JOB_ARRAY_INDEX`` (AWS Batch). Checked: 0 <= i < n."""
    index, sep, count = text.partition("/")
    if not sep or not count.isdigit() or not (index.isdigit() or index == "auto"):
        raise ConfigError(f"--shard {text!r} is not i/n or auto/n (e.g. 0/4, auto/4)")
    if index == "auto":
        found = next(((name, environ[name]) for name in SHARD_INDEX_VARIABLES if name in environ), None)
        if found is None:
            raise ConfigError(
                f"--shard auto/{count} takes its index from {' or '.join(SHARD_INDEX_VARIABLES)}, and neither is "
                "set: run it as an Indexed Job's pod (or an array job), or give the index (--shard 0/4)"
            )
        name, value = found
        if not value.isdigit():
            raise ConfigError(f"--shard auto/{count}: {name} is {value!r}, not a shard index")
        index = value
    shard = int(index), int(count)
    if not 0 <= shard[0] < shard[1]:
        raise ConfigError(f"shard {shard[0]}/{shard[1]} is not valid: use i/n with 0 <= i < n, e.g. --shard 0/4")
    return shard


def shard_of(devices: list[SimDevice], index: int, count: int) -> list[SimDevice]:
    """The devices of shard ``index`` of ``count`` (``--shard index/count``): whole sites, round-robin."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count} is not valid: use i/n with 0 <= i < n, e.g. --shard 0/4")
    return [d for d in devices if d.site_index % count == index]
