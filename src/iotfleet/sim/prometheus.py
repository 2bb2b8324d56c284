"""Live Prometheus metrics of a run (``iotfleet simulate --metrics-port P``), with prometheus_client.

Served from the parent process while the run goes on, from the workers' snapshots (sent every second)
and, where the cloud is the embedded local one, its ingest. Every series is labelled with the shard
(``shard="i"``) so a dashboard sums the pods of a Kubernetes Indexed Job:

- ``iotfleet_messages_sent_total``, ``iotfleet_messages_acked_total``;
- ``iotfleet_messages_failed_total{reason}`` (given up on: the outbox overflowed, expired, ...);
- ``iotfleet_devices_connected{region}``;
- ``iotfleet_publish_ack_seconds`` and ``iotfleet_connect_seconds``, histograms;
- ``iotfleet_failovers_total{from,to}``;
- ``iotfleet_ingested_total{region}``, where the cloud is local (embedded in the run).

The histograms come from the run's own log-bucketed histograms (:class:`~iotfleet.metrics.Histogram`,
~3% buckets): a sample is counted under ``le`` when its bucket's upper edge is at most ``le``, so a
count may sit one bucket (~3%) higher than it would in a native Prometheus histogram, never lower.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from iotfleet.metrics import Histogram

__all__ = ["BUCKETS_S", "MetricsServer", "RunMetrics"]

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RunMetrics(Collector):
    """The metrics of one shard's run, read at each scrape from ``snapshots`` (worker index -> its last
    snapshot) and ``ingested`` (region -> messages the local cloud stored; None where not local)."""

    def __init__(
        self,
        shard: int,
        snapshots: Callable[[], Mapping[int, Mapping[str, Any]]],
        ingested: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.shard = str(shard)
        self.snapshots = snapshots
        self.ingested = ingested

    def collect(self) -> Iterator[Metric]:
        snapshots = list(self.snapshots().values())
        labels = ["shard"]
        for name, key, what in (
            ("iotfleet_messages_sent", "sent", "Messages the devices queued to send."),
            ("iotfleet_messages_acked", "acked", "Messages acknowledged by the broker (PUBACK)."),
        ):
            counter = CounterMetricFamily(name, what, labels=labels)
            counter.add_metric([self.shard], float(sum(s.get(key, 0) for s in snapshots)))
            yield counter
        failed = CounterMetricFamily(
            "iotfleet_messages_failed", "Messages given up on, by reason.", labels=[*labels, "reason"]
        )
        for reason, n in sorted(_summed(snapshots, "failed").items()):
            failed.add_metric([self.shard, reason], float(n))
        yield failed
        connected = GaugeMetricFamily(
            "iotfleet_devices_connected", "Devices connected, by region.", labels=[*labels, "region"]
        )
        for region, n in sorted(_summed(snapshots, "by_region").items()):
            connected.add_metric([self.shard, region], float(n))
        yield connected
        failovers = CounterMetricFamily(
            "iotfleet_failovers", "Devices that moved to another region.", labels=[*labels, "from", "to"]
        )
        for route, n in sorted(_summed(snapshots, "failovers").items()):
            source, _, target = route.partition("->")
            failovers.add_metric([self.shard, source, target], float(n))
        yield failovers
        for name, key, what in (
            ("iotfleet_publish_ack_seconds", "ack_histogram", "Publish to PUBACK, seconds."),
            ("iotfleet_connect_seconds", "connect_histogram", "CONNECT to CONNACK (with TLS), seconds."),
        ):
            yield self._histogram(name, what, snapshots, key)
        if self.ingested is not None:
            ingested = CounterMetricFamily(
                "iotfleet_ingested", "Messages the local cloud's ingest stored, by region.", labels=[*labels, "region"]
            )
            for region, n in sorted(self.ingested().items()):
                ingested.add_metric([self.shard, region], float(n))
            yield ingested

    def _histogram(self, name: str, what: str, snapshots: list[Mapping[str, Any]], key: str) -> HistogramMetricFamily:
        merged = Histogram()
        for snapshot in snapshots:
            if key in snapshot:
                merged.merge(Histogram.from_dict(snapshot[key]))
        family = HistogramMetricFamily(name, what, labels=["shard"])
        family.add_metric([self.shard], prometheus_buckets(merged), merged.total / 1000)
        return family


def prometheus_buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs in seconds, ``+Inf`` last, of a histogram in milliseconds."""
    edges = sorted((2 ** (index / histogram.precision), n) for index, n in histogram.buckets.items())
    buckets, seen, i = [], 0, 0
    for le in BUCKETS_S:
        while i < len(edges) and edges[i][0] <= le * 1000:
            seen += edges[i][1]
            i += 1
        buckets.append((f"{le:g}", float(seen)))
    buckets.append(("+Inf", float(histogram.count)))
    return buckets


def _summed(snapshots: list[Mapping[str, Any]], key: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for snapshot in snapshots:
        total.update(snapshot.get(key, {}))
    return total


class MetricsServer:
    """prometheus_client's HTTP server for one :class:`RunMetrics`, on ``host:port`` (port 0: any free
    one, see :attr:`port`), in a daemon thread; :meth:`stop` shuts it down."""

    def __init__(self, metrics: RunMetrics, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scraped by Prometheus from other pods
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(metrics)
        self.host, self.requested_port = host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.requested_port

    def start(self) -> MetricsServer:
        self._server, self._thread = start_http_server(self.requested_port, self.host, registry=self.registry)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
