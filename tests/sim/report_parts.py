"""Fixed worker, ingest and operator figures for the report tests (deterministic, no processes)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from iotfleet.metrics import Histogram, SeqSet
from iotfleet.sim.runner import WorkerMetrics


def _hist(*values: float) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    return histogram


def worker(index: int, things: list[str]) -> WorkerMetrics:
    """A worker that ran ``things``: some acked with a gap, a failover, shadow traffic, zero counts kept."""
    metrics = WorkerMetrics(devices=len(things), connected=len(things), started=len(things))
    for n, thing in enumerate(things):
        sent = 10 + n + index
        metrics.sent += sent
        metrics.sent_by_device[thing] = sent
        acked = SeqSet(s for s in range(1, sent + 1) if s != 3)  # seq 3 still in the outbox
        metrics.acked_seqs[thing] = acked
        metrics.acked += len(acked)
        metrics.ack_moves[thing] = [(1.7e9 + n, "eu-west-1"), (1.7e9 + 30 + n, "us-east-1")]
        for s in range(1, sent + 1):
            metrics.ack_ms.add(1.5 + s + index)
        metrics.connect_ms.add(20.0 + n)
    metrics.provision_ms = _hist(100.0 * (index + 1))
    metrics.connects = len(things) + index
    metrics.failed = Counter({"overflow": index})
    metrics.errors = Counter({"connect: reset": 2 + index, "publish: overflow": index})
    metrics.disconnects = Counter({"reset": 1})
    metrics.failovers = Counter({"eu-west-1->us-east-1": len(things)})
    metrics.failbacks = index
    metrics.by_region = {
        "eu-west-1": Counter({"acked": 5 + index, "connected": 0, "connects": len(things)}),
        "us-east-1": Counter({"acked": 7, "connected": len(things), "connects": len(things)}),
    }
    metrics.outbox_depth = len(things)
    metrics.cpu_s = 1.25 + index
    metrics.steady_cpu_s = 0.5 + index
    metrics.steady_wall_s = 4.0 + index
    metrics.max_rss_kb = 50_000 + index
    metrics.shadow = Counter({"get": len(things), "update": 2 * len(things), "report_failures": 0})
    metrics.account_rate_waits = index
    return metrics


def ingest(region: str, things: list[str], *, skip: int = 0, trouble: bool = False) -> dict[str, Any]:
    """One region's ingest figures: every acked pair but seq ``skip`` of the first thing; one duplicate."""
    by_device = {}
    for n, thing in enumerate(things):
        seqs = SeqSet(s for s in range(1, 11) if s != 3 and not (n == 0 and s == skip))
        by_device[thing] = seqs
    by_device[things[0]].add(4)  # stored twice
    return {
        "region": region,
        "received": 99,
        "ingested": sum(len(s) for s in by_device.values()),
        "duplicates": 1,
        "rejected": {"schema": 2} if trouble else {},
        "failed_batches": 0,
        "not_stored": 3 if trouble else 0,
        "hourly_not_stored": 0,
        "store_error": None,
        "e2e": _hist(*(5.0 + i for i in range(len(things) * 9))),
        "by_device": by_device,
        "broker_dropped": 1 if trouble else 0,
        "failures": ["ingest eu-west-1: disk full"] if trouble else [],
        "cloud_failures": 1 if trouble else 0,
    }


def operator() -> dict[str, Any]:
    return {
        "changes": 4,
        "devices_changed": 3,
        "reconciled": 2,
        "pending": 1,
        "pending_devices": ["site-0001-b1-r01-a02"],
        "errors": {"ShadowRejected": 0},
        "lag": _hist(1000.0, 2000.0),
    }


CONFIG = {"shape": {"sites": 2}, "speed": 10.0, "workers": 2, "shard": "0/1", "target": "local-cloud"}
CHAOS = [{"action": "kill", "region": "eu-west-1", "at_s": 4.0, "done_at_s": 4.01, "epoch": 1.7e9 + 4}]
SHARD_A = ["site-0001-b1-r01-a01", "site-0001-b1-r01-a02"]
SHARD_B = ["site-0002-b1-r01-a01", "site-0002-b1-r01-a02", "site-0002-b1-r01-a03"]
