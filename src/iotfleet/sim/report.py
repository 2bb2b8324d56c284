"""The simulator's report: one JSON document, mergeable across shards, and a human summary.

Required keys (the issue's contract): ``devices``, ``duration_s``, ``sent``, ``acked``, ``ingested``,
``lost``, ``duplicates``, ``throughput_msgs_per_s``, ``latency_ms`` (``connect``, ``ack``, ``e2e``, each
with ``p50``, ``p95``, ``p99``, ``max``), ``errors`` and ``regions``. ``latency_ms.ack_steady`` is the ack
latency of each worker's steady window alone (its whole seconds from 2-3 s after it started its last
device to its stop, the window of ``resources.steady_cpu_core_fraction``): the whole run's ``ack``
includes the ramp, whose handshakes hold the event loop and make its tail, and the drain after the stop.
``raw`` keeps what merging needs (histograms and per-device sequence sets), so ``iotfleet report merge``
gives the totals one run would.

Definitions: ``acked`` counts distinct (device, sequence) pairs acknowledged; ``ingested`` distinct pairs
stored by any region's ingest; ``lost`` pairs acknowledged but never ingested (the at-least-once
contract broken); ``unacked`` pairs sent but still unacknowledged at the end (left in the outbox);
``duplicates`` deliveries ingested more than once (within a region, and the same pair in two regions).

``shadow`` counts the devices' shadow traffic (acknowledged requests by operation, deltas applied,
resyncs) and, against the local cloud, the operator's desired changes: how many devices reported them
back (``reconciled``) and which did not (``pending``). ``latency_ms.shadow_sync`` runs from a desired
change to the device's report, from shadow metadata timestamps (1 s resolution).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotfleet.errors import ConfigError
from iotfleet.metrics import Histogram, SeqSet, Timeline
from iotfleet.sim.ota import OtaFigures
from iotfleet.sim.runner import WorkerMetrics

__all__ = [
    "Raw",
    "Report",
    "ThresholdCheck",
    "load_report",
    "merge_reports",
    "shard_problems",
    "summary_lines",
    "threshold_breaches",
    "threshold_checks",
]

REQUIRED = ("devices", "duration_s", "sent", "acked", "ingested", "lost", "duplicates", "throughput_msgs_per_s")


HISTOGRAMS = ("connect", "ack", "ack_steady", "e2e", "provision", "shadow_sync")
COUNTS = ("sent", "errors", "failed", "rejects", "failovers")


def _copy(seqs: SeqSet) -> SeqSet:
    return SeqSet.from_dict(seqs.to_dict())


def _union(target: dict[str, SeqSet], source: Mapping[str, SeqSet]) -> None:
    for thing, seqs in source.items():
        if thing in target:
            target[thing].update(seqs)
        else:
            target[thing] = _copy(seqs)


def _summed(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Key-wise sum that keeps zero counts (``Counter + Counter`` drops them: 0 would read as unmeasured)."""
    total = Counter(a)
    total.update(b)
    return dict(total)


def _add_shadow(total: dict[str, Any], part: Mapping[str, Any]) -> None:
    """Add one run's (or shard's) raw shadow figures to ``total``."""
    total["device"] = _summed(total.get("device", {}), part.get("device", {}))
    operator = part.get("operator")
    if operator is None:
        return
    mine = total.get("operator") or {"changes": 0, "devices_changed": 0, "reconciled": 0, "pending": 0}
    for key in ("changes", "devices_changed", "reconciled", "pending"):
        mine[key] = mine.get(key, 0) + operator[key]
    mine["pending_devices"] = [*mine.get("pending_devices", []), *operator.get("pending_devices", [])][:20]
    mine["errors"] = _summed(mine.get("errors", {}), operator.get("errors", {}))
    total["operator"] = mine


FAULTS = ("kill", "blackhole")


def _region_at(moves: Sequence[tuple[float, str]], epoch: float) -> str | None:
    """The region a device's acknowledgements came from at ``epoch``: that of its last move before."""
    region = None
    for at, moved_to in moves:
        if at > epoch:
            break
        region = moved_to
    return region


