"""A device's publish path, in one object: from ``enqueue`` to the PUBACK that settles a message.

:class:`Publisher` is one part of :class:`~iotfleet.device.client.DeviceClient`. It admits a publish to
the outbox (wrapping JSON in the envelope when asked), moves the outbox onto the live session in order
(``pump``: at most ``max_inflight`` unacknowledged at once and within the connection's rate limits),
settles each PUBACK (the message leaves the outbox on success or on a failure code such as 0x87, which
is final) and watches the oldest in-flight publish's ack deadline with one timer. There is no sender
task: ``pump`` runs synchronously from each enqueue, each PUBACK and each session start, so a message
costs no task switch; only a rate-limit wait schedules a timer.

The session loop hands it each new session (:meth:`Publisher.attach`) and takes it away when the
session ends (:meth:`Publisher.detach`); it knows a session only through the
:class:`~iotfleet.transport.base.Session` protocol, so it is tested against a fake one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload

import orjson

from iotfleet._rate import TokenBucket
from iotfleet.config import Endpoint, PublishLimits
from iotfleet.device.events import Listeners, PublishAcked, PublishFailed
from iotfleet.device.outbox import Outbox, OutboxEntry
from iotfleet.errors import ClientError, ConfigError, ConnectionLost, PublishRejected, RequestTimeout
from iotfleet.topics import MESSAGE_ID_PROPERTY, SENT_AT_PROPERTY, SEQUENCE_PROPERTY
from iotfleet.transport.base import Session, reason_name

__all__ = ["ENVELOPE_KEY", "Payload", "PublishReceipt", "Publisher", "encode_payload"]

ENVELOPE_KEY = "_iotfleet"

Payload = bytes | str | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PublishReceipt:
    """A QoS 1 publish that the broker acknowledged."""

    message_id: str
    seq: int
    topic: str
    reason_code: int
    latency_s: float
    endpoint: Endpoint


class PublishCounts(Protocol):
    """Where :class:`Publisher` counts what it queued, sent, resent, and what was acknowledged or refused."""

    enqueued: int
    sent: int
    resent: int
    acked: int
    rejected: collections.Counter[str]


def encode_payload(payload: Payload) -> bytes:
    """The bytes of a payload: bytes as they are, str in UTF-8, a mapping as compact JSON (UTF-8, keys in
    order; non-string keys as strings, as ``json.dumps`` writes them). A mapping JSON cannot carry (NaN or
    an infinity, an integer beyond 64 bits, an object of another type) raises :class:`ConfigError`.

    orjson, not ``json.dumps``: on the simulator's telemetry it takes 0.5 us against 6, and in a profile
    of the publish path ``json.dumps`` was a third of iotfleet's own Python per message (bench/BENCHMARKS.md).
    """
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    try:
        data = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:  # orjson.JSONEncodeError: a type JSON has no form for, an integer beyond 64 bits
        raise ConfigError(f"payload is not JSON-serialisable ({exc}): pass bytes, str or a JSON-able mapping") from exc
    if b"null" in data and _non_finite(payload):  # orjson writes NaN and infinities as null
        raise ConfigError(
            "payload holds NaN or an infinity, which JSON does not have: send null, a string, or leave the field out"
        )
    return data


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


class RateLimiter:
    """A connection's publish limits: one token bucket for publishes/s and one for bytes/s (a publish
    larger than a second's bytes waits for a full bucket, then goes into debt); ``wait`` says how long
    until ``nbytes`` may go, and takes the tokens when that is now."""

    def __init__(self, limits: PublishLimits) -> None:
        self._enabled = limits.enabled
        now = time.monotonic()
        self._msgs = TokenBucket(limits.max_publishes_per_s, now=now)
        self._bytes = TokenBucket(limits.max_bytes_per_s, now=now)

    def wait(self, nbytes: int) -> float:
        if not self._enabled:
            return 0.0
        now = time.monotonic()
        need = max(self._msgs.wait(now), self._bytes.wait(now, min(nbytes, self._bytes.capacity)))
        if need == 0.0:
            self._msgs.take()
            self._bytes.take(nbytes)
        return need


class _Delivery:
    __slots__ = ("enqueued", "future", "sends")

    def __init__(self, future: asyncio.Future[PublishReceipt] | None, enqueued: float, sends: int = 0) -> None:
        self.future = future
        self.enqueued = enqueued
        self.sends = sends


class _Attempt:
    """One transmission of an outbox entry on one session, and the callback its answer settles: one
    object per publish in flight (the garbage collector walks each while it is in flight)."""

    __slots__ = ("entry", "publisher", "sent", "session")

    def __init__(self, publisher: Publisher, session: Session, entry: OutboxEntry, sent: float) -> None:
        self.publisher = publisher
        self.session = session
        self.entry = entry
        self.sent = sent

    def __call__(self, code: int, error: ClientError | None, at: float) -> None:
        self.publisher.settle(self, code, error, at)


class Publisher:
    """The outbox, the in-flight window, the rate limits, the ack deadline and PUBACK settlement.

    ``thing`` names the device in events and errors; ``ack_timeout_s`` is how long the oldest in-flight
    publish may go unanswered before the session counts as silent (the session loop's ``wake``, given
    to :meth:`attach`, is then called). Events go to ``listeners``; counts to ``counts``.
    """

    def __init__(
        self,
        thing: str,
        outbox: Outbox,
        limits: PublishLimits,
        *,
        ack_timeout_s: float,
        counts: PublishCounts,
        listeners: Listeners,
    ) -> None:
        self.thing = thing
        self.outbox = outbox
        self.limits = limits
        self.ack_timeout_s = ack_timeout_s
        self.counts = counts
        self.listeners = listeners
        self._deliveries: dict[int, _Delivery] = {}
        self._unsent: collections.deque[int] = collections.deque()
        self._inflight: dict[int, float] = {}  # seq -> when it was sent on the live session
        self._ack_timer: asyncio.TimerHandle | None = None  # fires at the oldest in-flight ack deadline
        self._wake: Callable[[], None] | None = None  # tells the session loop an ack is overdue
        self._limiter = RateLimiter(limits)
        self._rate_limited = limits.enabled
        self._max_inflight = limits.max_inflight
        self._pump_timer: asyncio.TimerHandle | None = None
        self._pumping = False
        self._session: Session | None = None
        self.left_outbox = asyncio.Event()  # set whenever a message leaves the outbox

    # ------------------------------------------------------------------ sessions

    def restore(self) -> None:
        """Take what a durable outbox kept from an earlier run: resent in order, first thing."""
        for entry in self.outbox.pending():
            self._unsent.append(entry.seq)
            self._deliveries[entry.seq] = _Delivery(None, time.monotonic(), sends=1)

    def attach(self, session: Session, wake: Callable[[], None]) -> None:
        """A new session: everything in the outbox is unsent again (in order); nothing moves until
        :meth:`pump`. ``wake`` is called when an in-flight publish's ack deadline passes."""
        self._session = session
        self._wake = wake
        self._inflight.clear()
        self._unsent = collections.deque(entry.seq for entry in self.outbox.pending())

    def detach(self) -> None:
        """The session ended: stop sending and stop watching its acks (the outbox keeps everything)."""
        self._session = None
        self._wake = None
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def stop(self) -> None:
        """No more sending, for good: the client is closing."""
        self.detach()
        if self._pump_timer is not None:
            self._pump_timer.cancel()
            self._pump_timer = None

    def close(self) -> None:
        """Settle every waiting caller: their messages were not acknowledged. A durable outbox keeps them
        on disk for the next run; a memory outbox loses them, each reported as ``PublishFailed`` (closed)."""
        durable = self.outbox.policy.path is not None
        for seq, delivery in list(self._deliveries.items()):
            if delivery.future is not None and not delivery.future.done():
                delivery.future.set_exception(
                    ConnectionLost(
                        f"{self.thing} closed with message {seq} unacknowledged"
                        + (" (kept in the durable outbox)" if durable else "")
                    )
                )
                delivery.future.exception()  # mark retrieved: the caller may never await it
            if not durable:
                entry = self.outbox.get(seq)
                if entry is not None:
                    self.listeners.emit(PublishFailed(self.thing, entry.message_id, seq, entry.topic, "closed"))
        self._deliveries.clear()
        self.outbox.close()

    # ------------------------------------------------------------------ admission

    @overload
    def enqueue(self, topic: str, payload: Payload, qos: int) -> asyncio.Future[PublishReceipt]: ...

    @overload
    def enqueue(self, topic: str, payload: Payload, qos: int, *, receipt: Literal[False]) -> None: ...

    def enqueue(
        self, topic: str, payload: Payload, qos: int, *, receipt: bool = True
    ) -> asyncio.Future[PublishReceipt] | None:
        """Queue one publish to a validated ``topic``; the future resolves on its PUBACK. QoS 1 is durable
        once this returns; QoS 0 goes out now on the live session, or fails if there is none. With
        ``receipt=False`` (QoS 1 only) there is no future: the events tell the outcome, a message the
        full outbox dropped included."""
        if qos not in (0, 1):
            raise ConfigError(f"QoS {qos} is not supported by IoT Core: use 0 or 1")
        data = encode_payload(payload)
        if len(data) > self.limits.max_payload_bytes:
            raise ConfigError(
                f"payload of {len(data)} bytes exceeds IoT Core's {self.limits.max_payload_bytes}-byte limit: "
                "split it, compress it, or send a reference to object storage"
            )
        if qos == 0:
            if not receipt:
                raise ConfigError("a publish with no receipt is QoS 1 (queued, durable): QoS 0 has nothing to tell")
            now: asyncio.Future[PublishReceipt] = asyncio.get_running_loop().create_future()
            self._send_qos0(topic, data, now)
            return now
        future = asyncio.get_running_loop().create_future() if receipt else None
        wrap = None
        if self.outbox.policy.envelope and isinstance(payload, Mapping):
            body = dict(payload)

            def wrap(message_id: str, seq: int) -> bytes:
                return encode_payload({**body, ENVELOPE_KEY: {"id": message_id, "seq": seq}})

        admission = self.outbox.add(topic, data, 1, wrap=wrap)
        for old in admission.evicted:
            self._fail(old, "dropped-oldest")
        if admission.evicted:
            self.left_outbox.set()
        if admission.entry is None:
            self.listeners.emit(PublishFailed(self.thing, "", 0, topic, "dropped-newest"))
            if future is not None:
                future.set_exception(ClientError(f"the outbox of {self.thing} is full; the new message was dropped"))
            return future
        entry = admission.entry
        self.counts.enqueued += 1
        self._deliveries[entry.seq] = _Delivery(future, time.monotonic())
        self._unsent.append(entry.seq)
        self.pump()
        return future

    def _send_qos0(self, topic: str, data: bytes, future: asyncio.Future[PublishReceipt]) -> None:
        """Send now on the live session, through the same callback path as QoS 1; never queued."""
        session = self._session
        if session is None:
            future.set_exception(ConnectionLost(f"{self.thing} is offline; QoS 0 messages are not queued"))
            return
        started = time.monotonic()

        def done(code: int, error: ClientError | None, at: float) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(PublishReceipt("", 0, topic, code, at - started, session.endpoint))

        try:
            session.send(topic, data, 0, (), done)
        except ConnectionLost as exc:
            future.set_exception(exc)

    def _fail(self, entry: OutboxEntry, reason: str, code: int | None = None) -> None:
        delivery = self._deliveries.pop(entry.seq, None)
        self.listeners.emit(PublishFailed(self.thing, entry.message_id, entry.seq, entry.topic, reason, code))
        if delivery is not None and delivery.future is not None and not delivery.future.done():
            if code is not None:
                exc: ClientError = PublishRejected(
                    f"the broker refused {entry.topic}: PUBACK {reason_name(code)}; check the thing's policy",
                    reason_code=code,
                    topic=entry.topic,
                    message_id=entry.message_id,
                )
            else:
                exc = ClientError(f"message {entry.seq} to {entry.topic} was {reason} by the outbox's overflow policy")
            delivery.future.set_exception(exc)
            delivery.future.exception()  # counted and emitted above; not an unretrieved-exception warning

    async def flush(self, timeout: float | None = None, *, raise_on_timeout: bool = True) -> None:
        """Wait until every message in the outbox now (queued here or restored from disk) has left it."""
        last = self.outbox.newest_seq  # entries leave in any order; none at or below `last` may remain
        deadline = None if timeout is None else time.monotonic() + timeout
        while (oldest := self.outbox.oldest_seq()) is not None and oldest <= last:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if raise_on_timeout:
                    left = sum(1 for entry in self.outbox.pending() if entry.seq <= last)
                    raise RequestTimeout(
                        f"{left} publishes of {self.thing} were still unacknowledged after {timeout}s",
                        operation="flush",
                        timeout=timeout or 0.0,
                    )
                return
            self.left_outbox.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.left_outbox.wait(), remaining)

    # ------------------------------------------------------------------ the hot path

    def pump(self) -> None:
        """Put queued entries on the live session, in order, while the in-flight window and the rate allow."""
        session = self._session
        if session is None or self._pump_timer is not None or self._pumping:
            return
        self._pumping = True
        try:
            while self._unsent and len(self._inflight) < self._max_inflight:
                entry = self.outbox.get(self._unsent[0])
                if entry is None:
                    self._unsent.popleft()
                    continue
                if self._rate_limited:
                    delay = self._limiter.wait(len(entry.payload))
                    if delay > 0:
                        self._pump_timer = asyncio.get_running_loop().call_later(delay, self._pump_later)
                        return
                self._unsent.popleft()
                self._transmit(session, entry)
        finally:
            self._pumping = False

    def _pump_later(self) -> None:
        self._pump_timer = None
        self.pump()

    def _transmit(self, session: Session, entry: OutboxEntry) -> None:
        """Put one entry on the wire; :meth:`settle` takes it from there (no task per message)."""
        sent = time.monotonic()
        self._inflight[entry.seq] = sent
        if self._ack_timer is None:
            self._arm_ack_timer(sent)
        delivery = self._deliveries.get(entry.seq)
        self.counts.sent += 1
        if delivery is not None:
            if delivery.sends:
                self.counts.resent += 1
            delivery.sends += 1
        if not entry.properties:
            entry.properties = (
                (MESSAGE_ID_PROPERTY, entry.message_id),
                (SEQUENCE_PROPERTY, str(entry.seq)),
                (SENT_AT_PROPERTY, str(int(entry.created * 1000))),
            )
        try:
            session.send(entry.topic, entry.payload, entry.qos, entry.properties, _Attempt(self, session, entry, sent))
        except ConnectionLost:
            del self._inflight[entry.seq]  # stays in the outbox: the next session replays it

    def settle(self, attempt: _Attempt, code: int, error: ClientError | None, at: float) -> None:
        """The answer to one transmission (its PUBACK, or the session's end): called by the attempt."""
        session, entry, sent = attempt.session, attempt.entry, attempt.sent
        if self._inflight.get(entry.seq) == sent:  # a late answer from an older session frees no slot
            del self._inflight[entry.seq]
            self.pump()
        if error is not None or self.outbox.get(entry.seq) is None:
            return  # session lost: still in the outbox, replayed next session; or already settled elsewhere
        self.outbox.remove(entry.seq)
        self.left_outbox.set()
        if code >= 0x80:
            self.counts.rejected[reason_name(code)] += 1
            self._fail(entry, reason_name(code), code)
            return
        self.counts.acked += 1
        delivery = self._deliveries.pop(entry.seq, None)
        if self.listeners:
            age = at - delivery.enqueued if delivery else at - sent
            event = PublishAcked(
                self.thing, entry.message_id, entry.seq, entry.topic, code, at - sent, age, session.endpoint
            )
            self.listeners.emit(event)
        if delivery is not None and delivery.future is not None and not delivery.future.done():
            delivery.future.set_result(
                PublishReceipt(entry.message_id, entry.seq, entry.topic, code, at - sent, session.endpoint)
            )

    # ------------------------------------------------------------------ the ack deadline

    def ack_overdue(self) -> bool:
        """Whether the oldest in-flight publish has waited longer than ``ack_timeout_s`` for its PUBACK."""
        if not self._inflight:
            return False
        return time.monotonic() - min(self._inflight.values()) > self.ack_timeout_s

    def _arm_ack_timer(self, oldest: float) -> None:
        """One timer per device at the oldest in-flight publish's ack deadline (no task, no wakeup
        of the session loop unless the deadline passes unanswered)."""
        delay = oldest + self.ack_timeout_s - time.monotonic() + 0.01
        self._ack_timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._check_acks)

    def _check_acks(self) -> None:
        self._ack_timer = None
        if not self._inflight:
            return
        if self.ack_overdue():  # wake the session loop; look again soon in case it is busy (probing)
            if self._wake is not None:
                self._wake()
            self._ack_timer = asyncio.get_running_loop().call_later(0.05, self._check_acks)
            return
        self._arm_ack_timer(min(self._inflight.values()))
