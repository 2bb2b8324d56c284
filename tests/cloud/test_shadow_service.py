"""The local shadow service over real MQTT, and AWS's own IotShadowClientV2 against it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from awscrt import mqtt_request_response
from awsiot import V2ServiceException, iotshadow

from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from iotfleet.errors import ShadowRejected
from iotfleet.topics import ShadowOp
from tests.conftest import Probe, Probes, aws_sdk_client, identity_context


@pytest.fixture
def lamp(local_cloud: LocalCloud) -> Identity:
    return local_cloud.register_thing("lamp-1", tenant="acme", site="hq")


@pytest.fixture
def device(local_cloud: LocalCloud, lamp: Identity, probes: Probes) -> Probe:
    probe = probes(local_cloud.region("eu-west-1").endpoint, "lamp-1", identity_context(lamp))
    assert probe.connect()
    assert probe.subscribe("$aws/things/lamp-1/shadow/#") == [1]
    return probe


def received(probe: Probe, suffix: str, count: int = 1) -> list[dict[str, Any]]:
    probe.pump(lambda: sum(t.endswith(suffix) for t, _ in probe.messages) >= count)
    return [json.loads(p) for t, p in probe.messages if t.endswith(suffix)]


def test_update_publishes_accepted_documents_and_delta(device: Probe) -> None:
    body = {"state": {"desired": {"dim": 40}, "reported": {"dim": 10}}, "clientToken": "c-1"}
    assert device.publish("$aws/things/lamp-1/shadow/update", json.dumps(body).encode()) == 0x00
    [accepted] = received(device, "/update/accepted")
    assert (accepted["version"], accepted["clientToken"], accepted["state"]) == (1, "c-1", body["state"])
    [documents] = received(device, "/update/documents")
    assert "previous" not in documents
    assert documents["current"]["state"] == {"desired": {"dim": 40}, "reported": {"dim": 10}}
    [delta] = received(device, "/update/delta")
    assert (delta["state"], delta["clientToken"]) == ({"dim": 40}, "c-1")


def test_rejections_echo_the_client_token(device: Probe) -> None:
    device.publish("$aws/things/lamp-1/shadow/get", json.dumps({"clientToken": "g-1"}).encode())
    [rejected] = received(device, "/get/rejected")
    assert (rejected["code"], rejected["message"], rejected["clientToken"]) == (
        404,
        "No shadow exists with name: 'lamp-1'",
        "g-1",
    )
    device.publish("$aws/things/lamp-1/shadow/update", b'{"state": {"delta": {}}, "clientToken": "u-1"}')
    [bad] = received(device, "/update/rejected")
    assert (bad["code"], bad["message"], bad["clientToken"]) == (400, "State contains an invalid node", "u-1")


def test_named_shadows_are_separate_documents(device: Probe) -> None:
    device.publish("$aws/things/lamp-1/shadow/name/config/update", b'{"state": {"reported": {"fw": "2.1"}}}')
    [accepted] = received(device, "/name/config/update/accepted")
    assert accepted["version"] == 1
    device.publish("$aws/things/lamp-1/shadow/get", b"")
    [missing] = received(device, "/shadow/get/rejected")
    assert missing["code"] == 404


def test_regions_hold_separate_shadows_and_an_unknown_thing_is_404(local_cloud: LocalCloud, lamp: Identity) -> None:
    local_cloud.region("eu-west-1").shadows.update("lamp-1", desired={"dim": 1})
    with pytest.raises(ShadowRejected) as info:
        local_cloud.region("us-east-1").shadows.get("lamp-1")
    assert info.value.code == 404
    with pytest.raises(ShadowRejected) as unknown:
        local_cloud.region("eu-west-1").shadows.get("no-such-thing")
    assert (unknown.value.code, unknown.value.error) == (404, "Thing not found")


def test_a_thing_cannot_touch_another_things_shadow(local_cloud: LocalCloud, device: Probe) -> None:
    local_cloud.register_thing("lamp-2", tenant="acme", site="hq")
    assert device.publish("$aws/things/lamp-2/shadow/update", b'{"state": {"desired": {"dim": 99}}}') == 0x87
    with pytest.raises(ShadowRejected):
        local_cloud.region("eu-west-1").shadows.get("lamp-2")


def test_operator_changes_reach_the_device_as_a_delta(local_cloud: LocalCloud, device: Probe) -> None:
    local_cloud.region("eu-west-1").shadows.update("lamp-1", desired={"dim": 70})
    [delta] = received(device, "/update/delta")
    assert delta["state"] == {"dim": 70}


# --------------------------------------------------------------------------- AWS's own client


@pytest.fixture
def aws_client(local_cloud: LocalCloud, lamp: Identity) -> Iterator[iotshadow.IotShadowClientV2]:
    with aws_sdk_client(local_cloud.region("eu-west-1").endpoint, lamp, "lamp-1") as (client, options):
        yield iotshadow.IotShadowClientV2(client, options)


def test_aws_shadow_client_v2_get_update_and_delta_stream(
    local_cloud: LocalCloud, aws_client: iotshadow.IotShadowClientV2
) -> None:
    with pytest.raises(V2ServiceException) as missing:
        aws_client.get_shadow(iotshadow.GetShadowRequest(thing_name="lamp-1")).result(10)
    assert missing.value.modeled_error.code == 404

    deltas: list[iotshadow.ShadowDeltaUpdatedEvent] = []
    got_delta = threading.Event()

    def on_delta(event: iotshadow.ShadowDeltaUpdatedEvent) -> None:
        deltas.append(event)
        got_delta.set()

    subscribed = threading.Event()

    def on_status(event: mqtt_request_response.SubscriptionStatusEvent) -> None:
        status = mqtt_request_response.SubscriptionStatusEventType(event.type)  # the CRT hands over a plain int
        if status is mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED:
            subscribed.set()

    stream = aws_client.create_shadow_delta_updated_stream(
        iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name="lamp-1"), awsiot_stream_options(on_delta, on_status)
    )
    stream.open()

    request = iotshadow.UpdateShadowRequest(
        thing_name="lamp-1", state=iotshadow.ShadowState(reported={"dim": 10}, desired={"dim": 10})
    )
    updated = aws_client.update_shadow(request).result(10)
    assert updated.version == 1
    assert updated.state.reported == {"dim": 10}

    got = aws_client.get_shadow(iotshadow.GetShadowRequest(thing_name="lamp-1")).result(10)
    assert (got.version, got.state.desired, got.state.reported, got.state.delta) == (1, {"dim": 10}, {"dim": 10}, None)

    assert subscribed.wait(10), "the delta stream's subscription was not established"
    local_cloud.region("eu-west-1").shadows.update("lamp-1", desired={"dim": 80})
    assert got_delta.wait(10)
    assert deltas[0].state == {"dim": 80}


def awsiot_stream_options(
    callback: Callable[[Any], None],
    on_status: Callable[[mqtt_request_response.SubscriptionStatusEvent], None] | None = None,
) -> Any:
    import awsiot  # noqa: PLC0415 - ServiceStreamOptions lives on the package root

    return awsiot.ServiceStreamOptions(callback, on_status)


def test_classic_shadows_replicate_only_when_asked(tmp_path: Any) -> None:
    with LocalCloud(workdir=tmp_path / "c", replicate_shadows=True) as cloud:
        cloud.register_thing("lamp-1", tenant="acme", site="hq")
        eu, us = cloud.region("eu-west-1").shadows, cloud.region("us-east-1").shadows
        eu.update("lamp-1", desired={"dim": 33})
        eu.update("lamp-1", reported={"fw": "1"}, name="config")
        assert us.get("lamp-1")["state"]["desired"] == {"dim": 33}
        with pytest.raises(ShadowRejected):
            us.get("lamp-1", name="config")  # named shadows stay regional


def test_more_than_twenty_requests_a_second_per_thing_get_429(local_cloud: LocalCloud, lamp: Identity) -> None:
    service = local_cloud.region("eu-west-1").shadow_service
    assert service is not None
    codes = [
        service.handle("lamp-1", None, ShadowOp.GET, b'{"clientToken": "t"}', now=1000.0)[0].body["code"]
        for _ in range(21)
    ]
    assert codes[:20] == [404] * 20  # no shadow yet, but each was served
    assert codes[20] == 429
    later = service.handle("lamp-1", None, ShadowOp.GET, b"", now=1001.5)[0].body
    assert later["code"] == 404  # a second later the window has moved on


def test_infinity_is_rejected_with_400_over_mqtt_and_nothing_is_stored(local_cloud: LocalCloud, device: Probe) -> None:
    device.publish("$aws/things/lamp-1/shadow/update", b'{"state": {"reported": {"w": 1e400}}, "clientToken": "i-1"}')
    [rejected] = received(device, "/update/rejected")
    assert (rejected["code"], rejected["message"]) == (400, "Invalid JSON")  # not JSON: no token can be read
    with pytest.raises(ShadowRejected, match="404"):
        local_cloud.region("eu-west-1").shadows.get("lamp-1")


def test_a_store_failure_is_a_500_and_recorded_and_the_service_goes_on(local_cloud: LocalCloud, device: Probe) -> None:
    service = local_cloud.region("eu-west-1").shadow_service
    assert service is not None
    service.store.close()  # stands in for a broken disk: every read and write of the store now fails
    device.publish("$aws/things/lamp-1/shadow/get", json.dumps({"clientToken": "g-1"}).encode())
    [rejected] = received(device, "/get/rejected")
    assert (rejected["code"], rejected["message"], rejected["clientToken"]) == (500, "Internal service failure", "g-1")
    assert local_cloud.failures.counts() == {"shadow eu-west-1 store": 1}
    device.publish("$aws/things/lamp-1/shadow/get", json.dumps({"clientToken": "g-2"}).encode())
    assert [r["clientToken"] for r in received(device, "/get/rejected", count=2)] == ["g-1", "g-2"]  # still serving
    assert local_cloud.failures.counts() == {"shadow eu-west-1 store": 2}
