"""Holders of the shared claim certificate, and devices, cannot reach each other or the cloud's own sessions.

Each test plays the attacker the way one was seen to succeed: reading other devices' provisioning
requests, answering them, steering an answer with a forged routing property, or connecting with a
service's client id. The broker plugin (iotfleet_routing.c) is what stops each of them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotfleet.cloud.local import DEFAULT_TEMPLATE, LocalCloud
from iotfleet.cloud.services.base import SERVICE_CLIENT_PREFIX
from iotfleet.errors import ConnectError
from iotfleet.provisioning import FleetProvisioner
from iotfleet.transport.base import ConnectOptions
from iotfleet.transport.crt import CrtTransport
from tests.cloud.test_provisioning_service import (
    CSR_TOPIC,
    KEYS_TOPIC,
    ClaimClient,
    run,
)
from tests.conftest import Probe, identity_context

NOT_AUTHORIZED = 0x87


def spy(cloud: LocalCloud, probes: Any, client_id: str = "spy") -> Probe:
    """A claim holder subscribed to every provisioning topic its policy lets it subscribe to: the claim
    policy allows the filters under each API (``+`` and ``#`` are literal in a policy, and ``*`` matches
    them), not the whole ``$aws/certificates/#`` tree."""
    probe: Probe = probes(cloud.region("eu-west-1").endpoint, client_id, identity_context(cloud.claim))
    assert probe.connect()
    assert probe.subscribe("$aws/certificates/#") == [NOT_AUTHORIZED]
    assert probe.subscribe("$aws/certificates/create/#") == [1]
    assert probe.subscribe("$aws/certificates/create-from-csr/#") == [1]
    assert probe.subscribe(f"$aws/provisioning-templates/{DEFAULT_TEMPLATE}/provision/#") == [1]
    return probe


