"""The parent side: start one spawned worker process per spec, read their messages, collect their metrics.

Workers are spawned, never forked (DESIGN.md decision 10), with SIGINT and SIGTERM blocked while they
start, so a Ctrl-C reaches the parent alone: it sets ``stop`` and the workers drain and report. A worker
that is still alive 30 s after the end is killed by its own PID.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from iotfleet._children import signals_blocked
from iotfleet.errors import IotFleetError
from iotfleet.sim.runner.messages import WorkerMessage, WorkerSpec
from iotfleet.sim.runner.metrics import WorkerMetrics
from iotfleet.sim.runner.worker import worker_entry

__all__ = ["default_workers", "run_workers"]


def run_workers(  # noqa: PLR0912 - one loop reading one queue; each branch is one message kind
    specs: Sequence[WorkerSpec],
    stop: MpEvent,
    on_snapshot: Any,
    on_tick: Any,
    timeout_s: float | None,
) -> list[WorkerMetrics]:
    """Start one spawned process per spec, feed snapshots to ``on_snapshot(index, dict)``, call
    ``on_tick()`` about every 0.2 s (chaos, live view), and return every worker's final metrics."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[Any] = context.Queue()
    processes = [
        context.Process(target=worker_entry, args=(spec, results, stop), name=f"iotfleet-worker-{spec.index}")
        for spec in specs
    ]
    with signals_blocked():  # inherited through the exec: a Ctrl-C cannot kill a worker while it starts
        for process in processes:
            process.start()
    finals: dict[int, WorkerMetrics] = {}
    failures: list[str] = []
    started = time.monotonic()
    try:
        while len(finals) + len(failures) < len(processes):
            on_tick()
            try:
                kind, index, body = results.get(timeout=0.2)
            except queue.Empty:
                if all(not p.is_alive() for p in processes):
                    try:  # a last message may still be in the pipe
                        kind, index, body = results.get(timeout=1.0)
                    except queue.Empty:
                        failures.append("a worker process exited without reporting")
                        break
                elif timeout_s is not None and time.monotonic() - started > timeout_s:
                    stop.set()
                    failures.append(f"workers did not finish within {timeout_s:.0f}s")
                    break
                else:
                    continue
            if kind == WorkerMessage.SNAPSHOT:
                on_snapshot(index, body)
            elif kind == WorkerMessage.FINAL:
                finals[index] = body
            else:
                failures.append(f"worker {index}: {body}")
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()  # by its own PID; never by name
                process.join(timeout=5)
        results.close()
    if failures:
        raise IotFleetError("; ".join(failures))
    return [finals[i] for i in sorted(finals)]


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)
