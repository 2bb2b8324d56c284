"""What one worker measures, from its devices' events; the parent merges every worker's into the report."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from iotfleet.device.events import (
    Connected,
    ConnectFailed,
    DeviceEvent,
    Disconnected,
    FailedOver,
    PublishAcked,
    PublishFailed,
)
from iotfleet.metrics import Histogram, SeqSet, Timeline
from iotfleet.sim.ota import OtaFigures

__all__ = ["SHADOW_PREFIX", "WorkerMetrics"]

SHADOW_PREFIX = "$aws/things/"  # shadow requests; never a data topic
_ACKED_IN: dict[str, str] = {}  # region -> its timeline key, "acked:<region>" (built once, not per message)


@dataclass
class WorkerMetrics:
    """What one worker measured; merged by the parent. Latencies in ms."""

    devices: int = 0
    connected: int = 0
    sent: int = 0
    acked: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)
    failovers: Counter[str] = field(default_factory=Counter)  # "from->to"
    failbacks: int = 0
    # region -> devices (homed there), connected (now), connects, acked, failovers_out, failovers_in, failbacks
    by_region: dict[str, Counter[str]] = field(default_factory=dict)
    connect_ms: Histogram = field(default_factory=Histogram)
    ack_ms: Histogram = field(default_factory=Histogram)
    provision_ms: Histogram = field(default_factory=Histogram)
    acked_seqs: dict[str, SeqSet] = field(default_factory=dict)
    sent_by_device: dict[str, int] = field(default_factory=dict)
    # thing -> [(epoch s, region)]: when its acknowledgements started coming from each region in turn
    ack_moves: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    outbox_depth: int = 0
    provisioned: int = 0
    started: int = 0
    cpu_s: float = 0.0  # the worker process's CPU time, all of it
    steady_cpu_s: float = 0.0  # CPU from every device running (plus 2 s) to the stop
    steady_wall_s: float = 0.0
    steady_since: float = 0.0  # that window in epoch s; 0: the run ended before it began
    steady_until: float = 0.0
    max_rss_kb: int = 0
    # shadow traffic: acknowledged requests by operation ("get", "update"), deltas applied, resyncs, ...
    shadow: Counter[str] = field(default_factory=Counter)
    account_rate_waits: int = 0  # times the account publish rate held the worker's tasks back
    # commands from the cloud: ids received (each once), the delivery latency, and what was acted on
    commands_received: SeqSet = field(default_factory=SeqSet)
    command_ms: Histogram = field(default_factory=Histogram)
    commands_handled: Counter[str] = field(default_factory=Counter)
    # per second: sent, acked, errors, and by region acked, connects and disconnects; the ack latency
    timeline: Timeline = field(default_factory=Timeline)
    ota: OtaFigures = field(default_factory=OtaFigures)  # the firmware rollout, if the run has one

    def error(self, kind: str) -> None:
        """Count one error of ``kind`` (and in its second of the timeline)."""
        self.errors[kind] += 1
        self.timeline.count("errors")

    def sent_one(self, thing: str) -> None:
        """Count one data message queued by ``thing``."""
        self.sent += 1
        self.sent_by_device[thing] = self.sent_by_device.get(thing, 0) + 1
        self.timeline.count("sent")

    def on_command(self, command_id: int, command: str, sent_at_ms: int) -> bool:
        """Count a command a device received; False if it had come before (a redelivery)."""
        if not self.commands_received.add(command_id):
            return False
        self.command_ms.add(max(0.0, time.time() * 1000 - sent_at_ms))
        self.commands_handled[command] += 1
        return True

    def region(self, name: str) -> Counter[str]:
        counters = self.by_region.get(name)
        if counters is None:
            counters = self.by_region[name] = Counter()
        return counters

    def _acked(self, event: PublishAcked) -> None:
        """One data message acknowledged: the hot path (one per message), so one clock reading serves all."""
        self.acked += 1
        latency_ms = event.latency_s * 1000
        self.ack_ms.add(latency_ms)
        region = event.endpoint.region
        self.region(region)["acked"] += 1
        now = time.time()
        timeline = self.timeline
        timeline.count("acked", at=now)
        timeline.count(_ACKED_IN.get(region) or _ACKED_IN.setdefault(region, f"acked:{region}"), at=now)
        timeline.latency_ms(latency_ms, at=now)
        seqs = self.acked_seqs.get(event.thing)
        if seqs is None:
            seqs = self.acked_seqs[event.thing] = SeqSet()
        seqs.add(event.seq)
        moves = self.ack_moves.get(event.thing)
        if moves is None:
            self.ack_moves[event.thing] = [(now, region)]
        elif moves[-1][1] != region:
            moves.append((now, region))

    def on_event(self, event: DeviceEvent) -> None:
        if isinstance(event, PublishAcked | PublishFailed) and event.topic.startswith(SHADOW_PREFIX):
            op = event.topic.rsplit("/", 1)[-1]
            if isinstance(event, PublishAcked):
                self.shadow[op] += 1
            else:
                self.error(f"shadow {op}: {event.reason}")
        elif isinstance(event, PublishAcked):
            self._acked(event)
        elif isinstance(event, Connected):
            self.connects += 1
            self.connected += 1
            self.connect_ms.add(event.connect_s * 1000)
            self.region(event.endpoint.region)["connected"] += 1
            self.region(event.endpoint.region)["connects"] += 1
            self.timeline.count(f"connects:{event.endpoint.region}")
        elif isinstance(event, Disconnected):
            self.connected -= 1
            self.region(event.endpoint.region)["connected"] -= 1
            self.disconnects[event.reason] += 1
            self.timeline.count(f"disconnects:{event.endpoint.region}")
        elif isinstance(event, ConnectFailed):
            self.error(f"connect: {event.reason}")
        elif isinstance(event, FailedOver):
            if event.failback:
                self.failbacks += 1
                self.region(event.to_endpoint.region)["failbacks"] += 1
            else:
                self.failovers[f"{event.from_endpoint.region}->{event.to_endpoint.region}"] += 1
                self.region(event.from_endpoint.region)["failovers_out"] += 1
                self.region(event.to_endpoint.region)["failovers_in"] += 1
        elif isinstance(event, PublishFailed):
            self.failed[event.reason] += 1
            self.error(f"publish: {event.reason}")

    def steady_acks(self) -> Histogram:
        """The ack latencies of the whole seconds inside the steady window: the ramp's handshakes, which
        hold the event loop, and the drain after the stop left out. Empty if the run ended before it."""
        if not self.steady_since:
            return Histogram()
        return self.timeline.latency_between(math.ceil(self.steady_since), math.floor(self.steady_until))

    def snapshot(self) -> dict[str, Any]:
        """The small live figures sent every second (no per-device data)."""
        return {
            "devices": self.devices,
            "started": self.started,
            "provisioned": self.provisioned,
            "connected": self.connected,
            "sent": self.sent,
            "acked": self.acked,
            "errors": sum(self.errors.values()),
            "outbox": self.outbox_depth,
            "p99_ack_ms": self.ack_ms.quantile(0.99),
            "by_region": {r: c["connected"] for r, c in self.by_region.items()},
            "acked_by_region": {r: c["acked"] for r, c in self.by_region.items()},
            # for the live Prometheus metrics (sim/prometheus.py): a few hundred buckets at most
            "failed": dict(self.failed),
            "failovers": dict(self.failovers),
            "ack_histogram": self.ack_ms.to_dict(),
            "connect_histogram": self.connect_ms.to_dict(),
        }
