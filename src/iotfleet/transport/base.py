"""The transport protocol: one MQTT5 connection attempt to one endpoint at a time.

A :class:`Transport` opens :class:`Session` objects; the device client owns reconnection, failover and
the outbox, so a session never reconnects by itself. Everything here is used from one asyncio event
loop; implementations hand callbacks from their own threads to that loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Final, Protocol

from iotfleet.config import Endpoint, Identity
from iotfleet.errors import ClientError, ConnectError

__all__ = [
    "ALPN_IOT_CORE",
    "ConnectOptions",
    "DisconnectInfo",
    "DisconnectReason",
    "InboundMessage",
    "PubackCode",
    "PublishCallback",
    "Session",
    "Transport",
    "connect_failed",
    "connect_timed_out",
    "publish_via_send",
    "reason_name",
    "refuses_identity",
    "uses_alpn",
]

ALPN_IOT_CORE = "x-amzn-mqtt-ca"
"""The ALPN protocol IoT Core needs to serve MQTT with client certificates on port 443."""


def uses_alpn(endpoint: Endpoint) -> bool:
    """Whether a connection to ``endpoint`` offers :data:`ALPN_IOT_CORE` (port 443, as the AWS SDKs do)."""
    return endpoint.port == 443


def connect_failed(endpoint: Endpoint, reason: str, detail: str = "") -> ConnectError:
    """The error of a failed connection attempt; ``reason`` is short and stable (``refused``, ``tls``, ...)."""
    return ConnectError(
        f"could not connect to {endpoint}: {reason}{f' ({detail})' if detail else ''}",
        endpoint=str(endpoint),
        reason=reason,
    )


REFUSING_CONNACKS: Final = frozenset(
    f"connack 0x{code:02x}" for code in (0x85, 0x86, 0x87, 0x8A, 0x8C)
)  # client id not valid, bad user name or password, not authorized, banned, bad authentication method


def refuses_identity(reason: str) -> bool:
    """Whether a failed attempt's ``reason`` says the endpoint would not take this identity: a refusing
    CONNACK, or a TLS failure (IoT Core, and the local cloud, fail the handshake of a certificate that is
    not ACTIVE). An endpoint that is down refuses the TCP connection or does not answer; one that hangs
    up before the CONNACK (a throttled CONNECT, a certificate not known there yet) may take it later."""
    return reason in REFUSING_CONNACKS or reason == DisconnectReason.TLS


def connect_timed_out(endpoint: Endpoint, timeout_s: float) -> ConnectError:
    """The error of an attempt that got no CONNACK within ``timeout_s``."""
    return ConnectError(f"no CONNACK from {endpoint} within {timeout_s}s", endpoint=str(endpoint), reason="timeout")


class PubackCode(IntEnum):
    """MQTT5 PUBACK reason codes (IOT_CORE.md section 3 lists those AWS sends)."""

    SUCCESS = 0x00
    NO_MATCHING_SUBSCRIBERS = 0x10
    UNSPECIFIED_ERROR = 0x80
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    NOT_AUTHORIZED = 0x87
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    QUOTA_EXCEEDED = 0x97
    PAYLOAD_FORMAT_INVALID = 0x99

    @property
    def ok(self) -> bool:
        return self.value < 0x80


def reason_name(code: int) -> str:
    """``0x87 not-authorized`` style name of a PUBACK reason code, for messages and counters."""
    try:
        name = PubackCode(code).name.lower().replace("_", "-")
    except ValueError:
        name = "unknown"
    return f"0x{code:02x} {name}"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A PUBLISH the broker delivered."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    user_properties: tuple[tuple[str, str], ...] = ()

    def property(self, name: str) -> str | None:
        """The first user property called ``name``, or None."""
        return next((v for k, v in self.user_properties if k == name), None)


class DisconnectReason(StrEnum):
    """Why a session ended (or an attempt failed), short and stable: what ``Disconnected.reason`` says.

    The ``0x..`` members are MQTT5 DISCONNECT reason codes a broker sends (:meth:`of_code`); a code the
    MQTT5 specification does not list stays its plain ``0x..`` string.
    """

    CLOSED = "closed"  # by this client
    RESET = "reset"  # the connection dropped (the broker died, a reset, an EOF)
    REFUSED = "refused"  # the TCP connection was refused
    TLS = "tls"  # the TLS handshake or a TLS record failed
    IO = "io"  # another socket error
    TIMEOUT = "timeout"  # no CONNACK in time
    PING_TIMEOUT = "ping-timeout"  # the broker stopped answering pings
    ACK_TIMEOUT = "ack-timeout"  # the broker stopped answering publishes (closed by the device client)
    UNSPECIFIED_ERROR = "0x80"
    MALFORMED_PACKET = "0x81"
    PROTOCOL_ERROR = "0x82"
    IMPLEMENTATION_SPECIFIC_ERROR = "0x83"
    NOT_AUTHORIZED = "0x87"
    SERVER_BUSY = "0x89"
    SERVER_SHUTTING_DOWN = "0x8b"
    KEEP_ALIVE_TIMEOUT = "0x8d"  # the broker heard nothing from us for 1.5 keepalives
    SESSION_TAKEN_OVER = "0x8e"  # another connection with the same client id
    TOPIC_FILTER_INVALID = "0x8f"
    TOPIC_NAME_INVALID = "0x90"
    RECEIVE_MAXIMUM_EXCEEDED = "0x93"
    TOPIC_ALIAS_INVALID = "0x94"
    PACKET_TOO_LARGE = "0x95"
    MESSAGE_RATE_TOO_HIGH = "0x96"
    QUOTA_EXCEEDED = "0x97"
    ADMINISTRATIVE_ACTION = "0x98"
    PAYLOAD_FORMAT_INVALID = "0x99"
    RETAIN_NOT_SUPPORTED = "0x9a"
    QOS_NOT_SUPPORTED = "0x9b"
    USE_ANOTHER_SERVER = "0x9c"
    SERVER_MOVED = "0x9d"
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = "0x9e"
    CONNECTION_RATE_EXCEEDED = "0x9f"
    MAXIMUM_CONNECT_TIME = "0xa0"
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = "0xa1"
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = "0xa2"

    @classmethod
    def of_code(cls, code: int) -> str:
        """The member for a DISCONNECT reason code, or ``0x..`` for one MQTT5 does not list."""
        text = f"0x{code:02x}"
        try:
            return cls(text)
        except ValueError:
            return text


@dataclass(frozen=True, slots=True)
class DisconnectInfo:
    """Why a session ended: ``reason`` is a :class:`DisconnectReason`, or ``0x..`` for an unlisted code."""

    reason: str
    detail: str = ""
    by_client: bool = False


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """What one connection attempt needs besides the endpoint."""

    client_id: str
    identity: Identity
    keepalive_s: int = 1200
    ping_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    receive_maximum: int = 100
    on_message: Callable[[InboundMessage], None] = field(default=lambda _msg: None)
    # 0: a clean session every time. Else the broker keeps the session (subscriptions, queued and
    # unacknowledged QoS 1 messages) this long after a disconnect and the next CONNECT resumes it
    session_expiry_s: int = 0


PublishCallback = Callable[[int, ClientError | None, float], None]
"""Called on the event loop once a publish completes: ``(reason code, None, at)``, or ``(0, error, at)`` when
the session ended first (:class:`~iotfleet.errors.ConnectionLost`). ``at`` is ``time.monotonic()`` when the
transport saw the answer, which may be a little before the loop runs the callback (a transport may gather
the callbacks of a few milliseconds into one wakeup of the loop): latencies are measured to ``at``."""


class Session(Protocol):
    """One live MQTT5 connection. It ends once: ``closed`` then holds the reason."""

    endpoint: Endpoint
    closed: asyncio.Future[DisconnectInfo]

    def send(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]], done: PublishCallback
    ) -> None:
        """Send a PUBLISH now and call ``done`` when its PUBACK (QoS 1) or its write (QoS 0) completes.

        This is the device client's hot path: no task and no future per message. Raises
        :class:`~iotfleet.errors.ConnectionLost` at once if the session has already ended.
        """
        ...

    async def publish(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]] = ()
    ) -> int:
        """:meth:`send` as an awaitable: the PUBACK reason code (0 for QoS 0 once written)."""
        ...

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        """Subscribe; return the SUBACK reason code of each filter."""
        ...

    async def unsubscribe(self, filters: Sequence[str]) -> None: ...

    async def close(self) -> None:
        """Send DISCONNECT (if still connected) and release the connection."""
        ...


async def publish_via_send(
    session: Session, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]]
) -> int:
    """The awaitable form of :meth:`Session.send`, shared by the implementations."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def done(code: int, error: ClientError | None, _at: float) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(code)

    session.send(topic, payload, qos, user_properties, done)
    return await future


class Transport(Protocol):
    """Opens sessions. ``name`` is what the simulator and reports call it (``crt``, ``paho``)."""

    name: str

    async def connect(self, endpoint: Endpoint, options: ConnectOptions) -> Session:
        """Connect to ``endpoint``; return the session once CONNACK succeeded.

        Raises :class:`~iotfleet.errors.ConnectError` when the attempt fails or takes longer than
        ``options.connect_timeout_s``.
        """
        ...
