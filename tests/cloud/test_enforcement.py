"""The brokers enforce AWS IoT policy documents with IoT Core's answers (IOT_CORE.md section 11a), rule by
rule, on MQTT 5 and 3.1.1: CONNECT, SUBSCRIBE, PUBLISH, RetainPublish and each delivery (Receive)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iotfleet.cloud.local import LocalCloud, ThingSpec
from iotfleet.cloud.registry import CertificateStatus
from iotfleet.config import Endpoint, Identity
from iotfleet.errors import ConfigError, PolicyError, RegistryError
from tests.conftest import ANY_ARN, Probes, cloud_up, identity_context, wait_until

NOT_AUTHORIZED = 0x87
LAB_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": f"{ANY_ARN}:client/${{iot:Connection.Thing.ThingName}}",
        },
        {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{ANY_ARN}:topicfilter/lab/*"},
        {
            "Effect": "Allow",
            "Action": "iot:Publish",
            "Resource": f"{ANY_ARN}:topic/lab/${{iot:Connection.Thing.ThingName}}/*",
        },
        {
            "Effect": "Deny",
            "Action": "iot:Publish",
            "Resource": f"{ANY_ARN}:topic/lab/${{iot:Connection.Thing.ThingName}}/off",
        },
        {"Effect": "Allow", "Action": "iot:Receive", "Resource": f"{ANY_ARN}:topic/lab/*"},
        {"Effect": "Deny", "Action": "iot:Receive", "Resource": f"{ANY_ARN}:topic/lab/secret/*"},
    ],
}


@pytest.fixture
def lab(local_cloud: LocalCloud) -> tuple[Identity, Endpoint]:
    local_cloud.create_policy("lab", LAB_POLICY)
    (lamp,) = local_cloud.register_things([ThingSpec("lamp-1", "acme", "hq", policy="lab")])
    return lamp, local_cloud.region("eu-west-1").endpoint


class Mqtt311:
    """A paho MQTT 3.1.1 client, pumped by hand: what it was answered, and whether it was hung up on."""

    def __init__(self, endpoint: Endpoint, client_id: str, context: ssl.SSLContext) -> None:
        self.connack: int | None = None
        self.closed = False
        self.subacks: dict[int, list[int]] = {}
        self.pubacks: set[int] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.tls_set_context(context)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: setattr(self, "connack", rc.value)
        self.client.on_disconnect = lambda *_args: setattr(self, "closed", True)
        self.client.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, [r.value for r in rcs])
        self.client.on_publish = lambda _c, _u, mid, _rc, _p: self.pubacks.add(mid)
        self.client.connect(endpoint.host, endpoint.port, keepalive=60)

    def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> bool:
        def step() -> bool:
            if not until() and not self.closed:
                try:
                    self.client.loop(timeout=0.02)
                except (OSError, ssl.SSLError):
                    self.closed = True
            return until()

        return wait_until(step, timeout=timeout, interval=0)


def test_mqtt5_a_denied_filter_gets_0x87_and_the_rest_of_the_subscribe_and_the_connection_stay(
    lab: tuple[Identity, Endpoint], probes: Probes
) -> None:
    lamp, endpoint = lab
    device = probes(endpoint, "lamp-1", identity_context(lamp))
    assert device.connect()
    _, mid = device.client.subscribe([("lab/#", 1), ("fleet/#", 1), ("lab/lamp-1/+", 0)])
    assert mid is not None
    assert device.pump(lambda: mid in device.subacks)
    assert device.subacks[mid] == [1, NOT_AUTHORIZED, 0]
    assert device.publish("lab/lamp-1/power") in (0x00, 0x10)
    assert device.disconnected is None


def test_mqtt5_a_denied_publish_gets_puback_0x87_an_explicit_deny_wins_and_the_connection_stays(
    lab: tuple[Identity, Endpoint], probes: Probes
) -> None:
    lamp, endpoint = lab
    device = probes(endpoint, "lamp-1", identity_context(lamp))
    assert device.connect()
    assert device.publish("lab/lamp-2/power") == NOT_AUTHORIZED  # another thing's topic: not allowed
    assert device.publish("lab/lamp-1/off") == NOT_AUTHORIZED  # allowed by lab/lamp-1/*, denied explicitly
    assert device.publish("lab/lamp-1/on") in (0x00, 0x10)
    assert device.disconnected is None


def test_retained_publishes_also_need_retain_publish(lab: tuple[Identity, Endpoint], probes: Probes) -> None:
    lamp, endpoint = lab
    device = probes(endpoint, "lamp-1", identity_context(lamp))
    assert device.connect()
    info = device.client.publish("lab/lamp-1/state", b"on", qos=1, retain=True)
    assert device.pump(lambda: info.mid in device.pubacks)
    assert device.pubacks[info.mid] == NOT_AUTHORIZED  # the policy grants iot:Publish, not iot:RetainPublish


def test_receive_is_checked_on_every_delivery(
    lab: tuple[Identity, Endpoint], local_cloud: LocalCloud, probes: Probes
) -> None:
    lamp, endpoint = lab
    device = probes(endpoint, "lamp-1", identity_context(lamp))
    operator = probes(endpoint, "operator", identity_context(local_cloud.service))
    assert device.connect()
    assert operator.connect()
    assert device.subscribe("lab/#") == [1]  # the subscription is allowed ...
    assert operator.publish("lab/secret/code", b"1234") == 0x00
    assert operator.publish("lab/open/notice", b"hello") == 0x00
    assert device.pump(lambda: ("lab/open/notice", b"hello") in device.messages)
    assert device.messages == [("lab/open/notice", b"hello")]  # ... the denied delivery, sent first, never came


def test_mqtt311_denials_close_the_connection_as_iot_core_does(
    lab: tuple[Identity, Endpoint], local_cloud: LocalCloud
) -> None:
    lamp, endpoint = lab
    context = identity_context(lamp)
    impostor = Mqtt311(endpoint, "lamp-2", context)
    assert impostor.pump(lambda: impostor.connack is not None or impostor.closed)
    # CONNACK return code 5 "not authorized" (the spec's; IoT Core's DG says 7), which paho 2 reports as 0x87
    assert impostor.connack == NOT_AUTHORIZED

    subscriber = Mqtt311(endpoint, "lamp-1", context)
    assert subscriber.pump(lambda: subscriber.connack == 0)
    subscriber.client.subscribe("fleet/#", qos=1)
    assert subscriber.pump(lambda: subscriber.closed)
    assert subscriber.subacks == {}  # no SUBACK: the connection was closed

    publisher = Mqtt311(endpoint, "lamp-1", context)
    assert publisher.pump(lambda: publisher.connack == 0)
    publisher.client.publish("lab/lamp-2/power", b"x", qos=1)
    assert publisher.pump(lambda: publisher.closed)
    assert publisher.pubacks == set()


def test_policies_are_validated_when_created_and_named_when_missing(local_cloud: LocalCloud) -> None:
    with pytest.raises(PolicyError, match=r"policy broken is not a valid AWS IoT policy.*Effect must be Allow or Deny"):
        local_cloud.create_policy("broken", {"Statement": [{"Effect": "Permit", "Action": "iot:*", "Resource": "*"}]})
    with pytest.raises(ConfigError, match="policy name 'a b'"):
        local_cloud.create_policy("a b", LAB_POLICY)
    with pytest.raises(ConfigError, match="no policy 'nowhere': create it first"):
        local_cloud.register_things([ThingSpec("lamp-9", "acme", "hq", policy="nowhere")])


def test_cloud_up_attaches_a_policy_file_to_its_things(tmp_path: Path, probes: Probes) -> None:
    policy_file = tmp_path / "lab.json"
    policy_file.write_text(json.dumps(LAB_POLICY))
    args = ["--json", "--regions", "eu-west-1", "--workdir", str(tmp_path / "w"), "--thing", "lamp-1"]
    with cloud_up(*args, "--policy", str(policy_file)) as proc:
        assert proc.stdout is not None
        info: dict[str, Any] = json.loads(proc.stdout.readline())
        (thing,) = info["things"]
        region = info["regions"][0]
        lamp = Identity(thing_name="lamp-1", cert_file=thing["cert"], key_file=thing["key"], ca_file=info["ca_file"])
        device = probes(
            Endpoint(region="eu-west-1", host=region["host"], port=region["port"]), "lamp-1", identity_context(lamp)
        )
        assert device.connect()
        assert device.publish("lab/lamp-1/on") in (0x00, 0x10)  # allowed by lab.json, not by the device policy
        assert device.publish("dt/demo/hq/lamp-1/power") == NOT_AUTHORIZED  # the device policy's topic: not here


def test_a_certificate_leaving_active_loses_its_live_sessions_in_every_region(
    lab: tuple[Identity, Endpoint], local_cloud: LocalCloud, probes: Probes
) -> None:
    lamp, _ = lab
    assert lamp.certificate_id is not None
    endpoints = [region.endpoint for region in local_cloud.regions]
    devices = [probes(endpoint, "lamp-1", identity_context(lamp)) for endpoint in endpoints]
    assert all(device.connect() for device in devices)
    local_cloud.update_certificate(lamp.certificate_id, CertificateStatus.INACTIVE)
    for device in devices:  # closed by each region's broker, not left to fail later
        assert device.pump(device.is_closed)
    for endpoint in endpoints:
        again = probes(endpoint, "lamp-1", identity_context(lamp))
        assert not again.connect()
        assert again.connack is None  # new CONNECTs fail the TLS handshake, in every region
    local_cloud.update_certificate(lamp.certificate_id, "ACTIVE")  # an INACTIVE certificate may come back
    assert all(probes(endpoint, "lamp-1", identity_context(lamp)).connect() for endpoint in endpoints)


def test_a_revoked_certificate_stays_revoked(lab: tuple[Identity, Endpoint], local_cloud: LocalCloud) -> None:
    lamp, _ = lab
    assert lamp.certificate_id is not None
    local_cloud.update_certificate(lamp.certificate_id, CertificateStatus.REVOKED)
    with pytest.raises(RegistryError, match="stays revoked"):
        local_cloud.update_certificate(lamp.certificate_id, CertificateStatus.ACTIVE)
    with pytest.raises(RegistryError, match="no certificate with id 'nope'"):
        local_cloud.update_certificate("nope", CertificateStatus.INACTIVE)
    assert {r.registry.certificate(lamp.certificate_id).status for r in local_cloud.regions} == {  # type: ignore[union-attr]
        CertificateStatus.REVOKED
    }


def test_policies_attached_to_a_certificate_add_up_and_a_detached_one_stops_counting(
    lab: tuple[Identity, Endpoint], local_cloud: LocalCloud, probes: Probes
) -> None:
    lamp, endpoint = lab
    assert lamp.certificate_id is not None
    local_cloud.create_policy(
        "extra",
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{ANY_ARN}:topic/extra/*"}],
        },
    )
    device = probes(endpoint, "lamp-1", identity_context(lamp))
    assert device.connect()
    assert device.publish("extra/1") == NOT_AUTHORIZED
    local_cloud.attach_policy("extra", lamp.certificate_id)
    assert device.publish("extra/1") in (0x00, 0x10)  # the live session is authorized by both policies at once
    assert device.publish("lab/lamp-1/on") in (0x00, 0x10)
    local_cloud.detach_policy("extra", lamp.certificate_id)
    assert device.publish("extra/1") == NOT_AUTHORIZED
    assert device.disconnected is None  # the remaining policy still allows its CONNECT: the session stays
    local_cloud.detach_policy("lab", lamp.certificate_id)  # none left: it may not even connect
    assert device.pump(lambda: device.disconnected is not None)
    with pytest.raises(ConfigError, match="no policy 'missing'"):
        local_cloud.attach_policy("missing", lamp.certificate_id)