def _first_move(moves: Sequence[tuple[float, str]], after: float, region: str, *, into: bool) -> float | None:
    """When, at or after ``after``, a device's acknowledgements first came from ``region`` (``into``), or
    from any other region (not ``into``)."""
    return next((at for at, moved_to in moves if at >= after and (moved_to == region) == into), None)


def _spread(seconds: Sequence[float]) -> dict[str, float] | None:
    """p50, p95, p99 and max of ``seconds`` (the value at each rank, none interpolated); None if empty."""
    if not seconds:
        return None
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 3)

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 3)}


def chaos_samples(events: Sequence[Mapping[str, Any]], raw: Raw) -> list[tuple[dict[str, Any], list[float]]]:
    """Each chaos event with what it did, from the devices' acknowledgement moves (:attr:`Raw.ack_moves`),
    and the seconds it was measured in: one per device that moved (RTOs of a fault, failbacks of a restore).

    A fault (kill, blackhole) of region R at time T: ``devices_affected`` are the devices whose publishes
    R was acknowledging at T; ``rto_s`` spreads, over those that moved (``failed_over``), the time from T
    to their first publish acknowledged elsewhere; ``lost`` counts what those devices had acknowledged
    and the cloud never stored (None when the ingest was not measured). A restore of R at T: the devices
    the last fault of R had affected, and for those that came back (``devices_returned``) the time from T
    to their first publish acknowledged by R again (``failback_s``).
    """
    effects: list[tuple[dict[str, Any], list[float]]] = []
    last_fault: dict[str, list[str]] = {}  # region -> the devices its last fault affected
    for event in sorted(events, key=lambda e: e.get("epoch", 0.0)):
        entry, epoch, region = dict(event), event.get("epoch"), event["region"]
        if epoch is None:
            effects.append((entry, []))
            continue
        moves = raw.ack_moves
        if event["action"] in FAULTS:
            affected = [t for t, m in moves.items() if _region_at(m, epoch) == region]
            last_fault[region] = affected
            seconds = [
                at - epoch for t in affected if (at := _first_move(moves[t], epoch, region, into=False)) is not None
            ]
            lost = None
            if raw.ingested is not None:
                stored = raw.ingested
                lost = sum(raw.acked[t].missing_from(stored.get(t, SeqSet())) for t in affected if t in raw.acked)
            entry.update(devices_affected=len(affected), failed_over=len(seconds), rto_s=_spread(seconds), lost=lost)
        else:
            away = last_fault.pop(region, [])
            seconds = [
                at - epoch
                for t in away
                if t in moves and (at := _first_move(moves[t], epoch, region, into=True)) is not None
            ]
            entry.update(devices_away=len(away), devices_returned=len(seconds), failback_s=_spread(seconds))
        effects.append((entry, seconds))
    return effects


def chaos_effects(events: Sequence[Mapping[str, Any]], raw: Raw) -> list[dict[str, Any]]:
    """Each chaos event with what it did (:func:`chaos_samples` without the samples)."""
    return [entry for entry, _ in chaos_samples(events, raw)]


