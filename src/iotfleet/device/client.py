"""DeviceClient: an MQTT5 device with a durable outbox and failover across regional endpoints.

::

    async with DeviceClient(identity=lamp, endpoints=cloud.endpoints, tenant="acme", site="hq") as device:
        await device.publish("power", {"watts": 12.5})          # dt/acme/hq/lamp-1/power, PUBACK awaited
        async for command in device.commands():                  # cmd/acme/hq/lamp-1/+
            ...

A thin composition of three parts, each with one job and each tested against a fake session:

- :class:`~iotfleet.device.publisher.Publisher`: the publish path, from the outbox to the PUBACK that
  settles a message (in-flight window, rate limits, ack deadline). There is no sender task: the outbox
  moves onto the session synchronously from each enqueue, each PUBACK and each session start;
- :class:`~iotfleet.device.inbound.Inbound`: the subscriptions kept across sessions, the streams and
  handlers, and the dispatch of inbound messages;
- :class:`~iotfleet.device.session_loop.SessionLoop`: one task that connects to the current endpoint,
  serves the session (subscriptions restored, session hooks run, outbox replayed in order) and on a lost
  session backs off, fails over or fails back (:mod:`iotfleet.device.failover`).

The client itself owns the life cycle (enter once, close once), the thing's topics and the public API.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

from iotfleet.config import Endpoint, Identity, OutboxPolicy, PublishLimits, ReconnectPolicy
from iotfleet.device.events import Listener, Listeners
from iotfleet.device.failover import EndpointSelector
from iotfleet.device.inbound import Inbound
from iotfleet.device.jobs import JobExecution, Jobs
from iotfleet.device.outbox import Outbox, open_outbox
from iotfleet.device.publisher import Payload, Publisher, PublishReceipt
from iotfleet.device.session_loop import SessionLoop
from iotfleet.device.stream import Stream
from iotfleet.errors import ClientStateError, ConfigError, ConnectError, IdentityRefused, RequestTimeout
from iotfleet.topics import (
    MESSAGE_ID_PROPERTY,
    SEQUENCE_PROPERTY,
    ThingScope,
    TopicScheme,
    basic_ingest_topic,
    validate_filter,
    validate_rule_name,
    validate_topic,
)
from iotfleet.transport import resolve_transport
from iotfleet.transport.base import ConnectOptions, InboundMessage, Transport, refuses_identity

__all__ = [
    "MESSAGE_ID_PROPERTY",
    "SEQUENCE_PROPERTY",
    "Command",
    "DeviceClient",
    "DeviceCounters",
    "DeviceState",
    "Payload",
    "PublishReceipt",
]

SessionHook = Callable[["DeviceClient", Endpoint], Awaitable[None]]


class DeviceState(StrEnum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


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


class DeviceClient:
    """An MQTT5 device: ``async with`` it once; it is reusable only as a new instance.

    ``identity`` names the thing (client id = thing name). ``endpoints`` are tried in order, the first
    preferred. ``tenant`` and ``site`` scope the data and command topics of ``scheme``. ``transport`` is
    ``"crt"`` (awscrt, default), ``"paho"``, or a :class:`~iotfleet.transport.base.Transport`.
    ``connect_wait_s`` bounds how long entering waits for the first connection (0: start offline).
    ``basic_ingest`` names a topic rule that gets the data streams by Basic Ingest (see :meth:`data_topic`).
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
        basic_ingest: str | None = None,
    ) -> None:
        self.identity = identity
        self.basic_ingest = None if basic_ingest is None else validate_rule_name(basic_ingest)
        self.thing = identity.thing_name
        self.scope = ThingScope(tenant, site, self.thing) if tenant is not None and site is not None else None
        self.scheme = scheme or TopicScheme()
        self.transport = resolve_transport(transport)
        self.policy = reconnect or ReconnectPolicy()
        self.limits = limits or PublishLimits()
        self.selector = EndpointSelector(endpoints, self.policy)
        self.outbox = outbox if isinstance(outbox, Outbox) else open_outbox(outbox or OutboxPolicy())
        self.counters = DeviceCounters()
        self.connect_wait_s = connect_wait_s
        self.drain_on_close_s = drain_on_close_s
        self._listeners = Listeners(listeners)
        self._stream_topics: dict[str, str] = {}  # data stream name -> its topic
        self._in = Inbound(self.thing, self.counters)
        self._jobs: Jobs | None = None
        self._out = Publisher(
            self.thing,
            self.outbox,
            self.limits,
            ack_timeout_s=self.policy.ping_timeout_s,
            counts=self.counters,
            listeners=self._listeners,
        )
        options = ConnectOptions(
            client_id=self.thing,
            identity=self.identity,
            keepalive_s=self.policy.keepalive_s,
            ping_timeout_s=self.policy.ping_timeout_s,
            connect_timeout_s=self.policy.connect_timeout_s,
            receive_maximum=self.limits.max_inflight,
            on_message=self._in.dispatch,
        )
        self._loop = SessionLoop(
            self.thing,
            self.transport,
            self.selector,
            options,
            publisher=self._out,
            inbound=self._in,
            counts=self.counters,
            listeners=self._listeners,
        )
        self._entered = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> DeviceState:
        if self._closed:
            return DeviceState.CLOSED
        if not self._entered:
            return DeviceState.NEW
        if self._loop.session is not None:
            return DeviceState.CONNECTED
        return DeviceState.RECONNECTING if self._loop.served else DeviceState.CONNECTING

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> DeviceClient:
        if self.state is not DeviceState.NEW:
            raise ClientStateError(
                f"this DeviceClient for {self.thing} is {self.state}; a client is entered once: create a new one"
            )
        self.identity.check()  # a broken or mismatched file is named now, not after connect_wait_s
        self._out.restore()  # restored from disk: resent in order
        self._entered = True
        self._task = asyncio.create_task(self._loop.run(), name=f"iotfleet-{self.thing}-connection")
        if self.connect_wait_s > 0:
            try:
                await _first(self._loop.connected, self._loop.refused, timeout=self.connect_wait_s)
            except TimeoutError:
                await self.close(drain_s=0)
                last = self._loop.last_error
                raise ConnectError(
                    f"{self.thing} could not connect to any of {', '.join(map(str, self.selector.endpoints))} "
                    f"within {self.connect_wait_s}s; last error: {last.message if last else 'no attempt finished'}",
                    endpoint=str(self.selector.current),
                    reason=last.reason if last else "timeout",
                ) from None
            if self._loop.refusal is not None and not self._loop.connected.is_set():
                refusal = self._loop.refusal
                await self.close(drain_s=0)
                raise refusal
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, drain_s: float | None = None) -> None:
        """Wait up to ``drain_s`` (default ``drain_on_close_s``) for the outbox to empty, then disconnect.

        What is still in a durable outbox stays on disk for the next run; what is still in a memory
        outbox is reported as failed (``PublishFailed`` with reason ``closed``).
        """
        if self._closed:
            return
        drain = self.drain_on_close_s if drain_s is None else drain_s
        if drain > 0 and len(self.outbox) and self._task is not None:
            await self.flush(timeout=drain, raise_on_timeout=False)
        self._closed = True
        self._loop.stop.set()
        self._out.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._loop.close()
        self._out.close()
        self._in.end_streams()  # readers get what was received, then the end

    async def flush(self, timeout: float | None = None, *, raise_on_timeout: bool = True) -> None:
        """Wait until every message in the outbox now (queued here or restored from disk) has left it."""
        self._require_running()
        await self._out.flush(timeout, raise_on_timeout=raise_on_timeout)

    async def wait_connected(self, timeout: float | None = None) -> Endpoint:
        """Wait for a live session; return its endpoint."""
        self._require_running()
        try:
            await _first(self._loop.connected, self._loop.refused, timeout=timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"{self.thing} had no connection within {timeout}s", operation="connect", timeout=timeout or 0.0
            ) from None
        if not self._loop.connected.is_set() and self._loop.refusal is not None:
            raise self._loop.refusal
        return self.selector.current

    def reboot(self, offline_s: float) -> None:
        """Restart the connection as a rebooting device would: the live session ends (a DISCONNECT), the
        device stays offline ``offline_s`` seconds, then connects to its preferred endpoint with a fresh
        backoff. The outbox and the subscriptions carry over (as a durable outbox keeps them across a real
        reboot): what is queued is sent on the new session. Observers see ``Disconnected(reason="reboot")``."""
        self._require_running()
        self._loop.reboot(offline_s)

    async def use_identity(self, identity: Identity) -> None:
        """Switch to another certificate of the same thing (a rotation) without losing anything queued.

        Connected, it opens a session with the new identity to the same endpoint, then closes the old one
        (make before break); the outbox, the subscriptions and the in-flight publishes carry over, and what
        was not acknowledged is resent. It returns once the new session is up; if the new certificate is
        refused, the old identity stays in use and the error (:class:`~iotfleet.errors.IdentityRefused` or
        :class:`~iotfleet.errors.ConnectError`) is raised. Offline, the next attempt uses it. Deactivate the
        old certificate after this returns (``IdentityStore.rotate`` keeps its id).
        """
        self._require_running()
        identity.check()
        if identity.thing_name != self.thing:
            raise ConfigError(f"a rotation keeps the thing: {identity.thing_name!r} is not {self.thing!r}")
        try:
            await self._loop.use_identity(identity)
        except ConnectError as exc:
            if refuses_identity(exc.reason):
                raise IdentityRefused(
                    f"{self.thing}: the new certificate {identity.cert_file} was refused by {exc.endpoint} "
                    f"({exc.reason}); still using {self.identity.cert_file}",
                    endpoint=exc.endpoint,
                    reasons={exc.endpoint: exc.reason},
                ) from exc
            raise
        self.identity = identity

    @property
    def refusal(self) -> IdentityRefused | None:
        """Set while every endpoint refuses this device's identity (the client retries only rarely then);
        cleared by the next session. Observers also get ``ConnectFailed(refused=True)`` per refusal."""
        return self._loop.refusal

    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint of the live session, or None while offline."""
        session = self._loop.session
        return session.endpoint if session is not None else None

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every :mod:`~iotfleet.device.events` event, on the event loop."""
        self._listeners.add(listener)

    def add_session_hook(self, hook: SessionHook) -> None:
        """Run ``await hook(device, endpoint)`` on every new session, after subscriptions are restored.

        Shadow sync uses this to re-get and reconcile after a reconnect or a failover.
        """
        self._loop.hooks.append(partial(hook, self))

    def _require_running(self) -> None:
        if self.state is DeviceState.NEW:
            raise ClientStateError(f"enter the client first: 'async with DeviceClient(...) as device' ({self.thing})")
        if self.state is DeviceState.CLOSED:
            raise ClientStateError(f"the client of {self.thing} is closed; create a new DeviceClient")

    # ------------------------------------------------------------------ publishing

    def data_topic(self, stream: str) -> str:
        """This thing's (validated) topic for ``stream``; with ``basic_ingest=RULE``, that topic sent straight
        to rule RULE (``$aws/rules/RULE/<topic>``: no broker fan-out, no messaging charge on AWS)."""
        topic = self._stream_topics.get(stream)
        if topic is None:
            if self.scope is None:
                raise ConfigError(
                    "publishing a stream needs the thing's scope: DeviceClient(..., tenant=..., site=...) "
                    f"for {self.thing}"
                )
            topic = self.scheme.data_topic(self.scope, stream)
            if self.basic_ingest is not None:
                topic = basic_ingest_topic(self.basic_ingest, topic)
            self._stream_topics[stream] = topic
        return topic

    async def publish(
        self, stream: str, payload: Payload, *, qos: int = 1, timeout: float | None = None
    ) -> PublishReceipt:
        """Publish to this thing's data topic for ``stream``; for QoS 1 wait for the PUBACK.

        Raises :class:`PublishRejected` on a failure reason code, :class:`RequestTimeout` after
        ``timeout`` (the message stays queued), :class:`OutboxFull` when the outbox rejects it.
        """
        topic = self.data_topic(stream)
        receipt = self._enqueue(topic, payload, qos)
        if timeout is None:  # the common case awaits here: no second coroutine per message
            return await receipt  # cancelling this wait cancels the receipt, never the queued message
        return await self._receipt(receipt, topic, timeout)

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
        return self._out.enqueue(topic, payload, qos)

    def queue(self, stream: str, payload: Payload) -> None:
        """Queue a QoS 1 publish to ``stream`` with no receipt: durable once this returns, its outcome
        told only by the ``PublishAcked`` / ``PublishFailed`` events. For a sender that counts through
        events (the simulator): no future per message."""
        self._require_running()
        self._out.enqueue(self.data_topic(stream), payload, 1, receipt=False)

    # ------------------------------------------------------------------ subscriptions and inbound

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and on every future session."""
        self._require_running()
        await self._in.subscribe(self._loop.session, topic_filter, qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        self._require_running()
        await self._in.unsubscribe(self._loop.session, topic_filter)

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

    def jobs(self) -> AsyncIterator[JobExecution]:
        """The thing's job executions (AWS IoT Jobs), each started and handed over with its document:
        ``async for job in device.jobs(): ... await job.succeed()``. It waits for new ones, resumes after
        a reconnect or a failover, and never runs one twice across regions (:mod:`iotfleet.device.jobs`)."""
        self._require_running()
        if self._jobs is None:
            self._jobs = Jobs(self)
        return self._jobs.executions()

    def add_message_handler(self, topic_filter: str, handler: Callable[[InboundMessage], None]) -> None:
        """Call ``handler(message)`` on the event loop for every inbound message matching ``topic_filter``.

        For components built on the client (the shadow client); it does not subscribe by itself.
        """
        self._in.add_handler(topic_filter, handler)


async def _first(*events: asyncio.Event, timeout: float | None) -> None:
    """Wait until one of ``events`` is set; TimeoutError after ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    if not done:
        raise TimeoutError
