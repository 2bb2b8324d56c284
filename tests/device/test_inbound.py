"""The device's inbound part against a fake session: kept subscriptions, routing, handlers, stream ends.

The fake (tests/device/fakes.py) implements our own Session protocol (transport.base); the real
transports are exercised against mosquitto in test_client.py. Here each rule of Inbound is checked on its own.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from iotfleet.device.client import DeviceCounters
from iotfleet.device.inbound import INBOUND_QUEUE, MAX_FILTERS_PER_SUBSCRIBE, Inbound
from iotfleet.errors import TopicError
from iotfleet.transport.base import InboundMessage
from tests.device.fakes import FakeSession


def message(topic: str, payload: bytes = b"{}") -> InboundMessage:
    return InboundMessage(topic=topic, payload=payload, qos=1)


def test_a_new_session_gets_every_kept_filter_in_subscribes_of_at_most_iot_cores_limit() -> None:
    async def scenario() -> None:
        inbound = Inbound("lamp-1", DeviceCounters())
        filters = [f"cmd/acme/hq/lamp-1/c{i}" for i in range(MAX_FILTERS_PER_SUBSCRIBE + 2)]
        for f in filters:
            await inbound.subscribe(None, f, 1)  # offline: kept for the next session
        await inbound.unsubscribe(None, filters[0])
        session = FakeSession()
        await inbound.restore(session)
        assert [len(p) for p in session.subscribes] == [MAX_FILTERS_PER_SUBSCRIBE, 1]
        assert [f for packet in session.subscribes for f, _ in packet] == filters[1:]

    asyncio.run(scenario())


def test_subscribing_on_a_session_that_just_ended_keeps_the_filter_for_the_next() -> None:
    async def scenario() -> None:
        inbound = Inbound("lamp-1", DeviceCounters())
        await inbound.subscribe(FakeSession(lost=True), "cmd/#", 1)  # no error: the next session restores it
        fresh = FakeSession()
        await inbound.restore(fresh)
        assert fresh.subscribes == [[("cmd/#", 1)]]

    asyncio.run(scenario())


def test_a_bad_filter_is_refused_before_anything_is_kept() -> None:
    async def scenario() -> None:
        inbound = Inbound("lamp-1", DeviceCounters())
        with pytest.raises(TopicError):
            await inbound.subscribe(None, "cmd/#/more", 1)
        assert inbound.subscriptions == {}

    asyncio.run(scenario())


def test_a_refused_filter_is_logged_and_the_others_stay(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        inbound = Inbound("lamp-1", DeviceCounters())
        session = FakeSession(refuse={"forbidden/#"})
        with caplog.at_level(logging.WARNING, logger="iotfleet.device.inbound"):
            await inbound.subscribe(session, "forbidden/#", 1)
            await inbound.subscribe(session, "cmd/#", 1)
        assert "forbidden/#" in caplog.text
        assert "cmd/#" not in caplog.text
        assert set(inbound.subscriptions) == {"forbidden/#", "cmd/#"}

    asyncio.run(scenario())


def test_messages_go_to_matching_routes_converted_and_a_none_is_skipped() -> None:
    async def scenario() -> None:
        counts = DeviceCounters()
        inbound = Inbound("lamp-1", counts)
        everything = inbound.route("all", None, None, lambda m: m.topic)
        odd = inbound.route("cmd", "cmd/+", None, lambda m: None if m.payload == b"skip" else m.payload)
        for topic, payload in [("cmd/a", b"1"), ("dt/x", b"2"), ("cmd/b", b"skip"), ("cmd/c", b"3")]:
            inbound.dispatch(message(topic, payload))
        inbound.end_streams()
        assert [t async for t in everything] == ["cmd/a", "dt/x", "cmd/b", "cmd/c"]
        assert [p async for p in odd] == [b"1", b"3"]
        assert counts.inbound == 4

    asyncio.run(scenario())


def test_a_handler_that_raises_stops_neither_the_other_handlers_nor_the_streams() -> None:
    async def scenario() -> None:
        inbound = Inbound("lamp-1", DeviceCounters())
        seen: list[str] = []

        def broken(_m: InboundMessage) -> None:
            raise RuntimeError("bug")

        inbound.add_handler("shadow/#", broken)
        inbound.add_handler("shadow/#", lambda m: seen.append(m.topic))
        stream = inbound.route("shadow", "shadow/#", None, lambda m: m.topic)
        inbound.dispatch(message("shadow/update"))
        inbound.end_streams()
        assert seen == ["shadow/update"]
        assert [t async for t in stream] == ["shadow/update"]

    asyncio.run(scenario())


def test_a_full_stream_drops_and_counts_and_an_ended_stream_gets_nothing_more() -> None:
    async def scenario() -> None:
        counts = DeviceCounters()
        inbound = Inbound("lamp-1", counts)
        slow = inbound.route("slow", None, None, lambda m: m)
        for _ in range(INBOUND_QUEUE + 3):
            inbound.dispatch(message("t"))
        assert counts.inbound_dropped == 3
        await slow.aclose()
        inbound.dispatch(message("t"))
        assert counts.inbound_dropped == 3  # the ended stream is no longer routed to

    asyncio.run(scenario())