def publish_with(probe: Probe, topic: str, payload: bytes, props: dict[str, str]) -> int | None:
    """Publish QoS 1 carrying user properties of the client's choosing; the PUBACK reason code."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it untyped
    properties.UserProperty = list(props.items())
    info = probe.client.publish(topic, payload, qos=1, properties=properties)
    probe.pump(lambda: info.mid in probe.pubacks or probe.disconnected is not None)
    return probe.pubacks.get(info.mid)


def own_answer(probe: Probe) -> list[tuple[str, bytes]]:
    """Ask for keys and wait for the answer; return everything the probe received up to and including it.

    mosquitto writes to one connection in order, and another device's request or answer would have been
    routed to this one before its own later request was even sent, so once the probe's own answer is in,
    anything misrouted to it is in too.
    """
    probe.messages.clear()
    assert probe.publish(KEYS_TOPIC, b"{}") == 0
    assert probe.pump(lambda: any(t == f"{KEYS_TOPIC}/accepted" for t, _ in probe.messages), timeout=10)
    return list(probe.messages)


def test_a_claim_holder_sees_neither_other_devices_requests_nor_their_answers(
    local_cloud: LocalCloud, probes: Any
) -> None:
    watcher = spy(local_cloud, probes)

    async def victim() -> None:
        async with ClaimClient(local_cloud, "victim") as claim:
            await claim.certificate()  # a CSR request, and an answer carrying an ownership token

    run(victim())
    received = own_answer(watcher)
    assert [topic for topic, _ in received] == [f"{KEYS_TOPIC}/accepted"]


def test_only_the_service_answers_provisioning_requests(local_cloud: LocalCloud, probes: Any) -> None:
    attacker = spy(local_cloud, probes, "attacker")
    forged = json.dumps({"certificateId": "x", "certificatePem": "x", "certificateOwnershipToken": "x"}).encode()

    async def victim() -> list[tuple[str, dict[str, Any]]]:
        async with ClaimClient(local_cloud, "victim") as claim:
            codes = [
                publish_with(attacker, f"{CSR_TOPIC}/accepted", forged, {"iotfleet-deliver-to": "victim"}),
                publish_with(attacker, f"{CSR_TOPIC}/rejected", b"{}", {}),
            ]
            assert codes == [NOT_AUTHORIZED, NOT_AUTHORIZED]
            # the victim's next message on those topics is the service's genuine answer to its own request
            return [await claim.ask(CSR_TOPIC, {"certificateSigningRequest": "not a csr"})]

    [(outcome, body)] = run(victim())
    assert (outcome, body["errorCode"]) == ("rejected", "InvalidCSR")


def test_a_request_cannot_name_another_connection_for_its_answer(local_cloud: LocalCloud, probes: Any) -> None:
    """A client-sent iotfleet-client-id is dropped: the answer (with a private key) reaches the sender only."""
    victim = spy(local_cloud, probes, "victim")
    attacker = spy(local_cloud, probes, "attacker")
    steer = {"iotfleet-client-id": "victim", "iotfleet-deliver-to": "victim"}
    assert publish_with(attacker, KEYS_TOPIC, b"{}", steer) == 0
    assert attacker.pump(lambda: any(t == f"{KEYS_TOPIC}/accepted" for t, _ in attacker.messages), timeout=10)
    [(_, answer)] = attacker.messages
    assert "privateKey" in json.loads(answer)
    assert [topic for topic, _ in own_answer(victim)] == [f"{KEYS_TOPIC}/accepted"]  # and nothing else


def test_forged_answers_during_a_real_provisioning_do_not_hijack_the_thing(
    local_cloud: LocalCloud, probes: Any
) -> None:
    """The attack that was seen: answer the victim's CSR request with the attacker's own certificate."""
    attacker = spy(local_cloud, probes, "attacker")
    attacker.publish(KEYS_TOPIC, b"{}")
    assert attacker.pump(lambda: bool(attacker.messages), timeout=10)
    own = attacker.messages[-1][1]  # the attacker's genuine certificate and ownership token
    provisioner = FleetProvisioner(
        endpoints=local_cloud.endpoints[:1],
        claim=local_cloud.claim_identity,
        template=DEFAULT_TEMPLATE,
        parameters={"Tenant": "acme", "Site": "hq", "SerialNumber": "victim-1"},
        client_id="victim-1",
        timeout=5.0,
    )

    async def race() -> Any:
        task = asyncio.create_task(provisioner.provision())
        while not task.done():  # keep answering the victim's topic while it provisions
            publish_with(attacker, f"{CSR_TOPIC}/accepted", own, {"iotfleet-deliver-to": "victim-1"})
            await asyncio.sleep(0)
        return await task

    device = run(race())
    record = local_cloud.region("eu-west-1").registry.certificate(device.certificate_id)
    assert record is not None
    assert record.thing == "victim-1"
    issued = x509.load_pem_x509_certificate(record.pem.encode())
    key = serialization.load_pem_private_key(device.private_key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert issued.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def test_no_certificate_but_the_services_may_take_a_service_client_id(local_cloud: LocalCloud, probes: Any) -> None:
    """A claim or device certificate asking for a service's client id is refused in the CONNACK, over and over,
    and the service's own session is never taken over: it still answers."""
    endpoint = local_cloud.region("eu-west-1").endpoint
    taken = f"{SERVICE_CLIENT_PREFIX}-provisioning-eu-west-1"
    lamp = local_cloud.register_thing("lamp-9", tenant="acme", site="hq")
    for attempt in range(5):
        for files in (local_cloud.claim, lamp):
            probe: Probe = probes(endpoint, taken, identity_context(files))
            assert not probe.connect()
            assert probe.connack is not None
            assert probe.connack.value == NOT_AUTHORIZED, attempt

    async def crt_device() -> None:  # AWS's own client sees the refusal as a failed connect, too
        options = ConnectOptions(client_id=taken, identity=lamp, connect_timeout_s=5.0)
        with pytest.raises(ConnectError, match="connack 0x87"):
            await CrtTransport().connect(endpoint, options)

    run(crt_device())
    watcher = spy(local_cloud, probes, "after-the-attempts")
    assert [topic for topic, _ in own_answer(watcher)] == [f"{KEYS_TOPIC}/accepted"]
    assert local_cloud.region("eu-west-1").provisioning is not None


def test_the_username_is_the_certificate_not_what_the_client_sends(local_cloud: LocalCloud, probes: Any) -> None:
    """Naming the service identity as MQTT username grants nothing: the ACL applies to the certificate's CN."""
    probe: Probe = probes(local_cloud.region("eu-west-1").endpoint, "claimer", identity_context(local_cloud.claim))
    probe.client.username_pw_set("iotfleet-service", "x")
    assert probe.connect()
    assert probe.publish("dt/acme/hq/lamp-1/telemetry", b"{}") == NOT_AUTHORIZED
