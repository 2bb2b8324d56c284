"""IoT Core's lifecycle events (IOT_CORE.md section 3): what a subscriber receives on
``$aws/events/presence/...`` as a device connects, disconnects, is taken over and is deactivated; and the
tracker that reads them from the broker's log, rule by rule."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from iotfleet.cloud.local import LocalCloud
from iotfleet.cloud.presence import PresenceTracker
from iotfleet.cloud.registry import CertificateStatus
from iotfleet.config import Identity
from tests.conftest import ANY_ARN, Probes, identity_context

MONITOR_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{ANY_ARN}:client/monitor"},
        {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{ANY_ARN}:topicfilter/$aws/events/presence/*"},
        {"Effect": "Allow", "Action": "iot:Receive", "Resource": f"{ANY_ARN}:topic/$aws/events/presence/*"},
    ],
}


def test_a_subscriber_sees_connects_and_each_kind_of_disconnect_with_iot_cores_fields(
    local_cloud: LocalCloud, lamp: Identity, probes: Probes
) -> None:
    from iotfleet.cloud.local import ThingSpec  # noqa: PLC0415

    local_cloud.create_policy("monitor", MONITOR_POLICY)
    (monitor_identity,) = local_cloud.register_things([ThingSpec("monitor", "ops", "hq", policy="monitor")])
    endpoint = local_cloud.region("eu-west-1").endpoint
    monitor = probes(endpoint, "monitor", identity_context(monitor_identity))
    assert monitor.connect()
    assert monitor.subscribe("$aws/events/presence/+/+") == [1]

    def lamps() -> list[tuple[str, bytes]]:  # the monitor's own connect may come too: the log is read apart
        return [(topic, payload) for topic, payload in monitor.messages if topic.endswith("/lamp-1")]

    def events(count: int) -> list[tuple[str, dict[str, Any]]]:
        assert monitor.pump(lambda: len(lamps()) >= count), monitor.messages
        return [(topic, json.loads(payload)) for topic, payload in lamps()]

    first = probes(endpoint, "lamp-1", identity_context(lamp))
    assert first.connect()
    first.close()  # a DISCONNECT from the client
    second = probes(endpoint, "lamp-1", identity_context(lamp))
    assert second.connect()
    third = probes(endpoint, "lamp-1", identity_context(lamp))  # takes the client id over
    assert third.connect()
    assert lamp.certificate_id is not None
    local_cloud.update_certificate(lamp.certificate_id, CertificateStatus.INACTIVE)
    got = events(6)
    assert [(topic, e["eventType"], e.get("disconnectReason"), e["versionNumber"]) for topic, e in got] == [
        ("$aws/events/presence/connected/lamp-1", "connected", None, 0),
        ("$aws/events/presence/disconnected/lamp-1", "disconnected", "CLIENT_INITIATED_DISCONNECT", 0),
        ("$aws/events/presence/connected/lamp-1", "connected", None, 1),
        ("$aws/events/presence/disconnected/lamp-1", "disconnected", "DUPLICATE_CLIENTID", 1),
        ("$aws/events/presence/connected/lamp-1", "connected", None, 2),
        ("$aws/events/presence/disconnected/lamp-1", "disconnected", "AUTH_ERROR", 2),
    ]
    connected, disconnected = got[0][1], got[1][1]
    assert set(connected) == {
        "clientId", "timestamp", "eventType", "sessionIdentifier", "principalIdentifier", "ipAddress", "versionNumber"
    }  # fmt: skip
    assert connected["principalIdentifier"] == lamp.certificate_id
    assert connected["ipAddress"] == "127.0.0.1"
    assert disconnected["sessionIdentifier"] == connected["sessionIdentifier"]
    assert got[2][1]["sessionIdentifier"] != connected["sessionIdentifier"]
    assert disconnected["clientInitiatedDisconnect"] is True
    assert got[3][1]["clientInitiatedDisconnect"] is False
    assert connected["timestamp"] <= disconnected["timestamp"]
    refused = probes(endpoint, "lamp-1", identity_context(lamp))
    assert not refused.connect()  # INACTIVE: the TLS handshake fails, and no event for a connection never made
    monitor.pump(lambda: len(lamps()) > 6, timeout=0.5)
    assert len(lamps()) == 6


def line_connected(client_id: str, user: str = "cn") -> str:
    return f"New client connected from 127.0.0.1:40000 as {client_id} (p5, c1, k30, u'{user}')."


def tracker() -> PresenceTracker:
    return PresenceTracker(
        lambda cn: f"id-of-{cn}", ignore=lambda c: c.startswith("iotfleet-service"), clock=lambda: 1.5
    )


def test_each_way_a_connection_ends_has_its_reason() -> None:
    cases = {
        "Client lamp disconnected.": "CLIENT_INITIATED_DISCONNECT",
        "Client lamp closed its connection.": "CONNECTION_LOST",
        "Client lamp disconnected: Connection reset by peer.": "CONNECTION_LOST",
        "Socket error on client lamp, disconnecting.": "CONNECTION_LOST",
        "Bad socket read/write on client lamp: Unknown error.": "CONNECTION_LOST",
        "Client lamp has exceeded timeout, disconnecting.": "MQTT_KEEP_ALIVE_TIMEOUT",
        "Client lamp already connected, closing old connection.": "DUPLICATE_CLIENTID",
        "Client lamp disconnected, not authorised.": "AUTH_ERROR",
        "Client lamp disconnected due to protocol error.": "CLIENT_ERROR",
        "Client lamp disconnected due to malformed packet.": "CLIENT_ERROR",
        "Client lamp disconnected due to oversize payload.": "CLIENT_ERROR",
        "Bad client lamp sending multiple CONNECT messages.": "CLIENT_ERROR",
        "Client lamp disconnected due to out of memory.": "SERVER_ERROR",
        "Client lamp been disconnected by administrative action.": "API_INITIATED_DISCONNECT",
        "iotfleet: refused lamp: certificate cn is not ACTIVE in this region\nClient lamp disconnected.": "AUTH_ERROR",
    }
    for line, reason in cases.items():
        t = tracker()
        (connected,) = t.feed(line_connected("lamp"))
        (ended,) = [event for part in line.split("\n") for event in t.feed(part)]
        assert (ended.event_type, ended.reason, ended.session) == ("disconnected", reason, connected.session), line
        assert ended.payload()["principalIdentifier"] == "id-of-cn"
        assert ended.timestamp_ms == 1500


def test_what_gets_no_event() -> None:
    t = tracker()
    assert t.feed("Client lamp disconnected, not authorised.") == []  # a refused CONNECT: never connected
    assert t.feed(line_connected("iotfleet-service-shadow-eu-west-1")) == []  # the cloud's own
    assert t.feed(line_connected("weird#id")) == []  # IoT Core: no events for ids with # or +
    assert t.feed(line_connected("weird+id")) == []
    assert t.feed("Opening ipv4 listen socket on port 8883.") == []
    assert t.feed(line_connected("lamp")) != []
    # another connection asking for a live client id is refused: the live one is not told, and ends normally
    assert t.feed("iotfleet: refused lamp: iot:Connect denied by the policies of other") == []
    assert t.feed("Client <unknown> disconnected, not authorised.") == []
    (ended,) = t.feed("Client lamp disconnected.")
    assert ended.reason == "CLIENT_INITIATED_DISCONNECT"
    assert t.feed(line_connected("lamp")) != []
    assert t.feed("mosquitto version 2.0.11 starting") == []  # a restarted broker has no connections
    assert t.connected == 0
    assert t.feed("Client lamp closed its connection.") == []


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c d", "e"]), st.sampled_from(["connect", "end", "takeover"]))))
def test_every_disconnect_closes_a_told_connect_and_versions_grow(steps: list[tuple[str, str]]) -> None:
    t = tracker()
    live: dict[str, tuple[str, int]] = {}
    last_version: dict[str, int] = {}
    for client_id, step in steps:
        line = {
            "connect": line_connected(client_id),
            "end": f"Client {client_id} closed its connection.",
            "takeover": f"Client {client_id} already connected, closing old connection.",
        }[step]
        for event in t.feed(line):
            assert event.client_id == client_id
            if event.event_type == "connected":
                assert client_id not in live
                assert event.version == last_version.get(client_id, -1) + 1
                last_version[client_id] = event.version
                live[client_id] = (event.session, event.version)
            else:
                assert live.pop(client_id) == (event.session, event.version)
    assert t.connected == len(live)
