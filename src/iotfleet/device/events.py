"""What a device client tells its observers (the simulator, dashboards, tests).

Listeners are plain callables taking one event; they run on the client's event loop and must not
block. The SDK counts nothing on an observer's behalf: it states what happened, with the figures.
"""

from __future__ import annotations

from collections.abc import Callable
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
    "PublishAcked",
    "PublishFailed",
]


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
    thing: str
    endpoint: Endpoint
    reason: str
    kind: EventKind = EventKind.CONNECT_FAILED


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
