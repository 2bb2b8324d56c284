"""Soak: a long simulation at high speed, with the memory of every process sampled over time.

Runs a ``Simulation`` (the code behind ``iotfleet simulate``) on the embedded two-region local cloud
for ``--minutes`` and samples, every ``--every`` seconds, the RSS of the parent (the simulator's parent
process, which also runs the local cloud's services: the ingest, its writer thread and SQLite, the
shadow and provisioning services), of the brokers and of the simulator's workers, with the messages
acknowledged so far and the size of the ingest stores on disk. It prints the series as it goes, then
each process group's slope (least squares, MB per 10 minutes, after the warm-up) and the run's report.

A flat parent is the point: before issue 12 the ingest kept every message id in a set (about 105 MB
per million messages), so RSS grew with every message for the whole run.

    python bench/soak.py --minutes 30                      # the soak BENCHMARKS.md quotes
    python bench/soak.py --minutes 4 --every 10            # a short check
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from iotfleet.cloud.broker import Quotas
from iotfleet.config import PublishLimits
from iotfleet.sim.fleet import FleetShape
from iotfleet.sim.simulate import SimConfig, Simulation

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 1e6


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    parent_mb: float
    brokers_mb: float
    workers_mb: float
    acked: int
    store_mb: float


def _rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MB
    except (OSError, IndexError, ValueError):
        return 0.0  # the process ended between listing and reading


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def sample(started: float, acked: int, workdir: Path) -> Sample:
    brokers = workers = 0.0
    for pid in _descendants(os.getpid()):
        if _comm(pid) == "mosquitto":
            brokers += _rss_mb(pid)
        else:
            workers += _rss_mb(pid)
    store = sum(p.stat().st_size for p in workdir.glob("**/ingest.sqlite*") if p.is_file()) / 1e6
    return Sample(time.monotonic() - started, _rss_mb(os.getpid()), brokers, workers, acked, store)


def slope_per_10_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB), in MB per 10 minutes."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var * 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the steady run")
    parser.add_argument("--sites", type=int, default=5, help="40 devices per site")
    parser.add_argument("--speed", type=float, default=100.0, help="simulated seconds per real second")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of the run left out of the slope")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    shape = FleetShape(sites=args.sites)
    print(f"machine: {platform.machine()} cores={os.cpu_count()} python={platform.python_version()}")
    print(
        f"soak: {shape.devices} devices ({args.sites} sites), speed {args.speed:g}, {args.minutes:g} min, "
        f"{args.workers} workers, a sample every {args.every:g} s"
    )
    print(f"{'t s':>7} {'parent MB':>10} {'brokers MB':>11} {'workers MB':>11} {'acked':>10} {'store MB':>9}")
    with tempfile.TemporaryDirectory(prefix="iotfleet-soak-") as tmp:
        workdir = Path(tmp)
        config = SimConfig(
            shape=shape,
            duration_s=args.minutes * 60,
            speed=args.speed,
            workers=args.workers,
            limits=PublishLimits(enabled=False),
            quotas=Quotas.none(),  # limits lifted in the devices: lifted in the cloud too
            workdir=workdir,
            settle_s=60.0,
        )
        samples: list[Sample] = []
        acked = [0]
        done = threading.Event()
        started = time.monotonic()

        def sampler() -> None:
            while not done.wait(args.every):
                s = sample(started, acked[0], workdir)
                samples.append(s)
                print(
                    f"{s.at_s:>7.0f} {s.parent_mb:>10.1f} {s.brokers_mb:>11.1f} {s.workers_mb:>11.1f} "
                    f"{s.acked:>10,} {s.store_mb:>9.1f}",
                    flush=True,
                )

        thread = threading.Thread(target=sampler, name="soak-sampler", daemon=True)
        thread.start()
        try:
            report = Simulation(config).run(on_progress=lambda p: acked.__setitem__(0, int(p.total("acked"))))
        finally:
            done.set()
            thread.join()
    steady = [s for s in samples if s.at_s >= args.warmup * args.minutes * 60]
    print(f"\nslope after the first {args.warmup:.0%} of the run ({len(steady)} samples), MB per 10 minutes:")
    for name in ("parent_mb", "brokers_mb", "workers_mb"):
        points = [(s.at_s, getattr(s, name)) for s in steady]
        low, high = (min(y for _, y in points), max(y for _, y in points)) if points else (0.0, 0.0)
        print(f"  {name[:-3]:>8}: {slope_per_10_min(points):+7.2f}  (min {low:.1f}, max {high:.1f})")
    print(
        f"\nreport: sent {report['sent']:,}, acked {report['acked']:,}, ingested {report['ingested'] or 0:,}, "
        f"lost {report['lost']}, duplicates {report['duplicates']}, "
        f"{report['throughput_msgs_per_s']:.0f} msg/s"
    )


if __name__ == "__main__":
    main()
