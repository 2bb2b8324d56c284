"""The simulator's report: one JSON document, mergeable across shards, and a human summary.

Required keys (the issue's contract): ``devices``, ``duration_s``, ``sent``, ``acked``, ``ingested``,
``lost``, ``duplicates``, ``throughput_msgs_per_s``, ``latency_ms`` (``connect``, ``ack``, ``e2e``, each
with ``p50``, ``p95``, ``p99``, ``max``), ``errors`` and ``regions``. ``raw`` keeps what merging needs
(histograms and per-device sequence sets), so ``iotfleet report merge`` gives the totals one run would.

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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iotfleet.errors import ConfigError
from iotfleet.metrics import Histogram, SeqSet
from iotfleet.sim.runner import WorkerMetrics

__all__ = ["build_report", "load_report", "merge_reports", "summary_lines", "threshold_breaches"]

REQUIRED = ("devices", "duration_s", "sent", "acked", "ingested", "lost", "duplicates", "throughput_msgs_per_s")


def _seqs(data: Mapping[str, Any]) -> dict[str, SeqSet]:
    return {thing: SeqSet.from_dict(d) for thing, d in data.items()}


def _union(target: dict[str, SeqSet], source: Mapping[str, SeqSet]) -> None:
    for thing, seqs in source.items():
        if thing in target:
            target[thing].update(seqs)
        else:
            target[thing] = SeqSet.from_dict(seqs.to_dict())


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


def build_report(
    *,
    workers: Sequence[WorkerMetrics],
    ingest: Sequence[Mapping[str, Any]] | None,
    operator: Mapping[str, Any] | None = None,
    duration_s: float,
    config: Mapping[str, Any],
    chaos: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Merge the workers' and ingest regions' figures into the raw form, then compute the report."""
    acked: dict[str, SeqSet] = {}
    sent: Counter[str] = Counter()
    hist = {
        "connect": Histogram(),
        "ack": Histogram(),
        "e2e": Histogram(),
        "provision": Histogram(),
        "shadow_sync": operator["lag"] if operator is not None else Histogram(),
    }
    shadow: dict[str, Any] = {"device": {}, "operator": None}
    if operator is not None:
        _add_shadow(shadow, {"operator": {k: v for k, v in operator.items() if k != "lag"}})
    errors: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    regions: dict[str, Counter[str]] = {}
    failovers: Counter[str] = Counter()
    totals: dict[str, float] = {"steady_wall_s": 0.0}
    first_ack: dict[str, dict[str, float]] = {}
    for w in workers:
        _union(acked, w.acked_seqs)
        sent.update(w.sent_by_device)
        hist["connect"].merge(w.connect_ms)
        hist["ack"].merge(w.ack_ms)
        hist["provision"].merge(w.provision_ms)
        errors.update(w.errors)
        failed.update(w.failed)
        failovers.update(w.failovers)
        _add_shadow(shadow, {"device": w.shadow})
        for key, value in (
            {
                "devices": w.devices,
                "connects": w.connects,
                "failbacks": w.failbacks,
                "unacked": w.outbox_depth,
                "worker_cpu_s": w.cpu_s,
                "steady_cpu_s": w.steady_cpu_s,
                "worker_rss_kb": w.max_rss_kb,
                "account_rate_waits": w.account_rate_waits,
            }
        ).items():
            totals[key] = totals.get(key, 0) + value
        totals["steady_wall_s"] = max(totals["steady_wall_s"], w.steady_wall_s)
        for region, counters in w.by_region.items():
            regions.setdefault(region, Counter()).update({"acked": counters["acked"], "connects": counters["connects"]})
        first_ack.update(w.first_ack_at)
    ingested: dict[str, SeqSet] | None = None
    rejects: Counter[str] = Counter()
    ingest_duplicates = 0
    if ingest is not None:
        ingested = {}
        for stats in ingest:
            hist["e2e"].merge(stats["e2e"])
            rejects.update(stats["rejected"])
            ingest_duplicates += stats["duplicates"]
            counts = regions.setdefault(stats["region"], Counter())
            counts.update({"ingested": stats["ingested"], "rejected": sum(stats["rejected"].values())})
            # what the cloud lost or could not do, shown only when it happened (LocalCloud.ingest_stats)
            trouble = {"not_stored": stats.get("not_stored", 0), "broker_dropped": stats.get("broker_dropped", 0)}
            counts.update({k: v for k, v in {**trouble, "failures": len(stats.get("failures", []))}.items() if v})
            _union(ingested, stats["by_device"])
    raw = {
        "acked": {k: v.to_dict() for k, v in acked.items()},
        "ingested": None if ingested is None else {k: v.to_dict() for k, v in ingested.items()},
        "sent": dict(sent),
        "histograms": {k: v.to_dict() for k, v in hist.items()},
        "errors": dict(errors),
        "failed": dict(failed),
        "rejects": dict(rejects),
        "regions": {k: dict(v) for k, v in regions.items()},
        "failovers": dict(failovers),
        "totals": dict(totals),
        "ingest_duplicates": ingest_duplicates,
        "first_ack_at": first_ack,
        "shadow": shadow,
    }
    return finish({"duration_s": round(duration_s, 3), "config": dict(config), "chaos": list(chaos), "raw": raw})


