"""DeviceClient: an MQTT5 device with a durable outbox and failover across regional endpoints.

::

    async with DeviceClient(identity=lamp, endpoints=cloud.endpoints, tenant="acme", site="hq") as device:
        await device.publish("power", {"watts": 12.5})          # dt/acme/hq/lamp-1/power, PUBACK awaited
        async for command in device.commands():                  # cmd/acme/hq/lamp-1/+
            ...

One connection manager task owns the session: it connects to the current endpoint, restores every
subscription, runs the session hooks, replays the outbox in order, and on a lost session backs off,
fails over or fails back (:mod:`iotfleet.device.failover`). There is no sender task: the outbox is moved
onto the session synchronously (``_pump``) from each enqueue, each PUBACK and each session start, at most
``max_inflight`` unacknowledged at once and within the rate limits (a timer only when the limits make a
message wait). A publish leaves the outbox only on a PUBACK: success, or a failure code such as 0x87,
which is final.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

from iotfleet._rate import TokenBucket
from iotfleet.config import Endpoint, Identity, OutboxPolicy, PublishLimits, ReconnectPolicy
from iotfleet.device.events import (
    Connected,
    ConnectFailed,
    DeviceEvent,
    Disconnected,
    FailedOver,
    Listener,
    PublishAcked,
    PublishFailed,
)
from iotfleet.device.failover import EndpointSelector
from iotfleet.device.inbound import Inbound
from iotfleet.device.outbox import Outbox, OutboxEntry, open_outbox
from iotfleet.device.stream import Stream
from iotfleet.errors import (
    CertificateError,
    ClientError,
    ClientStateError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    PublishRejected,
    RequestTimeout,
)
from iotfleet.topics import (
    MESSAGE_ID_PROPERTY,
    SENT_AT_PROPERTY,
    SEQUENCE_PROPERTY,
    ThingScope,
    TopicScheme,
    validate_filter,
    validate_topic,
)
from iotfleet.transport import resolve_transport
from iotfleet.transport.base import (
    ConnectOptions,
    DisconnectReason,
    InboundMessage,
    Session,
    Transport,
    reason_name,
)

__all__ = [
    "MESSAGE_ID_PROPERTY",
    "SEQUENCE_PROPERTY",
    "Command",
    "DeviceClient",
    "DeviceCounters",
    "DeviceState",
    "PublishReceipt",
]

log = logging.getLogger(__name__)

ENVELOPE_KEY = "_iotfleet"
SILENT_REASONS = frozenset(  # the endpoint stopped answering
    {DisconnectReason.ACK_TIMEOUT, DisconnectReason.PING_TIMEOUT, DisconnectReason.KEEP_ALIVE_TIMEOUT}
)

Payload = bytes | str | Mapping[str, Any]
SessionHook = Callable[["DeviceClient", Endpoint], Awaitable[None]]


class DeviceState(StrEnum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PublishReceipt:
    """A QoS 1 publish that the broker acknowledged."""

    message_id: str
    seq: int
    topic: str
    reason_code: int
    latency_s: float
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class Command:
    """A message on one of this thing's command topics."""

    name: str
    payload: bytes
    topic: str

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(slots=True)
class DeviceCounters:
    """What happened to this client's messages, for its own diagnostics."""

    enqueued: int = 0
    acked: int = 0
    sent: int = 0
    resent: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    connects: int = 0
    connect_failures: int = 0
    short_sessions: int = 0  # ended before ``stable_after_s``: counted as failed attempts
    failovers: int = 0
    inbound: int = 0
    inbound_dropped: int = 0


