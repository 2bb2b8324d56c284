"""A session the broker keeps (``ConnectOptions.session_expiry_s``), on both transports against mosquitto:
what arrives while the client is away is delivered when it reconnects, with no new SUBSCRIBE."""

from __future__ import annotations

import asyncio

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from iotfleet.transport import resolve_transport
from iotfleet.transport.base import ConnectOptions, InboundMessage
from tests.conftest import until

TOPIC = "ops/resume-test"


def service_identity(cloud: LocalCloud) -> Identity:
    files = cloud.service
    return Identity(thing_name="service", cert_file=files.cert_file, key_file=files.key_file, ca_file=cloud.ca_file)


@pytest.mark.parametrize("transport", ["crt", "paho"])
@pytest.mark.parametrize("expiry", [60, 0], ids=["kept", "clean"])
def test_a_kept_session_gets_what_was_queued_while_away_and_a_clean_one_does_not(
    local_cloud: LocalCloud, transport: str, expiry: int
) -> None:
    endpoint = local_cloud.endpoints[0]
    identity = service_identity(local_cloud)
    received: list[InboundMessage] = []

    async def scenario() -> None:
        client = resolve_transport(transport)
        options = ConnectOptions(
            client_id="iotfleet-service-resume-test", identity=identity, on_message=received.append,
            session_expiry_s=expiry,
        )  # fmt: skip
        first = await client.connect(endpoint, options)
        await first.subscribe([(TOPIC, 1)])
        await first.close()
        sender = await client.connect(endpoint, ConnectOptions(client_id="iotfleet-service-sender", identity=identity))
        for i in range(5):
            assert await sender.publish(TOPIC, f"while away {i}".encode(), 1) < 0x80
        again = await client.connect(endpoint, options)
        if not expiry:  # a clean session has no subscription left: make one, for the marker
            await again.subscribe([(TOPIC, 1)])
        assert await sender.publish(TOPIC, b"after", 1) < 0x80  # a marker: what was queued comes before it
        await sender.close()
        assert await until(lambda: bool(received) and received[-1].payload == b"after")
        queued = [f"while away {i}".encode() for i in range(5)] if expiry else []
        assert [m.payload for m in received] == [*queued, b"after"]
        await again.close()

    asyncio.run(scenario())