@dataclass
class CommandFigures:
    """Commands from the cloud, in the form that merges exactly: ids sent (by the operator) and received
    (by the devices, each once), the delivery latency, and counts by command."""

    sent: SeqSet = field(default_factory=SeqSet)
    received: SeqSet = field(default_factory=SeqSet)
    latency: Histogram = field(default_factory=Histogram)  # ms, from the operator's send to the device
    by_command: Counter[str] = field(default_factory=Counter)  # sent
    handled: Counter[str] = field(default_factory=Counter)  # received and acted on, by the devices
    not_sent: int = 0  # the operator could not send them (the device's region was down)

    def merge(self, other: CommandFigures) -> None:
        self.sent.update(other.sent)
        self.received.update(other.received)
        self.latency.merge(other.latency)
        self.by_command.update(other.by_command)
        self.handled.update(other.handled)
        self.not_sent += other.not_sent

    def summary(self) -> dict[str, Any]:
        lost = self.sent.missing_from(self.received)
        return {
            "sent": len(self.sent),
            "delivered": len(self.sent) - lost,
            "lost": lost,
            "not_sent": self.not_sent,
            "by_command": dict(self.by_command),
            "handled": dict(self.handled),
            "latency_ms": self.latency.summary(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent.to_dict(),
            "received": self.received.to_dict(),
            "latency": self.latency.to_dict(),
            "by_command": dict(self.by_command),
            "handled": dict(self.handled),
            "not_sent": self.not_sent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CommandFigures:
        return cls(
            SeqSet.from_dict(data["sent"]),
            SeqSet.from_dict(data["received"]),
            Histogram.from_dict(data["latency"]),
            Counter(data["by_command"]),
            Counter(data["handled"]),
            int(data["not_sent"]),
        )


@dataclass
class Raw:
    """What a report is made of, in the form that merges exactly: per-device sequence sets, histograms,
    counts and totals. A run's raw figures are the merge of its parts (each worker, each region's
    ingest, the operator); a merged report's are the merge of its shards'.

    ``ingested`` is None where nothing measured the ingest (a real target): loss is then unknowable.
    """

    acked: dict[str, SeqSet] = field(default_factory=dict)
    ingested: dict[str, SeqSet] | None = None
    counts: dict[str, Counter[str]] = field(default_factory=lambda: {k: Counter() for k in COUNTS})
    histograms: dict[str, Histogram] = field(default_factory=lambda: {k: Histogram() for k in HISTOGRAMS})
    regions: dict[str, Counter[str]] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=lambda: {"steady_wall_s": 0.0})  # summed; the wall: max
    ingest_duplicates: int = 0
    # thing -> [(epoch s, region)]: when its acknowledgements began to come from each region in turn
    ack_moves: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    shadow: dict[str, Any] = field(default_factory=lambda: {"device": {}, "operator": None})
    commands: CommandFigures | None = None  # None: the run sent no command
    timeline: Timeline = field(default_factory=Timeline)  # per second: sent, acked, errors, by region
    ota: OtaFigures | None = None  # None: the run rolled out no firmware

    # ------------------------------------------------------------------ the parts of a run

    @classmethod
    def of_worker(cls, w: WorkerMetrics) -> Raw:
        raw = cls(acked=w.acked_seqs, ack_moves=w.ack_moves, shadow={"device": dict(w.shadow), "operator": None})
        counts = raw.counts
        counts["sent"].update(w.sent_by_device)
        counts["errors"].update(w.errors)
        counts["failed"].update(w.failed)
        counts["failovers"].update(w.failovers)
        for name, histogram in (
            ("connect", w.connect_ms),
            ("ack", w.ack_ms),
            ("ack_steady", w.steady_acks()),
            ("provision", w.provision_ms),
        ):
            raw.histograms[name] = histogram
        raw.totals = {
            "steady_wall_s": w.steady_wall_s,
            "devices": w.devices,
            "connects": w.connects,
            "failbacks": w.failbacks,
            "unacked": w.outbox_depth,
            "worker_cpu_s": w.cpu_s,
            "steady_cpu_s": w.steady_cpu_s,
            "worker_rss_kb": w.max_rss_kb,
            "account_rate_waits": w.account_rate_waits,
        }
        raw.regions = {region: Counter(dict(counters)) for region, counters in w.by_region.items()}
        raw.timeline = w.timeline
        if w.ota.targets:
            raw.ota = w.ota
        if w.commands_received or w.commands_handled:
            raw.commands = CommandFigures(
                received=w.commands_received, latency=w.command_ms, handled=Counter(w.commands_handled)
            )
        return raw

    @classmethod
    def of_ingest(cls, stats: Mapping[str, Any]) -> Raw:
        """One region's ingest (LocalCloud.ingest_stats); what the cloud lost or could not do is shown
        only when it happened."""
        raw = cls(ingested=dict(stats["by_device"]), ingest_duplicates=stats["duplicates"])
        raw.histograms["e2e"] = stats["e2e"]
        raw.counts["rejects"].update(stats["rejected"])
        counts = Counter({"ingested": stats["ingested"], "rejected": sum(stats["rejected"].values())})
        trouble = {"not_stored": stats.get("not_stored", 0), "broker_dropped": stats.get("broker_dropped", 0)}
        counts.update({k: v for k, v in {**trouble, "failures": len(stats.get("failures", []))}.items() if v})
        presence = stats.get("presence", {})  # IoT Core's lifecycle events, as a subscriber received them
        lifecycle = {
            "lifecycle_connected": presence.get("connected", 0),
            "lifecycle_disconnected": sum(n for kind, n in presence.items() if kind.startswith("disconnected")),
        }
        counts.update({k: v for k, v in lifecycle.items() if v})
        if "cpu_s" in stats:  # the ingest's own processes (--ingest-workers): its CPU, for CPU per message
            counts["ingest_cpu_ms"] = round(stats["cpu_s"] * 1000)
        counts.update({f"throttled_{kind}": n for kind, n in stats.get("throttled", {}).items() if n})
        rules = stats.get("rules", {})
        routed = {
            "basic_ingest": stats.get("basic_ingest", 0),
            "rule_not_found": rules.get("rule_not_found", 0),
            "republished": rules.get("republished", 0),
        }
        counts.update({k: v for k, v in routed.items() if v})
        raw.regions = {stats["region"]: counts}
        for second, n in stats.get("per_second", {}).items():
            raw.timeline.count(f"ingested:{stats['region']}", n, at=float(second))
        return raw

    @classmethod
    def of_commander(cls, sent: Mapping[str, Any]) -> Raw:
        """The commands the operator sent (:meth:`~iotfleet.sim.commands.Commander.figures`)."""
        return cls(
            commands=CommandFigures(
                sent=sent["sent"], by_command=Counter(sent["by_command"]), not_sent=sent["not_sent"]
            )
        )

    @classmethod
    def of_operator(cls, operator: Mapping[str, Any]) -> Raw:
        """The operator's desired-state changes and how they were reconciled (``lag``: the sync histogram)."""
        raw = cls()
        raw.histograms["shadow_sync"] = operator["lag"]
        _add_shadow(raw.shadow, {"operator": {k: v for k, v in operator.items() if k != "lag"}})
        return raw

    # ------------------------------------------------------------------ merging

    @classmethod
    def merged(cls, parts: Iterable[Raw]) -> Raw:
        """The union of ``parts``; none of them is changed."""
        total = cls()
        for part in parts:
            total.merge(part)
        return total

    def merge(self, other: Raw) -> Raw:
        """Add ``other`` in place: sets unite, histograms and counts add, ``steady_wall_s`` takes the max."""
        _union(self.acked, other.acked)
        if other.ingested is not None:
            if self.ingested is None:
                self.ingested = {}
            _union(self.ingested, other.ingested)
        for key, counter in other.counts.items():
            self.counts.setdefault(key, Counter()).update(counter)
        for name, histogram in other.histograms.items():
            self.histograms.setdefault(name, Histogram(histogram.precision)).merge(histogram)
        for region, counts in other.regions.items():
            self.regions.setdefault(region, Counter()).update(counts)
        for key, value in other.totals.items():
            mine = self.totals.get(key, 0)
            self.totals[key] = max(mine, value) if key == "steady_wall_s" else mine + value
        self.ingest_duplicates += other.ingest_duplicates
        self.ack_moves.update(other.ack_moves)  # a thing runs in one shard
        _add_shadow(self.shadow, other.shadow)
        if other.commands is not None:
            if self.commands is None:
                self.commands = CommandFigures()
            self.commands.merge(other.commands)
        if other.ota is not None:
            if self.ota is None:
                self.ota = OtaFigures()
            self.ota.merge(other.ota)
        self.timeline.merge(other.timeline)
        return self

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "acked": {k: v.to_dict() for k, v in self.acked.items()},
            "ingested": None if self.ingested is None else {k: v.to_dict() for k, v in self.ingested.items()},
            "sent": dict(self.counts["sent"]),
            "histograms": {k: v.to_dict() for k, v in self.histograms.items()},
            "errors": dict(self.counts["errors"]),
            "failed": dict(self.counts["failed"]),
            "rejects": dict(self.counts["rejects"]),
            "regions": {k: dict(v) for k, v in self.regions.items()},
            "failovers": dict(self.counts["failovers"]),
            "totals": dict(self.totals),
            "ingest_duplicates": self.ingest_duplicates,
            "ack_moves": {thing: [list(move) for move in moves] for thing, moves in self.ack_moves.items()},
            "shadow": self.shadow,
            **({} if self.commands is None else {"commands": self.commands.to_dict()}),
            **({"timeline": self.timeline.to_dict()} if self.timeline else {}),
            **({} if self.ota is None else {"ota": self.ota.to_dict()}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Raw:
        def seqs(part: Mapping[str, Any]) -> dict[str, SeqSet]:
            return {thing: SeqSet.from_dict(d) for thing, d in part.items()}

        return cls(
            acked=seqs(data["acked"]),
            ingested=None if data["ingested"] is None else seqs(data["ingested"]),
            counts={k: Counter(data[k]) for k in COUNTS},
            histograms={k: Histogram.from_dict(v) for k, v in data["histograms"].items()},
            regions={k: Counter(v) for k, v in data["regions"].items()},
            totals=dict(data["totals"]),
            ingest_duplicates=int(data["ingest_duplicates"]),
            ack_moves={t: [(float(at), str(region)) for at, region in m] for t, m in data.get("ack_moves", {}).items()},
            shadow=data.get("shadow", {"device": {}, "operator": None}),
            commands=CommandFigures.from_dict(data["commands"]) if "commands" in data else None,
            timeline=Timeline.from_dict(data.get("timeline", {})),
            ota=OtaFigures.from_dict(data["ota"]) if "ota" in data else None,
        )


@dataclass
class Report:
    """One run's (or a merge of shards') report: its raw figures, how long it ran, what it was asked to do
    and the chaos it went through. :meth:`to_dict` computes every headline figure from ``raw``."""

    raw: Raw
    duration_s: float
    config: dict[str, Any] = field(default_factory=dict)
    chaos: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of_run(
        cls,
        *,
        workers: Sequence[WorkerMetrics],
        ingest: Sequence[Mapping[str, Any]] | None,
        operator: Mapping[str, Any] | None = None,
        commands: Mapping[str, Any] | None = None,
        ota: OtaFigures | None = None,
        duration_s: float,
        config: Mapping[str, Any],
        chaos: Sequence[Mapping[str, Any]] = (),
    ) -> Report:
        """A run's report: the merge of its workers', its regions' ingest, its operator's figures and the
        commands it sent."""
        parts = [Raw.of_worker(w) for w in workers]
        parts += [Raw.of_ingest(stats) for stats in ingest or ()]
        if operator is not None:
            parts.append(Raw.of_operator(operator))
        if commands is not None:
            parts.append(Raw.of_commander(commands))
        if ota is not None:
            parts.append(Raw(ota=ota))
        raw = Raw.merged(parts)
        if ingest is not None and raw.ingested is None:
            raw.ingested = {}  # measured, and nothing arrived
        return cls(raw, round(duration_s, 3), dict(config), [dict(event) for event in chaos])

    @classmethod
    def merge(cls, reports: Iterable[Report]) -> Report:
        """One report from shard reports: sums, unions of sequence sets, merged histograms. A shard that
        measured no ingest makes the merge's ingest (and so its loss) unknown."""
        items = list(reports)
        if not items:
            raise ConfigError("name at least one report to merge")
        raw = Raw.merged(r.raw for r in items)
        if any(r.raw.ingested is None for r in items):
            raw.ingested = None
        shards = [r.config.get("shard") for r in items]
        config = {"merged_from": len(items), "shards": shards}
        chaos = next((r.chaos for r in items if r.chaos), [])  # the shard that ran the chaos schedule
        return cls(raw, max(r.duration_s for r in items), config, [dict(event) for event in chaos])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        return cls(
            Raw.from_dict(data["raw"]),
            float(data["duration_s"]),
            dict(data.get("config", {})),
            list(data.get("chaos", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: the headline figures (module docstring) computed from ``raw``, and ``raw``."""
        raw, totals, counts = self.raw, self.raw.totals, self.raw.counts
        sent = sum(counts["sent"].values())
        failed = sum(counts["failed"].values())
        acked = sum(len(s) for s in raw.acked.values())
        devices = totals.get("devices", 0)
        report: dict[str, Any] = {
            "duration_s": self.duration_s,
            "config": self.config,
            "chaos": chaos_effects(self.chaos, raw),
            "raw": raw.to_dict(),
            "devices": devices,
            "sent": sent,
            "acked": acked,
            "unacked": max(0, sent - acked - failed),
            "failed": failed,
            "throughput_msgs_per_s": round(acked / self.duration_s, 1) if self.duration_s else 0.0,
            "latency_ms": {k: v.summary() for k, v in raw.histograms.items()},
            "errors": {"total": sum(counts["errors"].values()), **counts["errors"]},
            "failovers": sum(counts["failovers"].values()),
            "failovers_by_route": dict(counts["failovers"]),
            "failbacks": totals.get("failbacks", 0),
            "reconnects": max(0, totals.get("connects", 0) - devices),
            "account_rate_waits": totals.get("account_rate_waits", 0),
            "regions": {k: dict(v) for k, v in raw.regions.items()},
            "rejects": dict(counts["rejects"]),
            "shadow": raw.shadow,
            **({} if raw.commands is None else {"commands": raw.commands.summary()}),
            **({} if raw.ota is None else {"ota": raw.ota.summary()}),
            **({"timeseries": raw.timeline.rows(sorted(raw.regions))} if raw.timeline else {}),
            "resources": {
                "worker_cpu_s": round(totals.get("worker_cpu_s", 0), 3),
                "steady_cpu_core_fraction": round(totals["steady_cpu_s"] / totals["steady_wall_s"], 4)
                if totals.get("steady_wall_s")
                else None,
                "worker_rss_kb": totals.get("worker_rss_kb", 0),
                "rss_kb_per_device": round(totals.get("worker_rss_kb", 0) / max(1, devices), 1),
            },
        }
        ingested = raw.ingested
        if ingested is None:
            report.update({"ingested": None, "lost": None, "duplicates": None, "out_of_order": None})
        else:
            report["ingested"] = sum(len(s) for s in ingested.values())
            report["lost"] = sum(s.missing_from(ingested.get(t, SeqSet())) for t, s in raw.acked.items())
            report["duplicates"] = raw.ingest_duplicates + sum(s.duplicates for s in ingested.values())
            report["out_of_order"] = sum(s.out_of_order for s in ingested.values())
        return report


RAW_KEYS = ("acked", "ingested", "histograms", "regions", "ingest_duplicates", "totals", "sent", "errors", "failed")


def load_report(path: Path) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read report {path}: {exc}") from exc
    if not isinstance(report, dict) or not isinstance(report.get("raw"), dict):
        raise ConfigError(f"{path} is not an iotfleet simulate report (no 'raw' section): write it with --report")
    missing = sorted({*RAW_KEYS} - set(report["raw"])) + (["duration_s"] if "duration_s" not in report else [])
    if missing:
        raise ConfigError(
            f"{path}: the report lacks {', '.join(missing)}: it is damaged or from another iotfleet version; "
            "write it again with this version's --report"
        )
    return report


def shard_problems(reports: Sequence[Mapping[str, Any]], names: Sequence[str]) -> tuple[list[str], list[str]]:
    """What is wrong with a set of shard reports before they are merged: the shards missing (``i/n`` by
    index, from the ``n`` they were run with) and the ones given twice (a shard counted twice would
    count its devices twice), each naming the files; also reports of different splits (``n``)."""
    by_index: dict[int, list[str]] = {}
    splits: dict[int, list[str]] = {}
    for report, name in zip(reports, names, strict=True):
        shard = str(report.get("config", {}).get("shard", "0/1"))
        index, _, count = shard.partition("/")
        if not (index.isdigit() and count.isdigit()):
            continue  # a merged report (no shard of its own) or an older one: nothing to check
        by_index.setdefault(int(index), []).append(name)
        splits.setdefault(int(count), []).append(name)
    problems = []
    if len(splits) > 1:
        problems.append(
            "the reports come from different splits: "
            + "; ".join(f"n={n}: {', '.join(files)}" for n, files in sorted(splits.items()))
        )
    duplicates = [
        f"shard {i} given {len(files)} times ({', '.join(files)})"
        for i, files in sorted(by_index.items())
        if len(files) > 1
    ]
    total = max(splits) if splits else 0
    missing = [f"shard {i}/{total}" for i in range(total) if i not in by_index]
    return missing, problems + duplicates


def merge_reports(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One report's JSON document from shard reports' (:meth:`Report.merge`)."""
    return Report.merge(Report.from_dict(r) for r in reports).to_dict()


@dataclass(frozen=True)
class ThresholdCheck:
    """One threshold and how the run did: ``name`` (e.g. ``lost <= 0``), whether it ``held``, and what
    was measured (``message``: the breach, or the figure that held)."""

    name: str
    held: bool
    message: str


def threshold_checks(
    report: Mapping[str, Any], *, max_lost: int = 0, max_error_rate: float | None = None
) -> list[ThresholdCheck]:
    """Every threshold of the run, held or breached. Loss unknown (no ingest measured) holds."""
    lost = report.get("lost")
    checks = [
        ThresholdCheck(
            f"lost <= {max_lost}",
            lost is None or lost <= max_lost,
            "loss unknown: no ingest measured"
            if lost is None
            else f"lost {lost}" + (f" > {max_lost}" if lost > max_lost else ""),
        )
    ]
    if max_error_rate is not None:
        rate = report["errors"]["total"] / report["sent"] if report["sent"] else 0.0
        breached = rate > max_error_rate
        checks.append(
            ThresholdCheck(
                f"error rate <= {max_error_rate}",
                not breached,
                f"error rate {rate:.4f}" + (f" > {max_error_rate}" if breached else ""),
            )
        )
    return checks


def threshold_breaches(
    report: Mapping[str, Any], *, max_lost: int = 0, max_error_rate: float | None = None
) -> list[str]:
    """The thresholds the run breached (empty when all hold)."""
    checks = threshold_checks(report, max_lost=max_lost, max_error_rate=max_error_rate)
    return [check.message for check in checks if not check.held]


def summary_lines(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of the human summary table."""

    def lat(name: str) -> str:
        s = report["latency_ms"].get(name, {"count": 0})  # ack_steady: not in reports of older versions
        if not s["count"]:
            return "-"
        return f"p50 {s['p50']:.1f}  p95 {s['p95']:.1f}  p99 {s['p99']:.1f}  max {s['max']:.1f}"

    def sync_s() -> str:
        s = report["latency_ms"].get("shadow_sync", {"count": 0})
        if not s["count"]:
            return "no change reported back"
        return f"sync p50 {s['p50'] / 1000:.0f} s, p95 {s['p95'] / 1000:.0f} s, max {s['max'] / 1000:.0f} s (1 s steps)"

    none = "n/a (no ingest: not the local cloud)"
    rows = [
        ("devices", f"{report['devices']:,}"),
        ("duration", f"{report['duration_s']:.1f} s"),
        ("sent / acked", f"{report['sent']:,} / {report['acked']:,}"),
        ("ingested", none if report["ingested"] is None else f"{report['ingested']:,}"),
        ("lost", none if report["lost"] is None else f"{report['lost']:,}"),
        ("duplicates", none if report["duplicates"] is None else f"{report['duplicates']:,}"),
        ("unacked at end", f"{report['unacked']:,}"),
        ("throughput", f"{report['throughput_msgs_per_s']:,.1f} msg/s"),
        ("connect ms", lat("connect")),
        ("ack ms", lat("ack")),
        ("ack ms, steady", lat("ack_steady")),
        ("end-to-end ms", lat("e2e")),
        ("errors", f"{report['errors']['total']:,}"),
        ("failovers / failbacks", f"{report['failovers']} / {report['failbacks']}"),
    ]
    shadow = report.get("shadow") or {}
    device = shadow.get("device", {})
    if device:
        rows.append(
            (
                "shadow (devices)",
                f"{device.get('update', 0):,} updates, {device.get('get', 0):,} gets, "
                f"{device.get('applied', 0):,} desired values applied, {device.get('resyncs', 0):,} resyncs",
            )
        )
    operator = shadow.get("operator")
    if operator:
        rows.append(
            (
                "shadow (operator)",
                f"{operator['changes']:,} desired changes to {operator['devices_changed']:,} devices: "
                f"{operator['reconciled']:,} reconciled, {operator['pending']:,} pending; {sync_s()}",
            )
        )
    for event in report.get("chaos", []):
        rows.append((f"chaos {event['action']} {event['region']}", _chaos_line(event)))
    commands = report.get("commands")
    if commands:
        latency = commands["latency_ms"]
        rows.append(
            (
                "commands",
                f"{commands['sent']:,} sent, {commands['delivered']:,} delivered, {commands['lost']:,} lost "
                f"({', '.join(f'{k} {v:,}' for k, v in sorted(commands['by_command'].items()))}); "
                f"latency ms p50 {latency['p50']}  p99 {latency['p99']}  max {latency['max']}",
            )
        )
    ota = report.get("ota")
    if ota:
        rows.append(("firmware rollout", _ota_line(ota)))
    if report.get("rejects"):
        rows.append(("ingest rejects", ", ".join(f"{k}: {v}" for k, v in report["rejects"].items())))
    for region, counts in sorted(report["regions"].items()):
        rows.append((f"region {region}", ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))))
    return rows


def _ota_line(ota: Mapping[str, Any]) -> str:
    """The rollout's outcome, for the summary table."""
    if ota.get("error"):
        return f"{ota['version']}: did not start: {ota['error']}"
    times = ", ".join(f"{share} in {'-' if s is None else f'{s:g} s'}" for share, s in ota["time_to_s"].items())
    failures = ", ".join(f"{k} {v:,}" for k, v in sorted(ota["failures"].items()))
    aborted = ota.get("aborted")
    abort = "" if not aborted else f"; ABORTED in {aborted['region']} at {aborted['at_s']} s"
    return (
        f"{ota['version']}: {ota['updated']:,} of {ota['targets']:,} updated, {ota['failed']:,} failed"
        f"{f' ({failures})' if failures else ''}, {ota['not_updated']:,} not updated; {times}{abort}"
    )


def _chaos_line(event: Mapping[str, Any]) -> str:
    """One chaos event's effects, for the summary table."""
    at = f"at {event.get('done_at_s', event.get('at_s', 0.0)):.1f} s"

    def spread(figures: Mapping[str, float] | None) -> str:
        return "none" if figures is None else f"p50 {figures['p50']}  p99 {figures['p99']}  max {figures['max']}"

    if "devices_affected" in event:
        lost = "unknown" if event["lost"] is None else f"{event['lost']:,}"
        return (
            f"{at}: {event['devices_affected']:,} devices there, {event['failed_over']:,} failed over; "
            f"RTO s {spread(event['rto_s'])}; lost {lost}"
        )
    if "devices_away" in event:
        return (
            f"{at}: {event['devices_returned']:,} of {event['devices_away']:,} came back; "
            f"failback s {spread(event['failback_s'])}"
        )
    return at
