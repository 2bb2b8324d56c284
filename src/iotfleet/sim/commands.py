"""Commands from the cloud: the simulator's operator sends ``identify`` (blink) and ``reboot`` to devices.

Each device gets a command every ``every_s`` simulated seconds on average (the fleet's rate is spread
evenly over the run; which device, and which command, is drawn from the seed). A command goes on the
device's command topic (``cmd/<tenant>/<site>/<thing>/<command>``) through the region the device is on
(its home, or the next healthy one while its home is failed), at QoS 1, as the cloud's operator. Its
payload carries an ``id`` (a number, unique in the run), the ``command``, ``sent_at_ms`` and, for a
reboot, ``offline_s`` (real seconds). The devices count what they received (by id, so a redelivery is
not counted twice) and the latency; :class:`~iotfleet.sim.report.CommandFigures` puts both together:
sent, delivered, lost.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from iotfleet.errors import IotFleetError
from iotfleet.metrics import SeqSet
from iotfleet.sim.access import CloudAccess
from iotfleet.sim.fleet import SimDevice, current_region
from iotfleet.sim.workload import IDENTIFY, REBOOT
from iotfleet.topics import ThingScope, TopicScheme

__all__ = ["Commander"]


class Commander:
    """Sends commands at the fleet's rate while the run goes on; :meth:`figures` says what it sent."""

    def __init__(
        self,
        cloud: CloudAccess,
        regions: Sequence[str],
        devices: Sequence[SimDevice],
        *,
        every_s: float,
        reboot_share: float,
        reboot_offline_s: float,
        speed: float,
        seed: int = 0,
        scheme: TopicScheme | None = None,
    ) -> None:
        self.cloud = cloud
        self.regions = list(regions)
        self.devices = list(devices)
        self.per_real_s = len(self.devices) / every_s * speed  # the fleet's commands per real second
        self.reboot_share = reboot_share
        self.offline_real_s = reboot_offline_s / speed
        self.scheme = scheme or TopicScheme()
        self.rng = random.Random(seed ^ 0x5EED)
        self.sent = SeqSet()
        self.by_command: Counter[str] = Counter()
        self.not_sent = 0  # the device's region could not take it (down): the command never left
        self.errors: Counter[str] = Counter()
        self.issued = 0

    def tick(self, elapsed_s: float, failed: Collection[str], *, until_s: float | None = None) -> None:
        """Send every command due by ``elapsed_s`` real seconds into the run (none after ``until_s``)."""
        if not self.devices:
            return
        horizon = elapsed_s if until_s is None else min(elapsed_s, until_s)
        while self.issued < int(horizon * self.per_real_s):
            self.issued += 1
            self._send(self.issued, failed)

    def _send(self, command_id: int, failed: Collection[str]) -> None:
        device = self.rng.choice(self.devices)
        command = REBOOT if self.rng.random() < self.reboot_share else IDENTIFY
        body: dict[str, Any] = {"id": command_id, "command": command, "sent_at_ms": int(time.time() * 1000)}
        if command == REBOOT:
            body["offline_s"] = self.offline_real_s
        topic = self.scheme.command_topic(ThingScope(device.tenant, device.site, device.thing), command)
        region = current_region(device.home, self.regions, failed)
        try:
            sent = self.cloud.publish(region, topic, json.dumps(body).encode())
        except IotFleetError as exc:
            self.errors[type(exc).__name__] += 1
            sent = False
        if sent:
            self.sent.add(command_id)
            self.by_command[command] += 1
        else:
            self.not_sent += 1

    def figures(self) -> dict[str, Any]:
        return {"sent": self.sent, "by_command": dict(self.by_command), "not_sent": self.not_sent}
