"""The fleet model and workload without a broker: determinism, sharding, sizing, schemas."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.config import Endpoint
from iotfleet.errors import ConfigError
from iotfleet.sim.drill import drill_speed
from iotfleet.sim.fleet import FleetShape, Placement, build_fleet, home_first, home_regions, parse_shard, shard_of
from iotfleet.sim.settings import load_settings
from iotfleet.sim.simulate import SimConfig, Simulation, parse_chaos, parse_duration
from iotfleet.sim.workload import DEVICE_TYPES, LUMINAIRE, bytes_per_site_day, rejection_reason
from iotfleet.topics import ThingScope


def test_fifty_sites_is_two_thousand_devices_over_four_tenants_and_the_same_every_time() -> None:
    fleet = build_fleet(FleetShape(sites=50))
    assert len(fleet) == 2000
    assert len({d.thing for d in fleet}) == 2000
    assert {d.tenant for d in fleet} == {"tenant-01", "tenant-02", "tenant-03", "tenant-04"}
    assert fleet == build_fleet(FleetShape(sites=50))
    assert fleet != build_fleet(FleetShape(sites=50, seed=2))
    for device in fleet[:50]:
        ThingScope(device.tenant, device.site, device.thing)  # valid names and topic levels


def test_shards_partition_the_fleet_by_whole_sites() -> None:
    fleet = build_fleet(FleetShape(sites=7))
    shards = [shard_of(fleet, i, 3) for i in range(3)]
    assert sorted(d.thing for s in shards for d in s) == sorted(d.thing for d in fleet)
    for shard in shards:
        sites = {d.site for d in shard}
        assert all(d.site in sites for d in shard)
        assert len(shard) == 40 * len(sites)
    with pytest.raises(ConfigError, match="shard 3/3 is not valid"):
        shard_of(fleet, 3, 3)


def test_a_site_sends_about_100_mb_a_day() -> None:
    assert 90e6 <= bytes_per_site_day() <= 110e6


def test_every_task_payload_passes_its_schema_and_broken_ones_say_why() -> None:
    rng = random.Random(1)  # noqa: S311 - the workload's own kind of random stream
    device = build_fleet(FleetShape())[0]
    state = LUMINAIRE.new_state(device, rng)
    for task in (t for t in LUMINAIRE.tasks if not t.to_shadow):
        for i in range(20):
            body = task.build(state, rng, 1.7e9 + i)
            assert rejection_reason(task.stream, body) is None
    assert rejection_reason("telemetry", {"ts": 1}) == "missing field 'power_w'"
    good = LUMINAIRE.tasks[0].build(state, rng, 1.7e9)
    assert good is not None
    assert rejection_reason("telemetry", {**good, "dim": 140}) == "dim 140 is outside 0-100"
    assert rejection_reason("telemetry", {**good, "occupancy": "yes"}) == "field 'occupancy' has type str"
    assert rejection_reason("telemetry", [1]) == "payload is not a JSON object"
    assert rejection_reason("weather", {}) == "unknown stream 'weather'"


def test_the_luminaire_applies_desired_dim_levels_and_keeps_its_own_on_nonsense() -> None:
    rng = random.Random(2)  # noqa: S311 - the workload's own kind of random stream
    state = LUMINAIRE.new_state(build_fleet(FleetShape())[0], rng)
    spec = LUMINAIRE.shadow
    assert spec is not None
    assert spec.apply["dim"](state, 30) == 30
    assert spec.reported(state) == {"dim": 30, "faulty": False, "firmware": "2.4.1"}
    for nonsense in (140, -1, "bright", True, None):
        assert spec.apply["dim"](state, nonsense) == 30  # reported back as it is, so the delta stays visible
    assert all(0 <= spec.desired(rng)["dim"] <= 100 for _ in range(50))
    status = next(t for t in LUMINAIRE.tasks if t.to_shadow)
    state.faulty = True
    assert status.build(state, rng, 0.0) == {"faulty": True, "firmware": "2.4.1"}


def test_durations_and_chaos_events_parse_or_say_how() -> None:
    assert [parse_duration(t) for t in ("20s", "5m", "1h", "1.5", "250ms")] == [20, 300, 3600, 1.5, 0.25]
    with pytest.raises(ConfigError, match="20s, 5m, 1h"):
        parse_duration("soon")
    event = parse_chaos("kill:eu-west-1@30s")
    assert (event.action, event.region, event.at_s) == ("kill", "eu-west-1", 30)
    with pytest.raises(ConfigError, match="ACTION:REGION@TIME"):
        parse_chaos("explode:eu-west-1@3s")


def test_fleet_file_sections_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text("[fleet]\nsites = 3\nrooms = 2\n[workload]\nspeed = 5\n")
    settings = load_settings(path)
    assert (settings.fleet.sites, settings.fleet.rooms, settings.workload.speed) == (3, 2, 5.0)
    path.write_text("[fleet]\nsites = 0\n")
    with pytest.raises(ConfigError, match=r"fleet.toml: fleet.sites: input should be greater than or equal to 1"):
        load_settings(path)
    path.write_text("[fleets]\n")
    with pytest.raises(ConfigError, match="fleets: unknown section"):
        load_settings(path)
    path.write_text("[workload]\nspeeed = 5\n")
    unknown = r"fleet.toml: workload.speeed: unknown key; known: abort_failure_pct, command_every, duration"
    with pytest.raises(ConfigError, match=unknown):
        load_settings(path)


def test_the_drill_speed_makes_telemetry_come_rate_times_a_second() -> None:
    telemetry = next(t for t in DEVICE_TYPES["luminaire"].tasks if t.stream == "telemetry")
    for rate in (0.5, 1, 4):
        assert drill_speed(rate) / telemetry.every_s == rate  # simulated seconds per real second / gap


# ---------------------------------------------------------------- home regions

REGIONS = ["eu-west-1", "us-east-1", "ap-south-1"]


def test_sites_are_spread_evenly_over_the_regions_by_default() -> None:
    homes = home_regions(FleetShape(sites=6), REGIONS)
    assert homes == ["eu-west-1", "us-east-1", "ap-south-1"] * 2


def test_weights_and_pinned_sites_place_the_fleet() -> None:
    placement = Placement(weights={"eu-west-1": 3, "us-east-1": 1}, sites={"site-0002": "ap-south-1"})
    homes = home_regions(FleetShape(sites=9), REGIONS, placement)
    assert homes[1] == "ap-south-1"
    others = homes[:1] + homes[2:]
    assert (others.count("eu-west-1"), others.count("us-east-1")) == (6, 2)
    with pytest.raises(ConfigError, match="names mars-1"):
        home_regions(FleetShape(sites=2), REGIONS, Placement(weights={"mars-1": 1}))
    with pytest.raises(ValueError, match="must be > 0"):
        Placement(weights={"eu-west-1": 0})


@given(
    st.dictionaries(st.sampled_from(REGIONS), st.integers(1, 9), min_size=1),
    st.integers(1, 200),
)
def test_every_prefix_of_the_fleet_follows_the_weights(weights: dict[str, int], sites: int) -> None:
    homes = home_regions(FleetShape(sites=sites), REGIONS, Placement(weights=weights))
    total = sum(weights.values())
    for k in range(1, sites + 1):
        for region, weight in weights.items():
            assert abs(homes[:k].count(region) - k * weight / total) < 1.0 + 1e-9


def test_a_device_tries_its_home_region_first_then_the_others_in_order() -> None:
    endpoints = [Endpoint(region=r, host="h", port=n + 1) for n, r in enumerate(REGIONS)]
    assert [e.region for e in home_first(endpoints, "us-east-1")] == ["us-east-1", "eu-west-1", "ap-south-1"]
    devices = Simulation(SimConfig(shape=FleetShape(sites=4, assets=1, rooms=1, buildings=1))).devices
    assert [d.home for d in devices] == ["eu-west-1", "us-east-1", "eu-west-1", "us-east-1"]
    shard = Simulation(SimConfig(shape=FleetShape(sites=4, assets=1, rooms=1, buildings=1), shard=(1, 2))).devices
    assert [d.home for d in shard] == ["us-east-1", "us-east-1"]  # shards agree on every site's home


def test_a_shard_index_comes_from_the_flag_or_from_the_indexed_jobs_environment() -> None:
    assert parse_shard("1/4", {}) == (1, 4)
    assert parse_shard("auto/4", {"JOB_COMPLETION_INDEX": "3"}) == (3, 4)  # a Kubernetes Indexed Job's pod
    assert parse_shard("auto/8", {"AWS_BATCH_JOB_ARRAY_INDEX": "5"}) == (5, 8)  # an AWS Batch array job's child
    with pytest.raises(ConfigError, match="neither is set"):
        parse_shard("auto/4", {})
    with pytest.raises(ConfigError, match="0 <= i < n"):
        parse_shard("auto/4", {"JOB_COMPLETION_INDEX": "4"})
    with pytest.raises(ConfigError, match="not a shard index"):
        parse_shard("auto/4", {"JOB_COMPLETION_INDEX": "x"})
    with pytest.raises(ConfigError, match="not i/n or auto/n"):
        parse_shard("2", {})
