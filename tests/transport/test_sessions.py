"""A session the broker keeps (``ConnectOptions.session_expiry_s``), on both transports against mosquitto:
what arrives while the client is away is delivered when it reconnects, with no new SUBSCRIBE."""

from __future__ import annotations

import asyncio
import gc
import weakref

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


def test_an_ended_crt_session_is_freed_by_reference_counting(local_cloud: LocalCloud) -> None:
    """Not left to the cyclic collector (disabled here): once settle_heap() has frozen the heap, a session
    in a reference cycle would never be freed. The CRT lets go of its callbacks after "stopped", a little
    later, so the test waits for the session to go."""
    endpoint = local_cloud.endpoints[0]
    options = ConnectOptions(client_id="iotfleet-service-freed", identity=service_identity(local_cloud))

    async def scenario() -> None:
        session = await resolve_transport("crt").connect(endpoint, options)
        assert await session.publish(TOPIC, b"one", 1) < 0x80  # a publish through the in-flight bookkeeping
        await session.close()  # returns once the CRT reports the client stopped
        ref = weakref.ref(session)
        del session
        assert await until(lambda: ref() is None, timeout=10), (
            f"the ended session is still referenced by {[type(r).__name__ for r in gc.get_referrers(ref())]}"
        )

    gc.collect()
    gc.disable()
    try:
        asyncio.run(scenario())
    finally:
        gc.enable()
