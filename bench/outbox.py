"""Outbox throughput in one device process: add + remove per message, memory vs SQLite WAL.

Each message is written to the outbox (add) and then acknowledged (remove), the two writes a durable
publish costs. ``process`` durability (WAL, synchronous=NORMAL) survives kill -9 of the process;
``power`` (synchronous=FULL) fsyncs every commit and survives a power cut. Memory is the baseline.

    python bench/outbox.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from iotfleet.config import Durability, OutboxPolicy
from iotfleet.device.outbox import Outbox, open_outbox

PAYLOAD = b'{"power_w":12.5,"dim":80,"lux":412,"occupied":true,"temp_c":21.4}' * 3


def run(outbox: Outbox, messages: int, window: int = 10) -> float:
    """Messages per second with ``window`` unacknowledged at a time, as a device keeps them."""
    started = time.perf_counter()
    pending: list[int] = []
    for _ in range(messages):
        entry = outbox.add("dt/bench/hq/lamp-1/telemetry", PAYLOAD, 1).entry
        assert entry is not None
        pending.append(entry.seq)
        if len(pending) >= window:
            outbox.remove(pending.pop(0))
    for seq in pending:
        outbox.remove(seq)
    return messages / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} cores={os.cpu_count()} python={platform.python_version()}")
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        cases = {
            "memory": OutboxPolicy(),
            "sqlite process (NORMAL)": OutboxPolicy(path=Path(tmp) / "p.sqlite", durability=Durability.PROCESS),
            "sqlite power (FULL)": OutboxPolicy(path=Path(tmp) / "f.sqlite", durability=Durability.POWER),
        }
        for name, policy in cases.items():
            count = args.messages if policy.durability is Durability.PROCESS else max(1000, args.messages // 10)
            outbox = open_outbox(policy)
            rate = run(outbox, count)
            outbox.close()
            print(f"{name:<26} {rate:>9.0f} msg/s (add + remove, {count} messages)")


if __name__ == "__main__":
    main()
