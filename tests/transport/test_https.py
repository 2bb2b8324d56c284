"""The HTTPS transport: a DeviceClient that publishes over HTTPS keeps its outbox, failover and loss
accounting; the status codes settle or keep a message as the matching PUBACK would."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotfleet.cloud.local import HTTPS_TEMPLATE, LocalCloud, ThingSpec
from iotfleet.config import LOCAL_FAST, Identity
from iotfleet.device import DeviceClient
from iotfleet.device.events import DeviceEvent, FailedOver, PublishFailed
from iotfleet.errors import ClientError, ConnectError, IdentityRefused
from iotfleet.provisioning import FleetProvisioner, IdentityStore
from iotfleet.transport.base import ConnectOptions, PubackCode, refuses_identity
from iotfleet.transport.https import HttpsTransport, puback_of_status, user_properties_header
from tests.conftest import TEST_QUOTAS, UNLIMITED, until

READING = {"ts": 1_700_000_000, "power_w": 12.5, "dim": 40, "lux": 300.0, "occupancy": True, "temperature_c": 21.0}


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(["eu-west-1", "us-east-1"], workdir=tmp_path / "cloud", ingest=True, quotas=TEST_QUOTAS) as local:
        yield local


def https_device(cloud: LocalCloud, identity: Identity, **options: Any) -> DeviceClient:
    """A device in acme/hq that publishes over HTTPS to ``cloud``'s regions, with no rate limits."""
    return DeviceClient(
        identity=identity,
        endpoints=cloud.https_endpoints,
        tenant="acme",
        site="hq",
        transport="https",
        limits=UNLIMITED,
        **options,
    )


def https_meter(cloud: LocalCloud, name: str = "meter-1") -> Identity:
    policy = cloud.create_https_policy("acme", "hq", name)
    [identity] = cloud.register_things([ThingSpec(name, "acme", "hq", policy=policy)])
    return identity


def test_status_codes_map_to_the_pubacks_mqtt_would_give() -> None:
    assert [puback_of_status(s) for s in (200, 401, 403, 429, 400, 413)] == [
        PubackCode.SUCCESS,
        PubackCode.NOT_AUTHORIZED,
        PubackCode.NOT_AUTHORIZED,
        PubackCode.QUOTA_EXCEEDED,
        PubackCode.IMPLEMENTATION_SPECIFIC_ERROR,
        PubackCode.IMPLEMENTATION_SPECIFIC_ERROR,
    ]
    assert puback_of_status(503) is None  # the session ends instead
    assert puback_of_status(500) is None
    header = user_properties_header([("iotfleet-seq", "7"), ("k", "v")])
    assert json.loads(base64.b64decode(header)) == [{"key": "iotfleet-seq", "value": "7"}, {"key": "k", "value": "v"}]


def test_a_device_client_publishes_over_https_into_the_ingest(cloud: LocalCloud) -> None:
    async def scenario() -> None:
        meter = https_meter(cloud)
        async with https_device(cloud, meter) as device:
            receipts = [await device.publish("telemetry", {**READING, "ts": READING["ts"] + i}) for i in range(5)]
            assert [r.reason_code for r in receipts] == [0] * 5
            assert {r.endpoint.region for r in receipts} == {"eu-west-1"}
            # HTTPS has no subscriptions: said at once, not a silent no-op
            with pytest.raises(ClientError, match="only publish"):
                await device.subscribe(device.scheme.command_filter(device.scope))
        stats = cloud.ingest_stats()[0]
        assert stats["ingested"] == 5  # with their message ids and sequences, as over MQTT
        assert [s.ranges() for s in stats["by_device"].values()] == [[[1, 5]]]

    asyncio.run(scenario())


def test_the_https_policy_allows_only_the_things_own_streams(cloud: LocalCloud) -> None:
    async def scenario() -> None:
        meter = https_meter(cloud)
        failed: list[DeviceEvent] = []
        async with https_device(cloud, meter, listeners=[failed.append]) as device:
            refused = device.enqueue_to("dt/acme/hq/other-meter/telemetry", READING)
            with pytest.raises(ClientError, match="0x87"):
                await refused
        assert [e.reason_code for e in failed if isinstance(e, PublishFailed)] == [PubackCode.NOT_AUTHORIZED]

    asyncio.run(scenario())


