"""IoT Core's lifecycle events, read from a region broker's log.

mosquitto 2.0's plugin interface has no connect event, and its disconnect event carries no reason, but
its log says both: ``New client connected from ADDR:PORT as ID (p5, c1, k30, u'CN').`` and one line per
way a connection ends. :class:`PresenceTracker` turns those lines into the events IoT Core publishes on
``$aws/events/presence/connected/<clientId>`` and ``.../disconnected/<clientId>`` (IOT_CORE.md section 3,
DG ``life-cycle-events``), with its fields: ``clientId``, ``timestamp`` (ms), ``eventType``,
``sessionIdentifier``, ``principalIdentifier`` (the certificate id), ``ipAddress`` (connect only),
``versionNumber`` (one per connection of a client id, shared by its disconnect), and on disconnect
``clientInitiatedDisconnect`` and ``disconnectReason``.

A broker that starts (``mosquitto version ... starting``) has no connections: the tracker forgets those
it knew (a killed broker logs nothing for them). As on IoT Core, client ids with ``#`` or ``+`` get no
events; neither do the cloud's own services. A disconnect is told only for a connection that was told,
so a refused CONNECT (which mosquitto logs as a disconnect) is silent, as it is on IoT Core. The reasons, by log line:

============================================  ==============================
``Client ID disconnected.``                   ``CLIENT_INITIATED_DISCONNECT``
``Client ID closed its connection.``          ``CONNECTION_LOST``
``Client ID disconnected: <socket error>.``   ``CONNECTION_LOST``
``Socket error on client ID, disconnecting.`` ``CONNECTION_LOST``
``Client ID has exceeded timeout, ...``       ``MQTT_KEEP_ALIVE_TIMEOUT``
``Client ID already connected, closing ...``  ``DUPLICATE_CLIENTID``
``Client ID disconnected, not authorised.``   ``AUTH_ERROR``
``iotfleet: refused ID: ...`` then ``Client ID disconnected.``  ``AUTH_ERROR`` (the plugin's re-check after a
                                              reload: the certificate left ACTIVE, or its policies changed)
``... due to malformed packet`` (and the like) ``CLIENT_ERROR``
``... due to out of memory.``                 ``SERVER_ERROR``
``... by administrative action.``             ``API_INITIATED_DISCONNECT``
============================================  ==============================
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["PRESENCE_FILTER", "PRESENCE_PREFIX", "LifecycleEvent", "PresenceTracker", "presence_topic"]

_CONNECTED: Final = re.compile(
    r"^New client connected from (?P<address>.+):\d+ as (?P<id>.+) \(p\d+, c\d, k\d+(?:, u'(?P<user>.*)')?\)\.$"
)
_STARTING: Final = re.compile(r"^mosquitto version \S+ starting$")
_REFUSED: Final = re.compile(r"^iotfleet: refused (?P<id>.+?): ")  # iotfleet_routing.c's basic-auth refusals
_ENDED: Final = [
    (re.compile(r"^Client (?P<id>.+) already connected, closing old connection\.$"), "DUPLICATE_CLIENTID"),
    (re.compile(r"^Client (?P<id>.+) disconnected, not authorised\.$"), "AUTH_ERROR"),
    (
        re.compile(r"^Client (?P<id>.+) disconnected due to (?:malformed packet|protocol error|oversize \w+)\.$"),
        "CLIENT_ERROR",
    ),
    (re.compile(r"^Bad client (?P<id>.+) sending multiple CONNECT messages\.$"), "CLIENT_ERROR"),
    (re.compile(r"^Client (?P<id>.+) disconnected due to out of memory\.$"), "SERVER_ERROR"),
    (re.compile(r"^Client (?P<id>.+) has exceeded timeout, disconnecting\.$"), "MQTT_KEEP_ALIVE_TIMEOUT"),
    (re.compile(r"^Client (?P<id>.+) closed its connection\.$"), "CONNECTION_LOST"),
    (re.compile(r"^Socket error on client (?P<id>.+), disconnecting\.$"), "CONNECTION_LOST"),
    (re.compile(r"^Client (?P<id>.+) disconnected: .+\.$"), "CONNECTION_LOST"),
    (re.compile(r"^Bad socket read/write on client (?P<id>.+): .+$"), "CONNECTION_LOST"),
    (re.compile(r"^Client (?P<id>.+) been disconnected by administrative action\.$"), "API_INITIATED_DISCONNECT"),
    (re.compile(r"^Client (?P<id>.+) disconnected\.$"), "CLIENT_INITIATED_DISCONNECT"),
]


PRESENCE_PREFIX: Final = "$aws/events/presence/"
PRESENCE_FILTER: Final = f"{PRESENCE_PREFIX}+/+"  # every presence event, of every client


def presence_topic(event_type: str, client_id: str) -> str:
    return f"{PRESENCE_PREFIX}{event_type}/{client_id}"


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One presence event, as IoT Core publishes it (:meth:`payload`) on :attr:`topic`."""

    event_type: str  # "connected" or "disconnected"
    client_id: str
    timestamp_ms: int
    session: str
    principal: str
    version: int
    ip_address: str | None = None
    reason: str | None = None

    @property
    def topic(self) -> str:
        return presence_topic(self.event_type, self.client_id)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "clientId": self.client_id,
            "timestamp": self.timestamp_ms,
            "eventType": self.event_type,
            "sessionIdentifier": self.session,
            "principalIdentifier": self.principal,
        }
        if self.event_type == "connected":
            body["ipAddress"] = self.ip_address
        else:
            body["clientInitiatedDisconnect"] = self.reason == "CLIENT_INITIATED_DISCONNECT"
            body["disconnectReason"] = self.reason
        body["versionNumber"] = self.version
        return body


