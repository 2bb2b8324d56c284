"""What a device client tells its observers (the simulator, dashboards, tests).

Listeners are plain callables taking one event; they run on the client's event loop and must not
block. The SDK counts nothing on an observer's behalf: it states what happened, with the figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from iotfleet.config import Endpoint

__all__ = [
    "ConnectFailed",
    "Connected",
    "DeviceEvent",
    "Disconnected",
    "EventKind",
    "FailedOver",
    "Listener",
    "Listeners",
    "PublishAcked",
    "PublishFailed",
]

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    CONNECTED = "connected"
    CONNECT_FAILED = "connect-failed"
    DISCONNECTED = "disconnected"
    FAILED_OVER = "failed-over"
    PUBLISH_ACKED = "publish-acked"
    PUBLISH_FAILED = "publish-failed"


@dataclass(frozen=True, slots=True)
class Connected:
    """A session started on ``endpoint``; ``connect_s`` is how long the CONNECT took."""

    thing: str
    endpoint: Endpoint
    connect_s: float
    session: int  # 1 for the first session of this client, then 2, 3, ...
    kind: EventKind = EventKind.CONNECTED


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """An attempt failed; ``refused`` when the endpoint would not take the identity (see
    :func:`~iotfleet.transport.base.refuses_identity`), not because it was down."""

    thing: str
    endpoint: Endpoint
    reason: str
    kind: EventKind = EventKind.CONNECT_FAILED
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A session ended; ``reason`` is a :class:`~iotfleet.transport.base.DisconnectReason` (``0x..`` if unlisted)."""

    thing: str
    endpoint: Endpoint
    reason: str
    kind: EventKind = EventKind.DISCONNECTED


@dataclass(frozen=True, slots=True)
class FailedOver:
    """The client moved from one endpoint to another (``failback`` when back to the preferred one)."""

    thing: str
    from_endpoint: Endpoint
    to_endpoint: Endpoint
    failback: bool
    kind: EventKind = EventKind.FAILED_OVER


@dataclass(frozen=True, slots=True)
class PublishAcked:
    """A QoS 1 publish got a successful PUBACK.

    ``latency_s`` runs from sending to the PUBACK, ``age_s`` from entering the outbox (including any
    time spent offline or waiting for the rate limit).
    """

    thing: str
    message_id: str
    seq: int
    topic: str
    reason_code: int
    latency_s: float
    age_s: float
    endpoint: Endpoint
    kind: EventKind = EventKind.PUBLISH_ACKED


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """A publish left the outbox without success: rejected by the broker, or dropped by overflow."""

    thing: str
    message_id: str
    seq: int
    topic: str
    reason: str
    reason_code: int | None = None
    kind: EventKind = EventKind.PUBLISH_FAILED


DeviceEvent = Connected | ConnectFailed | Disconnected | FailedOver | PublishAcked | PublishFailed
Listener = Callable[[DeviceEvent], None]


class Listeners:
    """A device's observers: ``emit`` calls each in turn; one that raises is logged and the rest still
    run. It is false while nobody listens, so a hot path can skip building an event."""

    __slots__ = ("_listeners",)

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._listeners = list(listeners)

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def emit(self, event: DeviceEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # an observer's bug must not break the device
                log.exception("listener %r failed on %s", listener, event.kind)