def encode_payload(payload: Payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    try:
        return json.dumps(payload, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"payload is not JSON-serialisable ({exc}): pass bytes, str or a JSON-able mapping") from exc


class _RateLimiter:
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


class DeviceClient:
    """An MQTT5 device: ``async with`` it once; it is reusable only as a new instance.

    ``identity`` names the thing (client id = thing name). ``endpoints`` are tried in order, the first
    preferred. ``tenant`` and ``site`` scope the data and command topics of ``scheme``. ``transport`` is
    ``"crt"`` (awscrt, default), ``"paho"``, or a :class:`~iotfleet.transport.base.Transport`.
    ``connect_wait_s`` bounds how long entering waits for the first connection (0: start offline).
    """

    def __init__(
        self,
        *,
        identity: Identity,
        endpoints: Sequence[Endpoint],
        tenant: str | None = None,
        site: str | None = None,
        scheme: TopicScheme | None = None,
        transport: Transport | str = "crt",
        reconnect: ReconnectPolicy | None = None,
        outbox: OutboxPolicy | Outbox | None = None,
        limits: PublishLimits | None = None,
        listeners: Sequence[Listener] = (),
        connect_wait_s: float = 30.0,
        drain_on_close_s: float = 5.0,
    ) -> None:
        self.identity = identity
        self.thing = identity.thing_name
        self.scope = ThingScope(tenant, site, self.thing) if tenant is not None and site is not None else None
        self.scheme = scheme or TopicScheme()
        self.transport = resolve_transport(transport)
        self.policy = reconnect or ReconnectPolicy()
        self.limits = limits or PublishLimits()
        self.selector = EndpointSelector(endpoints, self.policy)
        self.outbox = outbox if isinstance(outbox, Outbox) else open_outbox(outbox or OutboxPolicy())
        self.counters = DeviceCounters()
        self.state = DeviceState.NEW
        self.connect_wait_s = connect_wait_s
        self.drain_on_close_s = drain_on_close_s
        self._listeners: list[Listener] = list(listeners)
        self._session_hooks: list[SessionHook] = []
        self._in = Inbound(self.thing, self.counters)  # subscriptions, streams, handlers, dispatch
        self._stream_topics: dict[str, str] = {}  # data stream name -> its topic
        self._deliveries: dict[int, _Delivery] = {}
        self._unsent: collections.deque[int] = collections.deque()
        self._inflight: dict[int, float] = {}
        self._ack_timer: asyncio.TimerHandle | None = None  # fires at the oldest in-flight ack deadline
        self._look: asyncio.Future[None] | None = None  # wakes the session loop (an ack is overdue)
        self._limiter = _RateLimiter(self.limits)
        self._rate_limited = self.limits.enabled
        self._max_inflight = self.limits.max_inflight
        self._pump_timer: asyncio.TimerHandle | None = None
        self._pumping = False
        self._session: Session | None = None
        self._session_count = 0
        self._tasks: list[asyncio.Task[None]] = []
        # asyncio.Event binds to a loop on first use, not here (Python >= 3.10)
        self._connected, self._stop = asyncio.Event(), asyncio.Event()
        self._left_outbox = asyncio.Event()  # set whenever a message leaves the outbox
        self._last_error: ClientError | None = None
        self._last_reason = ""

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> DeviceClient:
        if self.state is not DeviceState.NEW:
            raise ClientStateError(
                f"this DeviceClient for {self.thing} is {self.state}; a client is entered once: create a new one"
            )
        self.identity.check()  # a broken or mismatched file is named now, not after connect_wait_s
        for entry in self.outbox.pending():  # restored from disk: resend in order
            self._unsent.append(entry.seq)
            self._deliveries[entry.seq] = _Delivery(None, time.monotonic(), sends=1)
        self.state = DeviceState.CONNECTING
        self._tasks = [
            asyncio.create_task(self._manage(), name=f"iotfleet-{self.thing}-connection"),
        ]
        if self.connect_wait_s > 0:
            try:
                await asyncio.wait_for(self._connected.wait(), self.connect_wait_s)
            except TimeoutError:
                await self.close(drain_s=0)
                reason = self._last_error.message if self._last_error else "no attempt finished"
                raise ConnectError(
                    f"{self.thing} could not connect to any of {', '.join(map(str, self.selector.endpoints))} "
                    f"within {self.connect_wait_s}s; last error: {reason}",
                    endpoint=str(self.selector.current),
                    reason=getattr(self._last_error, "reason", "timeout"),
                ) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, drain_s: float | None = None) -> None:
        """Wait up to ``drain_s`` (default ``drain_on_close_s``) for the outbox to empty, then disconnect.

        What is still in a durable outbox stays on disk for the next run; what is still in a memory
        outbox is reported as failed (``PublishFailed`` with reason ``closed``).
        """
        if self.state is DeviceState.CLOSED:
            return
        drain = self.drain_on_close_s if drain_s is None else drain_s
        if drain > 0 and len(self.outbox) and self._tasks:
            await self.flush(timeout=drain, raise_on_timeout=False)
        self.state = DeviceState.CLOSED
        self._stop.set()
        if self._pump_timer is not None:
            self._pump_timer.cancel()
            self._pump_timer = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
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
                    self._emit(PublishFailed(self.thing, entry.message_id, seq, entry.topic, "closed"))
        self._deliveries.clear()
        self.outbox.close()
        self._in.end_streams()  # readers get what was received, then the end

    async def flush(self, timeout: float | None = None, *, raise_on_timeout: bool = True) -> None:
        """Wait until every message in the outbox now (queued here or restored from disk) has left it."""
        self._require_running()
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
            self._left_outbox.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._left_outbox.wait(), remaining)

    async def wait_connected(self, timeout: float | None = None) -> Endpoint:
        """Wait for a live session; return its endpoint."""
        self._require_running()
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"{self.thing} had no connection within {timeout}s", operation="connect", timeout=timeout or 0.0
            ) from None
        return self.selector.current

    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint of the live session, or None while offline."""
        return self._session.endpoint if self._session is not None else None

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every :mod:`~iotfleet.device.events` event, on the event loop."""
        self._listeners.append(listener)

    def add_session_hook(self, hook: SessionHook) -> None:
        """Run ``await hook(device, endpoint)`` on every new session, after subscriptions are restored.

        Shadow sync uses this to re-get and reconcile after a reconnect or a failover.
        """
        self._session_hooks.append(hook)

    def _require_running(self) -> None:
        if self.state is DeviceState.NEW:
            raise ClientStateError(f"enter the client first: 'async with DeviceClient(...) as device' ({self.thing})")
        if self.state is DeviceState.CLOSED:
            raise ClientStateError(f"the client of {self.thing} is closed; create a new DeviceClient")

    def _emit(self, event: DeviceEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # an observer's bug must not break the device
                log.exception("listener %r failed on %s", listener, event.kind)

    # ------------------------------------------------------------------ publishing

    def data_topic(self, stream: str) -> str:
        """This thing's (validated) topic for ``stream``."""
        topic = self._stream_topics.get(stream)
        if topic is None:
            if self.scope is None:
                raise ConfigError(
                    "publishing a stream needs the thing's scope: DeviceClient(..., tenant=..., site=...) "
                    f"for {self.thing}"
                )
            topic = self._stream_topics[stream] = self.scheme.data_topic(self.scope, stream)
        return topic

    async def publish(
        self, stream: str, payload: Payload, *, qos: int = 1, timeout: float | None = None
    ) -> PublishReceipt:
        """Publish to this thing's data topic for ``stream``; for QoS 1 wait for the PUBACK.

        Raises :class:`PublishRejected` on a failure reason code, :class:`RequestTimeout` after
        ``timeout`` (the message stays queued), :class:`OutboxFull` when the outbox rejects it.
        """
        topic = self.data_topic(stream)
        return await self._receipt(self._enqueue(topic, payload, qos), topic, timeout)

    async def publish_to(
        self, topic: str, payload: Payload, *, qos: int = 1, timeout: float | None = None
    ) -> PublishReceipt:
        """Publish to any topic this thing may use (validated with IoT Core's rules)."""
        return await self._receipt(self.enqueue_to(topic, payload, qos=qos), topic, timeout)

    async def _receipt(
        self, future: asyncio.Future[PublishReceipt], topic: str, timeout: float | None
    ) -> PublishReceipt:
        if timeout is None:
            return await future  # cancelling this wait cancels the receipt, never the queued message
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"no PUBACK for {topic} within {timeout}s; the message stays in the outbox",
                operation="publish",
                timeout=timeout or 0.0,
            ) from None

    def enqueue(self, stream: str, payload: Payload, *, qos: int = 1) -> asyncio.Future[PublishReceipt]:
        """Queue a publish without waiting; the returned future resolves on the PUBACK."""
        return self._enqueue(self.data_topic(stream), payload, qos)

    def enqueue_to(self, topic: str, payload: Payload, *, qos: int = 1) -> asyncio.Future[PublishReceipt]:
        """Queue a publish to ``topic``; durable once this returns (for QoS 1)."""
        return self._enqueue(validate_topic(topic), payload, qos)

    def _enqueue(self, topic: str, payload: Payload, qos: int) -> asyncio.Future[PublishReceipt]:
        self._require_running()
        if qos not in (0, 1):
            raise ConfigError(f"QoS {qos} is not supported by IoT Core: use 0 or 1")
        data = encode_payload(payload)
        if len(data) > self.limits.max_payload_bytes:
            raise ConfigError(
                f"payload of {len(data)} bytes exceeds IoT Core's {self.limits.max_payload_bytes}-byte limit: "
                "split it, compress it, or send a reference to object storage"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PublishReceipt] = loop.create_future()
        if qos == 0:
            self._send_qos0(topic, data, future)
            return future
        wrap = None
        if self.outbox.policy.envelope and isinstance(payload, Mapping):
            body = dict(payload)

            def wrap(message_id: str, seq: int) -> bytes:
                return encode_payload({**body, ENVELOPE_KEY: {"id": message_id, "seq": seq}})

        admission = self.outbox.add(topic, data, 1, wrap=wrap)
        for old in admission.evicted:
            self._fail(old, "dropped-oldest")
        if admission.evicted:
            self._left_outbox.set()
        if admission.entry is None:
            self._emit(PublishFailed(self.thing, "", 0, topic, "dropped-newest"))
            future.set_exception(ClientError(f"the outbox of {self.thing} is full; the new message was dropped"))
            return future
        entry = admission.entry
        self.counters.enqueued += 1
        self._deliveries[entry.seq] = _Delivery(future, time.monotonic())
        self._unsent.append(entry.seq)
        self._pump()
        return future

    def _send_qos0(self, topic: str, data: bytes, future: asyncio.Future[PublishReceipt]) -> None:
        """Send now on the live session, through the same callback path as QoS 1; never queued."""
        session = self._session
        if session is None:
            future.set_exception(ConnectionLost(f"{self.thing} is offline; QoS 0 messages are not queued"))
            return
        started = time.monotonic()

        def done(code: int, error: ClientError | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(PublishReceipt("", 0, topic, code, time.monotonic() - started, session.endpoint))

        try:
            session.send(topic, data, 0, (), done)
        except ConnectionLost as exc:
            future.set_exception(exc)

    def _fail(self, entry: OutboxEntry, reason: str, code: int | None = None) -> None:
        delivery = self._deliveries.pop(entry.seq, None)
        self._emit(PublishFailed(self.thing, entry.message_id, entry.seq, entry.topic, reason, code))
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

    def _pump(self) -> None:
        """Put queued entries on the live session, in order, while the in-flight window and the rate allow.

        Runs synchronously from enqueue, from each PUBACK and at each session start, so a message costs no
        task switch; only a rate-limit wait schedules a timer.
        """
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
        self._pump()

    def _transmit(self, session: Session, entry: OutboxEntry) -> None:
        """Put one entry on the wire; :meth:`_on_puback` takes it from there (no task per message)."""
        sent = time.monotonic()
        self._inflight[entry.seq] = sent
        if self._ack_timer is None:
            self._arm_ack_timer(sent)
        delivery = self._deliveries.get(entry.seq)
        self.counters.sent += 1
        if delivery is not None:
            if delivery.sends:
                self.counters.resent += 1
            delivery.sends += 1
        if not entry.properties:
            entry.properties = (
                (MESSAGE_ID_PROPERTY, entry.message_id),
                (SEQUENCE_PROPERTY, str(entry.seq)),
                (SENT_AT_PROPERTY, str(int(entry.created * 1000))),
            )
        try:
            done = partial(self._on_puback, session, entry, sent)
            session.send(entry.topic, entry.payload, entry.qos, entry.properties, done)
        except ConnectionLost:
            del self._inflight[entry.seq]  # stays in the outbox: the next session replays it

    def _on_puback(
        self, session: Session, entry: OutboxEntry, sent: float, code: int, error: ClientError | None
    ) -> None:
        if self._inflight.get(entry.seq) == sent:  # a late answer from an older session frees no slot
            del self._inflight[entry.seq]
            self._pump()
        if error is not None or self.outbox.get(entry.seq) is None:
            return  # session lost: still in the outbox, replayed next session; or already settled elsewhere
        self.outbox.remove(entry.seq)
        self._left_outbox.set()
        if code >= 0x80:
            self.counters.rejected[reason_name(code)] += 1
            self._fail(entry, reason_name(code), code)
            return
        self.counters.acked += 1
        now = time.monotonic()
        delivery = self._deliveries.pop(entry.seq, None)
        if self._listeners:
            age = now - delivery.enqueued if delivery else now - sent
            event = PublishAcked(
                self.thing, entry.message_id, entry.seq, entry.topic, code, now - sent, age, session.endpoint
            )
            self._emit(event)
        if delivery is not None and delivery.future is not None and not delivery.future.done():
            delivery.future.set_result(
                PublishReceipt(entry.message_id, entry.seq, entry.topic, code, now - sent, session.endpoint)
            )

    # ------------------------------------------------------------------ subscriptions and inbound

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and on every future session."""
        self._require_running()
        await self._in.subscribe(self._session, topic_filter, qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        self._require_running()
        await self._in.unsubscribe(self._session, topic_filter)

    def open_stream(self, name: str, subscribe: Callable[[], Awaitable[None]] | None = None) -> Stream[Any]:
        """A :class:`~iotfleet.device.stream.Stream` that ends when this client closes.

        For components built on the client (the shadow client's deltas); ``subscribe`` is awaited by
        ``await stream`` and before the first item.
        """
        self._require_running()
        return self._in.open_stream(name, subscribe)

    def messages(self, topic_filter: str | None = None) -> Stream[InboundMessage]:
        """Every inbound message (matching ``topic_filter``, if given) from now until the client closes.

        It does not subscribe (see :meth:`subscribe`); it collects from the moment it is called.
        """
        if topic_filter is not None:
            validate_filter(topic_filter)
        self._require_running()
        return self._in.route(f"messages {topic_filter or '#'}", topic_filter, None, lambda message: message)

    def commands(self) -> Stream[Command]:
        """Commands sent to this thing (``cmd/{tenant}/{site}/{thing}/{command}`` by default).

        ``await device.commands()`` returns once the command topics are subscribed; ``async for`` over
        it does the same before its first command. It ends when the client closes.
        """
        if self.scope is None:
            raise ConfigError(f"receiving commands needs the thing's scope: pass tenant= and site= ({self.thing})")
        command_filter = self.scheme.command_filter(self.scope)

        def command(message: InboundMessage) -> Command | None:
            parsed = self.scheme.parse_command_topic(message.topic)
            return Command(parsed[1], message.payload, message.topic) if parsed is not None else None

        self._require_running()
        return self._in.route("commands", command_filter, partial(self.subscribe, command_filter), command)

    def add_message_handler(self, topic_filter: str, handler: Callable[[InboundMessage], None]) -> None:
        """Call ``handler(message)`` on the event loop for every inbound message matching ``topic_filter``.

        For components built on the client (the shadow client); it does not subscribe by itself.
        """
        self._in.add_handler(topic_filter, handler)

    # ------------------------------------------------------------------ connection management

    def _options(self) -> ConnectOptions:
        return ConnectOptions(
            client_id=self.thing,
            identity=self.identity,
            keepalive_s=self.policy.keepalive_s,
            ping_timeout_s=self.policy.ping_timeout_s,
            connect_timeout_s=self.policy.connect_timeout_s,
            receive_maximum=self.limits.max_inflight,
            on_message=self._in.dispatch,
        )

    async def _attempt(self, endpoint: Endpoint) -> Session | None:
        started = time.monotonic()
        try:
            session = await self.transport.connect(endpoint, self._options())
        except ConnectError as exc:
            self.counters.connect_failures += 1
            self._last_error = exc
            self._emit(ConnectFailed(self.thing, endpoint, exc.reason))
            return None
        except CertificateError as exc:  # a file changed under a running client: keep trying, loudly
            log.error("%s: %s", self.thing, exc.message)
            self.counters.connect_failures += 1
            self._last_error = ConnectError(exc.message, endpoint=str(endpoint), reason="identity")
            self._emit(ConnectFailed(self.thing, endpoint, "identity"))
            return None
        self.counters.connects += 1
        self._session_count += 1
        self._emit(Connected(self.thing, endpoint, time.monotonic() - started, self._session_count))
        return session

    async def _manage(self) -> None:
        """Connect, serve, and reconnect / fail over / fail back until the client closes."""
        delay = 0.0
        while not self._stop.is_set():
            if delay > 0 and await _wait_or(self._stop, delay):
                return
            endpoint = self.selector.current
            session = await self._attempt(endpoint)
            if session is None:
                step = self.selector.failed()
                if step.failover_from is not None:
                    self.counters.failovers += 1
                    self._emit(FailedOver(self.thing, step.failover_from, step.endpoint, failback=False))
                delay = step.delay_s
                continue
            self.selector.connected()
            while session is not None:
                session = await self._serve(session)
            if not self.selector.stable() and not self._stop.is_set():
                self.counters.short_sessions += 1
                log.info(
                    "%s: the session to %s ended within %.0fs (%s): a failed attempt",
                    self.thing,
                    self.selector.current,
                    self.policy.stable_after_s,
                    self._last_reason,
                )
            step = self.selector.disconnected(silent=self._last_reason in SILENT_REASONS)
            if step.failover_from is not None:
                self.counters.failovers += 1
                self._emit(FailedOver(self.thing, step.failover_from, step.endpoint, failback=False))
            delay = step.delay_s

    async def _serve(self, session: Session) -> Session | None:
        """Run one session until it ends; return a replacement session if a failback probe connected."""
        self._session = session
        self.state = DeviceState.CONNECTED
        self._inflight.clear()
        self._unsent = collections.deque(e.seq for e in self.outbox.pending())
        with contextlib.suppress(ConnectionLost):  # the session died at once; closed is already set
            await self._in.restore(session)
        for hook in self._session_hooks:
            asyncio.get_running_loop().create_task(self._run_hook(hook, session.endpoint))
        self._connected.set()
        self._pump()
        replacement: Session | None = None
        ended = asyncio.ensure_future(_settled(session.closed))
        stop = asyncio.ensure_future(self._stop.wait())
        loop = asyncio.get_running_loop()
        try:
            while not ended.done() and not stop.done():
                look: asyncio.Future[Any] = loop.create_future()
                self._look = look
                waits: set[asyncio.Future[Any]] = {ended, stop, look}
                await asyncio.wait(waits, timeout=self._probe_tick_s(), return_when=asyncio.FIRST_COMPLETED)
                if ended.done() or stop.done():
                    break
                if self._ack_overdue():
                    await session.close()
                    self._last_reason = DisconnectReason.ACK_TIMEOUT
                    self._emit(Disconnected(self.thing, session.endpoint, self._last_reason))
                    self._went_offline()
                    return None
                if self.selector.failback_due():
                    replacement = await self._probe_preferred()
                    if replacement is not None:
                        old = session
                        self._went_offline()
                        self._emit(FailedOver(self.thing, old.endpoint, replacement.endpoint, failback=True))
                        self.counters.failovers += 1
                        await old.close()
                        return replacement
        finally:
            stop.cancel()
            if not ended.done():
                ended.cancel()
            self._stop_watching_acks()
        if session.closed.done():
            self._last_reason = session.closed.result().reason
            self._emit(Disconnected(self.thing, session.endpoint, self._last_reason))
        self._went_offline()
        return None

    def _went_offline(self) -> None:
        self._session = None
        self._connected.clear()
        if self.state is not DeviceState.CLOSED:
            self.state = DeviceState.RECONNECTING

    def _probe_tick_s(self) -> float | None:
        """How long the session loop may sleep: for ever on the preferred endpoint (the ack timer wakes
        it), else until the next failback probe may be due. Idle devices never wake: a large fleet of
        them costs no CPU."""
        if self.selector.failback_due() or self.selector.current != self.selector.preferred:
            return max(0.05, self.policy.failback_probe_s / 4)
        return None

    def _arm_ack_timer(self, oldest: float) -> None:
        """One timer per device at the oldest in-flight publish's ack deadline (no task, no wakeup
        of the session loop unless the deadline passes unanswered)."""
        delay = oldest + self.policy.ping_timeout_s - time.monotonic() + 0.01
        self._ack_timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._check_acks)

    def _stop_watching_acks(self) -> None:
        self._look = None
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def _check_acks(self) -> None:
        self._ack_timer = None
        if not self._inflight:
            return
        if self._ack_overdue():  # wake the session loop; look again soon in case it is busy (probing)
            if self._look is not None and not self._look.done():
                self._look.set_result(None)
            self._ack_timer = asyncio.get_running_loop().call_later(0.05, self._check_acks)
            return
        self._arm_ack_timer(min(self._inflight.values()))

    def _ack_overdue(self) -> bool:
        if not self._inflight:
            return False
        oldest = min(self._inflight.values())
        return time.monotonic() - oldest > self.policy.ping_timeout_s

    async def _probe_preferred(self) -> Session | None:
        preferred = self.selector.preferred
        session = await self._attempt(preferred)
        if session is None:
            self.selector.probe_failed()
            return None
        self.selector.failed_back()
        return session

    async def _run_hook(self, hook: SessionHook, endpoint: Endpoint) -> None:
        try:
            await hook(self, endpoint)
        except Exception:  # a hook's failure is logged; the session goes on
            log.exception("%s: session hook %r failed", self.thing, hook)


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` without raising its exception."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.shield(future)


async def _wait_or(event: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds unless ``event`` is set first; return whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), delay)
    except TimeoutError:
        return False
    return True