def test_a_killed_region_fails_the_https_device_over_without_loss(cloud: LocalCloud) -> None:
    async def scenario() -> None:
        meter = https_meter(cloud)
        events: list[DeviceEvent] = []
        async with https_device(cloud, meter, reconnect=LOCAL_FAST, listeners=[events.append]) as device:
            await device.publish("telemetry", READING)
            cloud.region("eu-west-1").kill()
            pending = [device.enqueue("telemetry", {**READING, "ts": READING["ts"] + i}) for i in range(1, 4)]
            receipts = [await p for p in pending]
            assert {r.endpoint.region for r in receipts} == {"us-east-1"}
            assert any(isinstance(e, FailedOver) for e in events)
        by_region = {region["region"]: region["by_device"]["meter-1"].ranges() for region in cloud.ingest_stats()}
        assert by_region == {"eu-west-1": [[1, 1]], "us-east-1": [[2, 4]]}  # nothing lost

    asyncio.run(scenario())


def test_a_dead_endpoint_is_a_connect_error_naming_it(cloud: LocalCloud) -> None:
    async def scenario() -> None:
        meter = https_meter(cloud)
        endpoint = cloud.https_endpoints[0]
        cloud.region("eu-west-1").kill()
        with pytest.raises(ConnectError) as refused:
            await HttpsTransport().connect(endpoint, ConnectOptions(client_id="meter-1", identity=meter))
        assert refused.value.reason == "refused"
        cloud.region("eu-west-1").restore()
        session = await HttpsTransport().connect(endpoint, ConnectOptions(client_id="meter-1", identity=meter))
        await session.close()
        cloud.region("eu-west-1").blackhole()  # the handshake completes, no answer comes
        with pytest.raises(ConnectError) as silent:
            await HttpsTransport().connect(
                endpoint, ConnectOptions(client_id="meter-1", identity=meter, connect_timeout_s=0.5)
            )
        assert silent.value.reason == "timeout"
        # killed while it holds a request: the connection is reset at once, not drained for a minute
        https = cloud.region("eu-west-1").https
        assert https is not None
        before = https.held  # the request of the attempt that timed out is held still: its client left
        held = asyncio.ensure_future(
            HttpsTransport().connect(endpoint, ConnectOptions(client_id="meter-1", identity=meter))
        )
        assert await until(lambda: https.held == before + 1)
        assert not held.done()
        await asyncio.wait_for(asyncio.to_thread(cloud.region("eu-west-1").kill), 5)
        with pytest.raises(ConnectError) as reset:  # aiohttp tries a HEAD once more: refused by then
            await asyncio.wait_for(held, 5)
        assert reset.value.reason in ("reset", "io", "refused")
        assert https.held == 0
        cloud.region("eu-west-1").restore()

    asyncio.run(scenario())


def test_a_certificate_the_region_does_not_take_is_refused_at_connect_and_nothing_is_dropped(
    cloud: LocalCloud,
) -> None:
    """As a failed handshake is over MQTT (IoT Core's answer): the device keeps its messages."""

    async def scenario() -> None:
        meter = https_meter(cloud)
        certificate_id = cloud.region("eu-west-1").registry.certificates_of("meter-1")[0].certificate_id
        await asyncio.to_thread(cloud.update_certificate, certificate_id, "INACTIVE")
        with pytest.raises(ConnectError) as refused:
            await HttpsTransport().connect(
                cloud.https_endpoints[0], ConnectOptions(client_id="meter-1", identity=meter)
            )
        assert refused.value.reason == "tls"
        assert refuses_identity(refused.value.reason)
        async with https_device(cloud, meter, reconnect=LOCAL_FAST, connect_wait_s=0) as device:
            queued = device.enqueue("telemetry", READING)
            with pytest.raises(IdentityRefused):  # every region refuses it: said, as over MQTT
                await device.wait_connected(10)
            assert not queued.done()
            assert len(device.outbox) == 1  # kept for when the certificate is ACTIVE again
            await asyncio.to_thread(cloud.update_certificate, certificate_id, "ACTIVE")
            assert (await asyncio.wait_for(queued, 10)).reason_code == 0

    asyncio.run(scenario())


def test_a_device_provisioned_by_claim_with_the_https_template_publishes_over_https(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    """The template renders the thing's own HTTPS policy from its parameters (Fn::Sub)."""

    async def scenario() -> None:
        provisioner = FleetProvisioner(
            endpoints=cloud.endpoints,
            claim=cloud.claim_identity,
            template=HTTPS_TEMPLATE,
            parameters={"Tenant": "acme", "Site": "hq", "SerialNumber": "meter-9"},
            timeout=10,
        )
        stored = await provisioner.provision_into(IdentityStore(tmp_path / "meter-9"), verify=False)
        async with https_device(cloud, stored.identity) as device:
            assert (await device.publish("telemetry", READING)).reason_code == 0
            with pytest.raises(ClientError, match="0x87"):
                await device.publish_to("dt/acme/hq/meter-1/telemetry", READING)  # another thing's stream

    asyncio.run(scenario())