@dataclass(slots=True)
class _Live:
    session: str
    principal: str
    version: int


class PresenceTracker:
    """Feed it a broker's log lines (:meth:`feed`); it returns the lifecycle events they mean.

    ``principal(username)`` maps a connection's username (its certificate CN) to the principal IoT Core
    reports (the certificate id); ``ignore(client_id)`` says which clients get no events (the cloud's own).
    Not thread-safe: one log reader feeds it. :meth:`reset` forgets every connection (the broker died).
    """

    def __init__(
        self,
        principal: Callable[[str], str],
        *,
        ignore: Callable[[str], bool] = lambda _client_id: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._principal = principal
        self._ignore = ignore
        self._clock = clock
        self._live: dict[str, _Live] = {}
        self._versions: dict[str, int] = {}
        self._refused: str | None = None  # the client id the previous line said the plugin refused

    def reset(self) -> None:
        self._live.clear()

    @property
    def connected(self) -> int:
        """How many connections are live, as far as the log said."""
        return len(self._live)

    def feed(self, line: str) -> list[LifecycleEvent]:
        # a refusal of a live session is followed at once by its disconnect line; otherwise it was a new
        # CONNECT's (followed by "Client <unknown> disconnected, not authorised.") and means nothing here
        self._refused, refused_before = None, self._refused
        if not line.startswith(("New client", "Client ", "Socket error", "Bad ", "mosquitto version", "iotfleet: ")):
            return []  # most lines: a cheap test first
        if _STARTING.match(line):
            self.reset()
            return []
        refused = _REFUSED.match(line)
        if refused is not None:
            self._refused = refused["id"]
            return []
        found = _CONNECTED.match(line)
        if found is not None:
            return self._connected(found["id"], found["user"] or "", found["address"])
        for pattern, reason in _ENDED:
            ended = pattern.match(line)
            if ended is not None:
                auth_error = ended["id"] == refused_before  # the re-check after a reload refused a live session
                event = self._disconnected(ended["id"], "AUTH_ERROR" if auth_error else reason)
                return [event] if event is not None else []
        return []

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _connected(self, client_id: str, user: str, address: str) -> list[LifecycleEvent]:
        if self._ignore(client_id) or "#" in client_id or "+" in client_id:
            return []
        events = []
        old = self._disconnected(client_id, "DUPLICATE_CLIENTID")  # a takeover whose own line did not come first
        if old is not None:
            events.append(old)
        version = self._versions.get(client_id, -1) + 1
        self._versions[client_id] = version
        live = self._live[client_id] = _Live(uuid.uuid4().hex, self._principal(user), version)
        events.append(
            LifecycleEvent(
                "connected", client_id, self._now_ms(), live.session, live.principal, version, ip_address=address
            )
        )
        return events

    def _disconnected(self, client_id: str, reason: str) -> LifecycleEvent | None:
        live = self._live.pop(client_id, None)
        if live is None:
            return None
        return LifecycleEvent(
            "disconnected", client_id, self._now_ms(), live.session, live.principal, live.version, reason=reason
        )