def finish(report: dict[str, Any]) -> dict[str, Any]:
    """Compute every headline figure of ``report`` from its ``raw`` section (also after a merge)."""
    raw = report["raw"]
    acked = _seqs(raw["acked"])
    ingested = None if raw["ingested"] is None else _seqs(raw["ingested"])
    hist = {k: Histogram.from_dict(v) for k, v in raw["histograms"].items()}
    sent = sum(raw["sent"].values())
    acked_n = sum(len(s) for s in acked.values())
    totals = raw["totals"]
    report.update(
        {
            "devices": totals.get("devices", 0),
            "sent": sent,
            "acked": acked_n,
            "unacked": max(0, sent - acked_n - sum(raw["failed"].values())),
            "failed": sum(raw["failed"].values()),
            "throughput_msgs_per_s": round(acked_n / report["duration_s"], 1) if report["duration_s"] else 0.0,
            "latency_ms": {k: v.summary() for k, v in hist.items()},
            "errors": {"total": sum(raw["errors"].values()), **raw["errors"]},
            "failovers": sum(raw["failovers"].values()),
            "failovers_by_route": raw["failovers"],
            "failbacks": totals.get("failbacks", 0),
            "reconnects": max(0, totals.get("connects", 0) - totals.get("devices", 0)),
            "account_rate_waits": totals.get("account_rate_waits", 0),
            "regions": raw["regions"],
            "rejects": raw["rejects"],
            "shadow": raw.get("shadow", {"device": {}, "operator": None}),
            "resources": {
                "worker_cpu_s": round(totals.get("worker_cpu_s", 0), 3),
                "steady_cpu_core_fraction": round(totals["steady_cpu_s"] / totals["steady_wall_s"], 4)
                if totals.get("steady_wall_s")
                else None,
                "worker_rss_kb": totals.get("worker_rss_kb", 0),
                "rss_kb_per_device": round(totals.get("worker_rss_kb", 0) / max(1, totals.get("devices", 0)), 1),
            },
        }
    )
    if ingested is None:
        report.update({"ingested": None, "lost": None, "duplicates": None, "out_of_order": None})
    else:
        report["ingested"] = sum(len(s) for s in ingested.values())
        report["lost"] = sum(seqs.missing_from(ingested.get(thing, SeqSet())) for thing, seqs in acked.items())
        report["duplicates"] = raw["ingest_duplicates"] + sum(s.duplicates for s in ingested.values())
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


def merge_reports(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One report from shard reports: sums, unions of sequence sets, merged histograms."""
    items = list(reports)
    if not items:
        raise ConfigError("name at least one report to merge")
    raws = [r["raw"] for r in items]
    acked: dict[str, SeqSet] = {}
    ingested: dict[str, SeqSet] | None = {} if all(r["ingested"] is not None for r in raws) else None
    hist: dict[str, Histogram] = {}
    merged: dict[str, Counter[str]] = {
        k: Counter() for k in ("sent", "errors", "failed", "rejects", "failovers", "totals")
    }
    regions: dict[str, Counter[str]] = {}
    first_ack: dict[str, dict[str, float]] = {}
    shadow: dict[str, Any] = {"device": {}, "operator": None}
    for raw in raws:
        _add_shadow(shadow, raw.get("shadow", {}))
        _union(acked, _seqs(raw["acked"]))
        if ingested is not None:
            _union(ingested, _seqs(raw["ingested"]))
        for name, data in raw["histograms"].items():
            hist.setdefault(name, Histogram(int(data["precision"]))).merge(Histogram.from_dict(data))
        for key, counter in merged.items():
            counter.update(raw[key])
        for region, counts in raw["regions"].items():
            regions.setdefault(region, Counter()).update(counts)
        first_ack.update(raw.get("first_ack_at", {}))
    raw_out = {
        "acked": {k: v.to_dict() for k, v in acked.items()},
        "ingested": None if ingested is None else {k: v.to_dict() for k, v in ingested.items()},
        "histograms": {k: v.to_dict() for k, v in hist.items()},
        "regions": {k: dict(v) for k, v in regions.items()},
        "ingest_duplicates": sum(r["ingest_duplicates"] for r in raws),
        "first_ack_at": first_ack,
        "shadow": shadow,
        **{k: dict(v) for k, v in merged.items()},
    }
    raw_out["totals"]["steady_wall_s"] = max(float(r["totals"].get("steady_wall_s", 0)) for r in raws)
    duration = max(float(r["duration_s"]) for r in items)
    shards = [r.get("config", {}).get("shard") for r in items]
    return finish(
        {"duration_s": duration, "config": {"merged_from": len(items), "shards": shards}, "chaos": [], "raw": raw_out}
    )


def threshold_breaches(
    report: Mapping[str, Any], *, max_lost: int = 0, max_error_rate: float | None = None
) -> list[str]:
    """The thresholds the run breached (empty when all hold)."""
    breaches = []
    lost = report.get("lost")
    if lost is not None and lost > max_lost:
        breaches.append(f"lost {lost} > {max_lost}")
    if max_error_rate is not None and report["sent"]:
        rate = report["errors"]["total"] / report["sent"]
        if rate > max_error_rate:
            breaches.append(f"error rate {rate:.4f} > {max_error_rate}")
    return breaches


def summary_lines(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of the human summary table."""

    def lat(name: str) -> str:
        s = report["latency_ms"][name]
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
    if report.get("rejects"):
        rows.append(("ingest rejects", ", ".join(f"{k}: {v}" for k, v in report["rejects"].items())))
    for region, counts in sorted(report["regions"].items()):
        rows.append((f"region {region}", ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))))
    return rows
