"""IoT Core's rate quotas (IOT_CORE.md section 4), enforced by each region's broker plugin, rule by rule:
what a device is answered over each quota, that the rest goes on, and what the region counts. Rates are
lowered (or the per-client window shortened) so that each case runs in well under a second."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.cloud.broker import Quotas
from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from iotfleet.errors import ConfigError
from tests.conftest import Probe, Probes, identity_context, wait_until

NOT_AUTHORIZED = 0x87


@pytest.fixture
def quota_cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", quotas=request.param) as cloud:
        yield cloud


def lamps(cloud: LocalCloud, count: int) -> list[Identity]:
    return [cloud.register_thing(f"lamp-{n}", tenant="acme", site="hq") for n in range(1, count + 1)]


def throttled(cloud: LocalCloud, kind: str, at_least: int = 1) -> bool:
    """Whether the region reported ``kind`` throttled ``at_least`` times (its plugin reports once a second)."""
    broker = cloud.region("eu-west-1").broker
    return wait_until(lambda: broker.throttled[kind] >= at_least, timeout=5)


@pytest.mark.parametrize("quota_cloud", [Quotas(connect_per_client=5)], indirect=True)
def test_a_second_connect_of_one_client_id_within_the_window_is_hung_up_on(
    quota_cloud: LocalCloud, probes: Probes
) -> None:
    (lamp,) = lamps(quota_cloud, 1)
    endpoint = quota_cloud.region("eu-west-1").endpoint
    first = probes(endpoint, "lamp-1", identity_context(lamp))
    assert first.connect()
    first.close()
    again = probes(endpoint, "lamp-1", identity_context(lamp))
    assert not again.connect()
    assert again.connack is None  # no CONNACK: IoT Core's would be 0x97 on MQTT 5
    assert throttled(quota_cloud, "connect_client")
    accepted: list[Probe] = []  # after the window (0.2 s here, 1 s on IoT Core) the client id connects again

    def retry() -> bool:
        if not accepted:
            probe = probes(endpoint, "lamp-1", identity_context(lamp))
            if probe.connect():
                accepted.append(probe)
        return bool(accepted)

    assert wait_until(retry, timeout=5)


@pytest.mark.parametrize("quota_cloud", [Quotas(connect_per_client=0.01)], indirect=True)
def test_the_recheck_after_a_reload_is_no_connect(quota_cloud: LocalCloud, probes: Probes) -> None:
    (lamp,) = lamps(quota_cloud, 1)
    device = probes(quota_cloud.region("eu-west-1").endpoint, "lamp-1", identity_context(lamp))
    assert device.connect()
    lamps(quota_cloud, 3)  # registering reloads the broker, which re-checks every live connection
    assert device.publish("dt/acme/hq/lamp-1/power") in (0x00, 0x10)
    assert device.disconnected is None


@pytest.mark.parametrize("quota_cloud", [Quotas(connect_per_account=2)], indirect=True)
def test_connects_over_the_account_rate_are_hung_up_on(quota_cloud: LocalCloud, probes: Probes) -> None:
    endpoint = quota_cloud.region("eu-west-1").endpoint
    answers = [probes(endpoint, lamp.thing_name, identity_context(lamp)).connect() for lamp in lamps(quota_cloud, 4)]
    assert answers[:2] == [True, True]  # one second of burst
    assert False in answers[2:]
    assert throttled(quota_cloud, "connect_account")


@pytest.mark.parametrize("quota_cloud", [Quotas(publish_per_connection=5)], indirect=True)
def test_publishes_over_the_connection_rate_are_refused_and_the_connection_stays(
    quota_cloud: LocalCloud, probes: Probes
) -> None:
    (lamp,) = lamps(quota_cloud, 1)
    device = probes(quota_cloud.region("eu-west-1").endpoint, "lamp-1", identity_context(lamp))
    assert device.connect()
    codes = [device.publish("dt/acme/hq/lamp-1/power") for _ in range(10)]
    assert codes[:5] == [0x10] * 5  # one second of burst (no subscriber: 0x10)
    assert NOT_AUTHORIZED in codes[5:]  # refused, never acknowledged and then dropped
    assert device.disconnected is None
    assert throttled(quota_cloud, "publish_connection", codes.count(NOT_AUTHORIZED))


@pytest.mark.parametrize("quota_cloud", [Quotas(publish_per_account=4)], indirect=True)
def test_publishes_over_the_account_rate_are_refused_whoever_sends_them(
    quota_cloud: LocalCloud, probes: Probes
) -> None:
    endpoint = quota_cloud.region("eu-west-1").endpoint
    devices = [probes(endpoint, lamp.thing_name, identity_context(lamp)) for lamp in lamps(quota_cloud, 2)]
    assert all(device.connect() for device in devices)
    codes = [device.publish(f"dt/acme/hq/{device.client_id}/power") for _ in range(4) for device in devices]
    assert codes.count(0x10) <= 5  # 4 of burst, and what refilled meanwhile
    assert NOT_AUTHORIZED in codes
    assert throttled(quota_cloud, "publish_account")


@pytest.mark.parametrize("quota_cloud", [Quotas(publish_per_connection=3)], indirect=True)
def test_deliveries_over_the_receivers_connection_rate_are_not_made(quota_cloud: LocalCloud, probes: Probes) -> None:
    (lamp,) = lamps(quota_cloud, 1)
    endpoint = quota_cloud.region("eu-west-1").endpoint
    receiver = probes(endpoint, "lamp-1", identity_context(lamp))
    assert receiver.connect()
    assert receiver.subscribe("cmd/acme/hq/lamp-1/+") == [1]
    sender = probes(endpoint, "service", identity_context(quota_cloud.service))  # not throttled itself
    assert sender.connect()
    for n in range(8):
        assert sender.publish("cmd/acme/hq/lamp-1/blink", str(n).encode()) == 0x00
    assert throttled(quota_cloud, "delivery_connection", 4)
    receiver.pump(lambda: len(receiver.messages) >= 4, timeout=0.5)
    assert 1 <= len(receiver.messages) <= 4  # the burst (3, plus what refilled), not all 8


@pytest.mark.parametrize("quota_cloud", [Quotas.none()], indirect=True)
def test_no_quotas_lifts_them_all(quota_cloud: LocalCloud, probes: Probes) -> None:
    (lamp,) = lamps(quota_cloud, 1)
    endpoint = quota_cloud.region("eu-west-1").endpoint
    for _ in range(3):
        device = probes(endpoint, "lamp-1", identity_context(lamp))
        assert device.connect()
        assert [device.publish("dt/acme/hq/lamp-1/power") for _ in range(150)].count(0x10) == 150
        device.close()
    assert quota_cloud.region("eu-west-1").broker.throttled == {}
    assert quota_cloud.info()["quotas"] == {
        "connect_per_client": 0.0, "connect_per_account": 0.0, "publish_per_connection": 0.0, "publish_per_account": 0.0
    }  # fmt: skip


def test_quotas_are_iot_cores_by_default_and_checked() -> None:
    assert Quotas() == Quotas(1.0, 500.0, 100.0, 20_000.0)
    with pytest.raises(ConfigError, match="publish_per_connection must be >= 0"):
        Quotas(publish_per_connection=-1)
