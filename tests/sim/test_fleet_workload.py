"""The fleet model and workload without a broker: determinism, sharding, sizing, schemas."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from iotfleet.errors import ConfigError
from iotfleet.sim.drill import drill_speed
from iotfleet.sim.fleet import FleetShape, build_fleet, shard_of
from iotfleet.sim.settings import load_settings
from iotfleet.sim.simulate import parse_chaos, parse_duration
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
    with pytest.raises(ConfigError, match=r"fleet.toml: workload.speeed: unknown key; known: duration, operator_every"):
        load_settings(path)


def test_the_drill_speed_makes_telemetry_come_rate_times_a_second() -> None:
    telemetry = next(t for t in DEVICE_TYPES["luminaire"].tasks if t.stream == "telemetry")
    for rate in (0.5, 1, 4):
        assert drill_speed(rate) / telemetry.every_s == rate  # simulated seconds per real second / gap
