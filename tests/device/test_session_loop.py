"""The device's session loop against a fake transport: serve, reconnect, fail over, ack timeout, failback.

The fake transport (tests/device/fakes.py) refuses CONNECTs to endpoints that are not ``up``; each test
ends sessions and moves endpoints up and down itself. The endpoint choices are EndpointSelector's
(tested in test_failover.py); here the loop's part is checked: what it does with each session, what it
tells and counts, and that it asks the selector at the right moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest

from iotfleet.config import LOCAL_FAST, Endpoint, Identity, OutboxPolicy, PublishLimits, ReconnectPolicy
from iotfleet.device.client import DeviceCounters
from iotfleet.device.events import (
    Connected,
    ConnectFailed,
    DeviceEvent,
    Disconnected,
    FailedOver,
    Listeners,
)
from iotfleet.device.failover import EndpointSelector
from iotfleet.device.inbound import Inbound
from iotfleet.device.outbox import open_outbox
from iotfleet.device.publisher import Publisher
from iotfleet.device.session_loop import SessionLoop
from iotfleet.errors import ConnectError
from iotfleet.transport.base import ConnectOptions, DisconnectReason
from tests.conftest import until
from tests.device.fakes import EU, US, FakeTransport

E = TypeVar("E", Disconnected, ConnectFailed, Connected)

TOPIC = "dt/acme/hq/lamp-1/power"
FAST = LOCAL_FAST.model_copy(update={"stable_after_s": 0.0, "failover_after_failures": 1, "failback_probe_s": 0.2})


class Rig:
    """A SessionLoop with real parts (publisher, inbound, selector) over a fake transport."""

    def __init__(self, policy: ReconnectPolicy, up: set[Endpoint], endpoints: tuple[Endpoint, ...] = (EU, US)):
        self.transport = FakeTransport(up=set(up))
        self.counters = DeviceCounters()
        self.events: list[DeviceEvent] = []
        listeners = Listeners([self.events.append])
        self.inbound = Inbound("lamp-1", self.counters)
        self.publisher = Publisher(
            "lamp-1",
            open_outbox(OutboxPolicy()),
            PublishLimits(enabled=False),
            ack_timeout_s=policy.ping_timeout_s,
            counts=self.counters,
            listeners=listeners,
        )
        identity = Identity(thing_name="lamp-1", cert_file="c.pem", key_file="k.pem", ca_file="ca.pem")
        self.loop = SessionLoop(
            "lamp-1",
            self.transport,
            EndpointSelector(endpoints, policy),
            ConnectOptions(client_id="lamp-1", identity=identity),
            publisher=self.publisher,
            inbound=self.inbound,
            counts=self.counters,
            listeners=listeners,
        )

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def moves(self) -> list[tuple[Endpoint, Endpoint, bool]]:
        return [(e.from_endpoint, e.to_endpoint, e.failback) for e in self.events if isinstance(e, FailedOver)]


@contextlib.asynccontextmanager
async def running(rig: Rig) -> AsyncIterator[Rig]:
    task = asyncio.create_task(rig.loop.run())
    try:
        yield rig
    finally:
        rig.loop.stop.set()
        await asyncio.wait_for(task, 5)
        await rig.loop.close()


def test_a_session_restores_subscriptions_runs_hooks_then_sends_the_outbox() -> None:
    async def scenario() -> None:
        rig = Rig(FAST, up={EU})
        await rig.inbound.subscribe(None, "cmd/acme/hq/lamp-1/+", 1)
        queued = rig.publisher.enqueue(TOPIC, b"queued offline", 1)
        hooked: list[tuple[Endpoint, int]] = []

        async def hook(endpoint: Endpoint) -> None:
            session = rig.transport.sessions[-1]
            hooked.append((endpoint, len(session.subscribes)))

        rig.loop.hooks.append(hook)
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            session = rig.transport.sessions[0]
            assert session.subscribes == [[("cmd/acme/hq/lamp-1/+", 1)]]
            assert [s.payload for s in session.sent] == [b"queued offline"]
            session.sent[0].ack()
            assert (await queued).endpoint == EU
            assert await until(lambda: hooked == [(EU, 1)])  # after the subscriptions were restored
            assert [type(e) for e in rig.events[:1]] == [Connected]
            assert rig.counters.connects == 1
            assert rig.loop.sessions == 1

    asyncio.run(scenario())


def test_a_failing_hook_is_logged_and_the_session_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        rig = Rig(FAST, up={EU})

        async def broken(endpoint: Endpoint) -> None:
            raise RuntimeError("hook bug")

        rig.loop.hooks.append(broken)
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            assert await until(lambda: "session hook" in caplog.text)
            assert rig.loop.session is rig.transport.sessions[0]
            assert not rig.transport.sessions[0].lost

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert "hook bug" in caplog.text


def test_a_lost_session_is_told_with_its_reason_and_the_device_reconnects() -> None:
    async def scenario() -> None:
        rig = Rig(FAST, up={EU}, endpoints=(EU,))
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            rig.transport.connected.clear()
            rig.transport.sessions[0].end(DisconnectReason.RESET)
            await asyncio.wait_for(rig.transport.connected.wait(), 5)
            assert await until(lambda: rig.loop.session is rig.transport.sessions[1])
            disconnected = rig.of(Disconnected)
            assert [(e.endpoint, e.reason) for e in disconnected] == [(EU, DisconnectReason.RESET)]
            assert rig.loop.last_reason == DisconnectReason.RESET
            assert rig.counters.connects == 2
            assert rig.loop.served

    asyncio.run(scenario())


def test_refused_attempts_are_counted_and_the_device_fails_over_to_the_next_endpoint() -> None:
    async def scenario() -> None:
        rig = Rig(FAST, up={US})
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            assert rig.transport.attempts[:2] == [EU, US]
            assert rig.loop.session is not None
            assert rig.loop.session.endpoint == US
            assert [(e.endpoint, e.reason) for e in rig.of(ConnectFailed)] == [(EU, "refused")]
            assert rig.moves() == [(EU, US, False)]
            assert rig.counters.connect_failures == 1
            assert rig.counters.failovers == 1
            assert rig.loop.last_error is not None
            assert rig.loop.last_error.reason == "refused"

    asyncio.run(scenario())


def test_an_unanswered_publish_ends_a_silent_session_as_an_ack_timeout() -> None:
    async def scenario() -> None:
        rig = Rig(FAST.model_copy(update={"ping_timeout_s": 0.1}), up={EU, US})
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            rig.transport.connected.clear()
            future = rig.publisher.enqueue(TOPIC, b"into the void", 1)  # EU never answers it
            await asyncio.wait_for(rig.transport.connected.wait(), 5)  # a new session: the next endpoint
            assert [(e.endpoint, e.reason) for e in rig.of(Disconnected)] == [(EU, DisconnectReason.ACK_TIMEOUT)]
            assert rig.transport.sessions[0].lost  # closed by the loop
            replay = await until(lambda: len(rig.transport.sessions[1].sent) == 1)
            assert replay
            assert rig.transport.sessions[1].endpoint == US
            rig.transport.sessions[1].sent[0].ack()
            assert (await future).endpoint == US

    asyncio.run(scenario())


def test_the_device_fails_back_once_the_preferred_endpoint_answers_again() -> None:
    async def scenario() -> None:
        rig = Rig(FAST, up={US})
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            secondary = rig.transport.sessions[0]
            assert secondary.endpoint == US
            rig.transport.up.add(EU)
            assert await until(lambda: rig.loop.session is not None and rig.loop.session.endpoint == EU)
            assert secondary.lost  # the old session is closed once the new one is served
            assert rig.moves() == [(EU, US, False), (US, EU, True)]
            assert rig.counters.failovers == 2

    asyncio.run(scenario())


def test_no_probe_while_on_the_preferred_endpoint() -> None:
    async def scenario() -> None:
        rig = Rig(FAST, up={EU, US})
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            assert rig.loop._probe_tick_s() is None  # noqa: SLF001 - the loop sleeps until something happens
            assert rig.transport.attempts == [EU]

    asyncio.run(scenario())


def test_a_session_that_ends_before_it_is_stable_counts_as_a_failed_attempt() -> None:
    async def scenario() -> None:
        rig = Rig(FAST.model_copy(update={"stable_after_s": 60.0, "failover_after_s": 120.0}), up={EU}, endpoints=(EU,))
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            rig.transport.connected.clear()
            rig.transport.sessions[0].end(DisconnectReason.RESET)
            await asyncio.wait_for(rig.transport.connected.wait(), 5)
            assert rig.counters.short_sessions == 1

    asyncio.run(scenario())


SLOW = FAST.model_copy(update={"max_backoff_s": 600.0})


def test_an_identity_every_endpoint_refuses_is_told_once_and_retried_only_after_the_longest_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        rig = Rig(SLOW, up=set())
        rig.transport.refusing.update({EU: "connack 0x87", US: "tls"})  # not authorized; handshake failed (revoked)
        async with running(rig):
            await asyncio.wait_for(rig.loop.refused.wait(), 5)
            refusal = rig.loop.refusal
            assert refusal is not None
            assert refusal.reasons == {str(EU): "connack 0x87", str(US): "tls"}
            assert "revoked or inactive" in str(refusal)
            assert "client/lamp-1" in str(refusal)
            assert [(e.endpoint, e.refused) for e in rig.of(ConnectFailed)] == [(EU, True), (US, True)]
            assert rig.loop.next_delay_s >= SLOW.max_backoff_s / 2  # not a hot loop: minutes, not seconds
            assert rig.transport.attempts == [EU, US]

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert caplog.text.count("every endpoint refused this identity") == 1


@pytest.mark.parametrize("other", ["refused", "timeout", "reset"])
def test_an_endpoint_that_is_down_or_hangs_up_says_nothing_about_the_identity(other: str) -> None:
    """Down (TCP refused, or silent), or hanging up before the CONNACK (a throttled CONNECT, a certificate
    the region does not know yet): the endpoint may take the identity later."""

    async def scenario() -> None:
        rig = Rig(FAST, up=set())
        rig.transport.refusing.update({EU: "connack 0x87", US: other})
        async with running(rig):
            assert await until(lambda: len(rig.transport.attempts) >= 4)
            assert rig.loop.refusal is None
            assert [e.refused for e in rig.of(ConnectFailed)][:2] == [True, False]

    asyncio.run(scenario())


def test_a_session_after_a_refusal_clears_it() -> None:
    async def scenario() -> None:
        rig = Rig(FAST, up=set(), endpoints=(EU,))
        rig.transport.refusing[EU] = "connack 0x87"
        async with running(rig):
            await asyncio.wait_for(rig.loop.refused.wait(), 5)
            rig.transport.up.add(EU)  # the certificate was made ACTIVE again
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            assert rig.loop.refusal is None
            assert not rig.loop.refused.is_set()

    asyncio.run(scenario())


NEW = Identity(thing_name="lamp-1", cert_file="new.pem", key_file="new.key", ca_file="ca.pem")


def test_a_new_identity_gets_its_session_before_the_old_one_closes_and_nothing_queued_is_lost() -> None:
    async def scenario() -> None:
        rig = Rig(FAST, up={EU})
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            old = rig.transport.sessions[0]
            in_flight = rig.publisher.enqueue(TOPIC, b"sent, not acknowledged", 1)
            assert await until(lambda: len(old.sent) == 1)
            await rig.loop.use_identity(NEW)
            assert rig.transport.identities == ["c.pem", "new.pem"]
            assert old.lost  # closed after the new session was up
            new = rig.loop.session
            assert new is rig.transport.sessions[1]
            assert new.endpoint == EU  # the same endpoint
            assert await until(lambda: [s.payload for s in new.sent] == [b"sent, not acknowledged"])  # resent
            new.sent[0].ack()
            assert (await in_flight).endpoint == EU
            assert rig.loop.options.identity == NEW

    asyncio.run(scenario())


def test_a_refused_new_identity_leaves_the_old_one_in_use() -> None:
    async def scenario() -> None:
        rig = Rig(FAST, up={EU})
        rig.transport.refused_certificates.add("new.pem")
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            with pytest.raises(ConnectError, match="not authorized"):
                await rig.loop.use_identity(NEW)
            assert rig.loop.session is rig.transport.sessions[0]
            assert not rig.transport.sessions[0].lost
            assert rig.loop.options.identity.cert_file == Path("c.pem")

    asyncio.run(scenario())


def test_a_reboot_ends_the_session_waits_and_starts_over_from_the_preferred_endpoint() -> None:
    async def scenario() -> None:
        rig = Rig(FAST.model_copy(update={"failback_probe_s": 60.0}), up={US})  # EU is down: on US
        async with running(rig):
            assert await until(lambda: rig.loop.session is not None)
            first = rig.transport.sessions[0]
            assert first.endpoint == US
            tried = len(rig.transport.attempts)
            rebooted_at = time.monotonic()
            rig.loop.reboot(0.3)
            assert await until(lambda: len(rig.transport.sessions) == 2)
            assert first.lost  # the device ended it
            assert rig.of(Disconnected)[-1].reason == "reboot"
            assert rig.transport.attempted_at[tried] - rebooted_at >= 0.3  # offline for the time asked
            assert rig.transport.attempts[tried] == EU  # then started over: the preferred endpoint first
            assert rig.transport.sessions[1].endpoint == US  # EU still down: failed over again
            queued = rig.publisher.enqueue(TOPIC, b"after the reboot", 1)
            assert await until(lambda: len(rig.transport.sessions[1].sent) == 1)
            rig.transport.sessions[1].sent[0].ack()
            assert (await queued).endpoint == US

    asyncio.run(scenario())


# ---------------------------------------------------------------- the standby session

STANDBY = FAST.model_copy(update={"standby": True})


def test_the_standby_session_takes_over_at_once_and_the_next_standby_never_targets_the_live_region() -> None:
    async def scenario() -> None:
        rig = Rig(STANDBY, up={EU, US})
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            assert await until(lambda: len(rig.transport.sessions) == 2)  # the live session, then the standby
            live, standby = rig.transport.sessions
            assert (live.endpoint, standby.endpoint) == (EU, US)
            assert rig.loop.session is live
            future = rig.publisher.enqueue(TOPIC, b"in flight when EU dies", 1)
            assert await until(lambda: len(live.sent) == 1)
            rig.transport.up.discard(EU)
            live.end(DisconnectReason.RESET)
            assert await until(lambda: len(standby.sent) == 1)  # resent on the standby: no CONNECT, no backoff
            assert rig.loop.session is standby
            standby.sent[0].ack()
            assert (await future).endpoint == US
            assert rig.moves() == [(EU, US, False)]
            assert [e.endpoint for e in rig.of(Connected)] == [EU, US]
            assert rig.counters.failovers == 1
            # the next standby goes to EU (down: retried, not told); never again to US, which is live
            assert await until(lambda: rig.transport.attempts.count(EU) >= 3)
            assert rig.transport.attempts.count(US) == 1
            assert rig.of(ConnectFailed) == []
            assert not standby.lost

    asyncio.run(scenario())


def test_the_standby_on_the_preferred_endpoint_is_the_failback() -> None:
    async def scenario() -> None:
        rig = Rig(STANDBY, up={US})
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            secondary = rig.transport.sessions[0]
            assert secondary.endpoint == US
            rig.transport.up.add(EU)  # the standby, retrying EU, opens there; the failback takes it over
            assert await until(lambda: rig.loop.session is not None and rig.loop.session.endpoint == EU)
            [on_eu] = [s for s in rig.transport.sessions if s.endpoint == EU]  # no probe of its own
            assert rig.loop.session is on_eu
            assert secondary.lost  # closed once the standby took over
            assert rig.moves() == [(EU, US, False), (US, EU, True)]
            assert await until(lambda: sum(s.endpoint == US for s in rig.transport.sessions) == 2)  # a new standby
        assert all(s.lost for s in rig.transport.sessions)  # the live one and the standby end with the loop

    asyncio.run(scenario())


def test_a_reboot_drops_the_standby() -> None:
    async def scenario() -> None:
        rig = Rig(STANDBY, up={EU, US})
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            assert await until(lambda: len(rig.transport.sessions) == 2)
            live, standby = rig.transport.sessions
            rig.loop.reboot(0.05)
            assert await until(lambda: standby.lost)  # a rebooting device holds no session anywhere
            assert live.lost
            assert await until(lambda: rig.loop.session is not None and rig.loop.session.endpoint == EU)
            assert rig.moves() == []  # the reboot starts over on the preferred endpoint: no takeover

    asyncio.run(scenario())


def test_a_standby_still_trying_where_the_device_reconnects_is_dropped_first() -> None:
    """Two sessions of one client id in one region evict each other: the loop's own attempt wins."""

    async def scenario() -> None:
        rig = Rig(STANDBY, up={EU})
        rig.transport.delays[US] = 0.5
        async with running(rig):
            await asyncio.wait_for(rig.loop.connected.wait(), 5)
            assert await until(lambda: rig.transport.connecting[US] == 1)  # the standby's CONNECT, in flight
            rig.transport.up = {US}  # it would open now, as the device's own attempt does
            rig.transport.sessions[0].end(DisconnectReason.RESET)
            assert await until(lambda: rig.loop.session is not None and rig.loop.session.endpoint == US)
            assert await until(lambda: rig.transport.attempts[-3:] == [EU, EU, EU])  # the next standby: EU
            assert [s.endpoint for s in rig.transport.sessions] == [EU, US]  # no second session to US

    asyncio.run(scenario())
