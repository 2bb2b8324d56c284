"""The lifecycle-events service of a region: IoT Core's presence events, published from the broker's log.

The region's broker log reader hands every line to :meth:`LifecycleService.feed` (on the reader's
thread); the :class:`~iotfleet.cloud.presence.PresenceTracker` turns connection lines into events, which
are published at QoS 1 on ``$aws/events/presence/...`` through the service connection, on the services'
loop. Devices receive them as on IoT Core, if their policy lets them subscribe and receive. An event that
cannot be published (the service's own connection is down) is counted in :attr:`dropped`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from iotfleet.cloud.presence import LifecycleEvent, PresenceTracker
from iotfleet.cloud.services.base import SERVICE_CLIENT_PREFIX, OperatorConnection

__all__ = ["LifecycleService"]


class LifecycleService(OperatorConnection):
    """Publishes a region's presence events; ``principal(cn)`` gives a connection's certificate id."""

    kind = "lifecycle"

    def __init__(self, region: str, principal: Callable[[str], str]) -> None:
        super().__init__(region)
        self.tracker = PresenceTracker(principal, ignore=lambda client_id: client_id.startswith(SERVICE_CLIENT_PREFIX))
        self.published: Counter[str] = Counter()  # by event type (on the services' loop)
        self.dropped = 0  # events not published: the service's connection was down

    def feed(self, line: str) -> None:
        """One line of the broker's log (the log reader's thread)."""
        events = self.tracker.feed(line)
        loop = self.loop  # the services' loop, once attached
        if events and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._publish, events)

    def _publish(self, events: list[LifecycleEvent]) -> None:
        for event in events:
            if self.publish(event.topic, json.dumps(event.payload()).encode()):
                self.published[event.event_type] += 1
            else:
                self.dropped += 1

    def stats(self) -> dict[str, Any]:
        return {"published": dict(self.published), "dropped": self.dropped}
