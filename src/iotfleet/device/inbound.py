"""A device's inbound side: the subscriptions it keeps across sessions, and where messages go.

:class:`Inbound` is one part of :class:`~iotfleet.device.client.DeviceClient`. It holds the topic filters
the device subscribed to (restored on every new session), the streams its readers collect from
(``messages()``, ``commands()``, a shadow's deltas) and the handlers of components built on the client,
and dispatches each inbound message to them on the event loop. It knows a session only through the
:class:`~iotfleet.transport.base.Session` protocol, so it is tested against a fake one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from iotfleet.device.stream import Stream
from iotfleet.errors import ConnectionLost
from iotfleet.topics import filter_matches, validate_filter
from iotfleet.transport.base import InboundMessage, Session

__all__ = ["INBOUND_QUEUE", "MAX_FILTERS_PER_SUBSCRIBE", "Inbound"]

log = logging.getLogger(__name__)

MAX_FILTERS_PER_SUBSCRIBE = 8  # IoT Core's limit (IOT_CORE.md section 3)
INBOUND_QUEUE = 10_000


class InboundCounts(Protocol):
    """Where :class:`Inbound` counts what it received and what a full stream dropped."""

    inbound: int
    inbound_dropped: int


class Inbound:
    """Subscriptions kept across sessions, streams and handlers, and the dispatch of inbound messages.

    ``thing`` names the device in stream names and logs; ``counts`` gets ``inbound`` and
    ``inbound_dropped`` (a stream whose reader fell ``INBOUND_QUEUE`` behind drops the newest).
    """

    def __init__(self, thing: str, counts: InboundCounts) -> None:
        self.thing = thing
        self.counts = counts
        self.subscriptions: dict[str, int] = {}  # topic filter -> QoS, restored on every session
        self._routes: list[tuple[str | None, Stream[Any], Callable[[InboundMessage], Any]]] = []
        self._streams: set[Stream[Any]] = set()  # every open stream, ended by end_streams()
        self._handlers: list[tuple[str, Callable[[InboundMessage], None]]] = []

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, session: Session | None, topic_filter: str, qos: int) -> None:
        """Keep ``topic_filter`` for every session; subscribe on ``session`` now if there is one."""
        validate_filter(topic_filter)
        self.subscriptions[topic_filter] = qos
        if session is not None:
            with contextlib.suppress(ConnectionLost):  # restored with the next session
                await self._subscribe(session, [(topic_filter, qos)])

    async def unsubscribe(self, session: Session | None, topic_filter: str) -> None:
        self.subscriptions.pop(topic_filter, None)
        if session is not None:
            with contextlib.suppress(ConnectionLost):
                await session.unsubscribe([topic_filter])

    async def restore(self, session: Session) -> None:
        """Subscribe a new session to every kept filter (IoT Core's limit of filters per SUBSCRIBE)."""
        if self.subscriptions:
            await self._subscribe(session, list(self.subscriptions.items()))

    async def _subscribe(self, session: Session, filters: list[tuple[str, int]]) -> None:
        for i in range(0, len(filters), MAX_FILTERS_PER_SUBSCRIBE):
            chunk = filters[i : i + MAX_FILTERS_PER_SUBSCRIBE]
            codes = await session.subscribe(chunk)
            refused = [(f, c) for (f, _), c in zip(chunk, codes, strict=False) if c >= 0x80]
            if refused:
                log.warning("%s: subscriptions refused: %s", self.thing, refused)

    # ------------------------------------------------------------------ streams and handlers

    def open_stream(self, name: str, subscribe: Callable[[], Awaitable[None]] | None = None) -> Stream[Any]:
        """A stream that :meth:`end_streams` ends; ``subscribe`` is awaited before its first item."""
        stream: Stream[Any] = Stream(f"{self.thing} {name}", maxsize=INBOUND_QUEUE, subscribe=subscribe)
        self._streams.add(stream)
        stream.on_end(self._streams.discard)
        return stream

    def route(
        self,
        name: str,
        topic_filter: str | None,
        subscribe: Callable[[], Awaitable[None]] | None,
        convert: Callable[[InboundMessage], Any],
    ) -> Stream[Any]:
        """A stream of ``convert(message)`` for every message matching ``topic_filter`` (None: all); a
        ``None`` from ``convert`` is skipped. It collects from now until it ends."""
        stream = self.open_stream(name, subscribe)
        entry = (topic_filter, stream, convert)
        self._routes.append(entry)
        stream.on_end(lambda _stream: self._routes.remove(entry))
        return stream

    def add_handler(self, topic_filter: str, handler: Callable[[InboundMessage], None]) -> None:
        """Call ``handler(message)`` for every message matching ``topic_filter``; one that raises is logged."""
        self._handlers.append((topic_filter, handler))

    def dispatch(self, message: InboundMessage) -> None:
        """Hand ``message`` to every matching handler, then to every matching stream."""
        self.counts.inbound += 1
        for handled, handler in self._handlers:
            if filter_matches(handled, message.topic):
                try:
                    handler(message)
                except Exception:  # one component's bug must not stop delivery to the others
                    log.exception("%s: message handler for %s failed", self.thing, handled)
        for topic_filter, stream, convert in self._routes:
            if topic_filter is None or filter_matches(topic_filter, message.topic):
                item = convert(message)
                if item is not None and not stream.put(item):
                    self.counts.inbound_dropped += 1

    def end_streams(self) -> None:
        """End every open stream: readers get what was received, then the end."""
        for stream in list(self._streams):
            stream.end()
