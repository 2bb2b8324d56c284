"""The device's publish path against a fake session: window, order, settlement, replay, ack deadline, close.

Each test decides when PUBACKs come and when the session ends (tests/device/fakes.py); the real
transports carry the same path against mosquitto in test_client.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.config import OutboxPolicy, OverflowPolicy, PublishLimits
from iotfleet.device.client import DeviceCounters
from iotfleet.device.events import DeviceEvent, Listeners, PublishAcked, PublishFailed
from iotfleet.device.outbox import open_outbox
from iotfleet.device.publisher import ENVELOPE_KEY, Publisher, RateLimiter, encode_payload
from iotfleet.errors import ClientError, ConfigError, ConnectionLost, PublishRejected
from iotfleet.topics import MESSAGE_ID_PROPERTY, SEQUENCE_PROPERTY
from tests.conftest import until
from tests.device.fakes import EU, US, FakeSession

TOPIC = "dt/acme/hq/lamp-1/power"


def make(
    *,
    max_inflight: int = 100,
    outbox: OutboxPolicy | None = None,
    ack_timeout_s: float = 30.0,
    limits: PublishLimits | None = None,
) -> tuple[Publisher, DeviceCounters, list[DeviceEvent]]:
    counters = DeviceCounters()
    events: list[DeviceEvent] = []
    publisher = Publisher(
        "lamp-1",
        open_outbox(outbox or OutboxPolicy()),
        limits or PublishLimits(enabled=False, max_inflight=max_inflight),
        ack_timeout_s=ack_timeout_s,
        counts=counters,
        listeners=Listeners([events.append]),
    )
    return publisher, counters, events


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_at_most_the_window_is_in_flight_and_each_puback_lets_the_next_go_in_order() -> None:
    async def scenario() -> None:
        publisher, counters, _ = make(max_inflight=2)
        session = FakeSession()
        publisher.attach(session, wake=lambda: None)
        futures = [publisher.enqueue(TOPIC, f"m{i}", 1) for i in range(5)]
        assert [s.payload for s in session.sent] == [b"m0", b"m1"]
        session.sent[1].ack()  # out of order: frees a slot all the same
        assert [s.payload for s in session.sent] == [b"m0", b"m1", b"m2"]
        assert futures[1].done()
        assert not futures[0].done()
        while unanswered := [s for s in session.sent if not s.answered]:
            unanswered[0].ack()
        assert [s.payload for s in session.sent] == [f"m{i}".encode() for i in range(5)]
        receipts = [await f for f in futures]
        assert [r.seq for r in receipts] == [1, 2, 3, 4, 5]
        assert all(r.endpoint == EU for r in receipts)
        assert counters.acked == counters.sent == counters.enqueued == 5
        assert len(publisher.outbox) == 0
        props = dict(session.sent[0].properties)
        assert props[SEQUENCE_PROPERTY] == "1"
        assert props[MESSAGE_ID_PROPERTY] == receipts[0].message_id

    run(scenario)


def test_latency_is_measured_to_when_the_transport_saw_the_puback_not_when_the_loop_ran_it() -> None:
    async def scenario() -> None:
        publisher, _, events = make()
        session = FakeSession()
        publisher.attach(session, wake=lambda: None)
        before = time.monotonic()
        future = publisher.enqueue(TOPIC, b"x", 1)
        after = time.monotonic()
        seen = after + 5.0  # a transport that gathered its callbacks reports the PUBACK's own time
        session.sent[0].ack(at=seen)
        receipt = await future
        assert seen - after <= receipt.latency_s <= seen - before
        (acked,) = [e for e in events if isinstance(e, PublishAcked)]
        assert acked.latency_s == receipt.latency_s

    run(scenario)


def test_a_failure_code_is_final_counted_and_told() -> None:
    async def scenario() -> None:
        publisher, counters, events = make()
        session = FakeSession()
        publisher.attach(session, wake=lambda: None)
        future = publisher.enqueue(TOPIC, b"x", 1)
        session.sent[0].ack(0x87)
        with pytest.raises(PublishRejected, match=r"PUBACK .*; check the thing's policy") as caught:
            await future
        assert caught.value.reason_code == 0x87
        assert len(publisher.outbox) == 0  # final: never resent
        assert sum(counters.rejected.values()) == 1
        assert counters.acked == 0
        assert [(type(e), getattr(e, "reason_code", None)) for e in events] == [(PublishFailed, 0x87)]

    run(scenario)


def test_a_lost_session_keeps_the_message_and_the_next_session_replays_it_once_in_order() -> None:
    async def scenario() -> None:
        publisher, counters, events = make()
        first = FakeSession()
        publisher.attach(first, wake=lambda: None)
        futures = [publisher.enqueue(TOPIC, f"m{i}", 1) for i in range(3)]
        first.sent[0].ack()
        first.end("connection-lost")
        publisher.detach()
        later = publisher.enqueue(TOPIC, b"offline", 1)  # queued while offline: sent after the replay
        assert len(publisher.outbox) == 3
        assert not futures[1].done()
        second = FakeSession(endpoint=US)
        publisher.attach(second, wake=lambda: None)
        publisher.pump()
        assert [s.payload for s in second.sent] == [b"m1", b"m2", b"offline"]
        assert counters.resent == 2
        for publish in second.sent:
            publish.ack()
        receipts = [await f for f in [*futures[1:], later]]
        assert [r.endpoint for r in receipts] == [US, US, US]
        assert sum(isinstance(e, PublishAcked) for e in events) == 4

    run(scenario)


def test_a_late_puback_from_an_old_session_frees_no_slot_in_the_new_one() -> None:
    async def scenario() -> None:
        publisher, _, _ = make(max_inflight=1)
        old = FakeSession()
        publisher.attach(old, wake=lambda: None)
        first = publisher.enqueue(TOPIC, b"a", 1)
        publisher.enqueue(TOPIC, b"b", 1)
        publisher.detach()
        new = FakeSession(endpoint=US)
        publisher.attach(new, wake=lambda: None)
        publisher.pump()
        assert [s.payload for s in new.sent] == [b"a"]
        old.sent[0].ack()  # the broker answered the old session after all: settles "a" ...
        assert (await first).endpoint == EU
        assert [s.payload for s in new.sent] == [b"a"]  # ... but the new session's slot stays taken
        new.sent[0].ack()  # its answer for an already settled message frees the slot
        assert [s.payload for s in new.sent] == [b"a", b"b"]

    run(scenario)


def test_an_unanswered_publish_wakes_the_session_loop_at_its_deadline() -> None:
    async def scenario() -> None:
        publisher, _, _ = make(ack_timeout_s=0.05)
        session = FakeSession()
        woken = asyncio.Event()
        publisher.attach(session, wake=woken.set)
        publisher.enqueue(TOPIC, b"x", 1)
        assert not publisher.ack_overdue()
        await asyncio.wait_for(woken.wait(), 5)
        assert publisher.ack_overdue()
        session.sent[0].ack()
        assert not publisher.ack_overdue()

    run(scenario)


def test_qos0_goes_out_now_or_fails_offline_and_never_enters_the_outbox() -> None:
    async def scenario() -> None:
        publisher, _, _ = make()
        with pytest.raises(ConnectionLost, match="offline"):
            await publisher.enqueue(TOPIC, b"x", 0)
        session = FakeSession()
        publisher.attach(session, wake=lambda: None)
        future = publisher.enqueue(TOPIC, b"y", 0)
        assert len(publisher.outbox) == 0
        assert session.sent[0].qos == 0
        session.sent[0].ack()
        assert (await future).seq == 0

    run(scenario)


def test_bad_publishes_are_refused_with_what_to_do() -> None:
    async def scenario() -> None:
        publisher, _, _ = make(limits=PublishLimits(enabled=False, max_payload_bytes=10))
        with pytest.raises(ConfigError, match="QoS 2 is not supported"):
            publisher.enqueue(TOPIC, b"x", 2)
        with pytest.raises(ConfigError, match=r"11 bytes exceeds .* 10-byte limit: split it"):
            publisher.enqueue(TOPIC, b"x" * 11, 1)
        with pytest.raises(ConfigError, match="not JSON-serialisable"):
            publisher.enqueue(TOPIC, {"at": object()}, 1)
        assert len(publisher.outbox) == 0

    run(scenario)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), JSON_VALUES, max_size=8))
def test_a_mapping_is_sent_as_json_that_reads_back_the_same(payload: dict[str, object]) -> None:
    assert json.loads(encode_payload(payload)) == payload


def test_payload_encoding_keeps_what_json_dumps_accepts_and_names_what_it_cannot() -> None:
    keyed_by_int: dict[Any, Any] = {1: "a", "b": [1.5, None, True]}  # not a Payload's type, as json.dumps takes it
    assert encode_payload(keyed_by_int) == b'{"1":"a","b":[1.5,null,true]}'
    assert encode_payload({"name": "l\u00e4mpe"}) == '{"name":"l\u00e4mpe"}'.encode()
    assert encode_payload("l\u00e4mpe") == "l\u00e4mpe".encode()
    assert encode_payload(b"\x00raw") == b"\x00raw"
    with pytest.raises(ConfigError, match=r"not JSON-serialisable .*pass bytes, str or a JSON-able mapping"):
        encode_payload({"big": 2**70})
    for bad in ({"x": math.nan}, {"x": [1.0, {"y": -math.inf}]}, {"x": (None, math.inf)}):
        with pytest.raises(ConfigError, match="NaN or an infinity, which JSON does not have: send null"):
            encode_payload(bad)


def test_a_full_outbox_drops_by_its_policy_and_tells_whose_message_went() -> None:
    async def scenario() -> None:
        oldest, counters, events = make(outbox=OutboxPolicy(max_messages=2, overflow=OverflowPolicy.DROP_OLDEST))
        first = oldest.enqueue(TOPIC, b"1", 1)
        oldest.enqueue(TOPIC, b"2", 1)
        oldest.enqueue(TOPIC, b"3", 1)
        with pytest.raises(ClientError, match="dropped-oldest"):
            await first
        assert [e.reason for e in events if isinstance(e, PublishFailed)] == ["dropped-oldest"]
        newest, _, events = make(outbox=OutboxPolicy(max_messages=1, overflow=OverflowPolicy.DROP_NEWEST))
        newest.enqueue(TOPIC, b"1", 1)
        with pytest.raises(ClientError, match="full; the new message was dropped"):
            await newest.enqueue(TOPIC, b"2", 1)
        assert [e.reason for e in events if isinstance(e, PublishFailed)] == ["dropped-newest"]
        assert counters.enqueued == 3

    run(scenario)


def test_the_envelope_wraps_json_with_the_id_and_sequence() -> None:
    async def scenario() -> None:
        publisher, _, _ = make(outbox=OutboxPolicy(envelope=True))
        session = FakeSession()
        publisher.attach(session, wake=lambda: None)
        publisher.enqueue(TOPIC, {"watts": 3}, 1)
        publisher.enqueue(TOPIC, b"raw", 1)
        first = json.loads(session.sent[0].payload)
        assert first["watts"] == 3
        assert first[ENVELOPE_KEY]["seq"] == 1
        assert session.sent[1].payload == b"raw"

    run(scenario)


def test_closing_settles_every_caller_and_a_memory_outbox_reports_what_it_loses() -> None:
    async def scenario() -> None:
        publisher, _, events = make()
        future = publisher.enqueue(TOPIC, b"x", 1)  # offline: never sent
        publisher.stop()
        publisher.close()
        with pytest.raises(ConnectionLost, match=r"closed with message 1 unacknowledged$"):
            await future
        assert [e.reason for e in events if isinstance(e, PublishFailed)] == ["closed"]

    run(scenario)


def test_closing_with_a_durable_outbox_keeps_the_messages_for_the_next_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        policy = OutboxPolicy(path=tmp_path / "outbox.db")
        publisher, _, events = make(outbox=policy)
        future = publisher.enqueue(TOPIC, b"x", 1)
        publisher.close()
        with pytest.raises(ConnectionLost, match="kept in the durable outbox"):
            await future
        assert events == []
        again, _, _ = make(outbox=policy)
        again.restore()
        session = FakeSession()
        again.attach(session, wake=lambda: None)
        again.pump()
        assert [s.payload for s in session.sent] == [b"x"]
        again.close()

    run(scenario)


def test_flush_waits_for_what_is_queued_now_and_names_what_is_left_on_timeout() -> None:
    async def scenario() -> None:
        publisher, _, _ = make()
        session = FakeSession()
        publisher.attach(session, wake=lambda: None)
        publisher.enqueue(TOPIC, b"a", 1)
        publisher.enqueue(TOPIC, b"b", 1)
        with pytest.raises(ClientError, match=r"2 publishes of lamp-1 were still unacknowledged after 0\.01s"):
            await publisher.flush(0.01)
        flushed = asyncio.ensure_future(publisher.flush(5))
        await asyncio.sleep(0)
        session.sent[0].ack()
        assert not flushed.done()
        session.sent[1].ack()
        await asyncio.wait_for(flushed, 5)

    run(scenario)


def test_rate_limits_hold_messages_back_and_a_timer_sends_them_in_order() -> None:
    async def scenario() -> None:
        publisher, _, _ = make(limits=PublishLimits(max_publishes_per_s=20, max_bytes_per_s=10**6))
        session = FakeSession()
        publisher.attach(session, wake=lambda: None)
        for i in range(25):
            publisher.enqueue(TOPIC, f"m{i}", 1)
        assert len(session.sent) == 20  # a full bucket: one second's worth
        assert await until(lambda: len(session.sent) == 25)
        assert [s.payload for s in session.sent] == [f"m{i}".encode() for i in range(25)]

    run(scenario)


def test_rate_limiter_paces_publishes_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("iotfleet.device.publisher.time.monotonic", lambda: now[0])
    limiter = RateLimiter(PublishLimits(max_publishes_per_s=10, max_bytes_per_s=1000))
    assert [limiter.wait(10) for _ in range(10)] == [0.0] * 10  # a full bucket of 10 messages
    assert limiter.wait(10) == pytest.approx(0.1)  # the 11th waits for one token
    now[0] += 0.1
    assert limiter.wait(10) == 0.0
    now[0] += 10
    assert limiter.wait(900) == 0.0
    assert limiter.wait(200) == pytest.approx(0.1)  # bytes, not messages, are short now
    assert RateLimiter(PublishLimits(enabled=False)).wait(10**9) == 0.0
