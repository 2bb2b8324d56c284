"""Pacing a worker's devices: one timer for all of them, and the account-wide publish rate."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Protocol

from iotfleet._rate import TokenBucket

__all__ = ["BATCH_S", "Paced", "Pacer"]

BATCH_S = 0.05  # tasks due this soon run with the ones due now


class Paced(Protocol):
    """What the pacer runs: a device's next task time, the task, and what to do when it raised."""

    active: bool  # False: the device stopped; its entry is dropped when due

    def next_at(self) -> float:
        """Loop time of the next task."""
        ...

    def fire(self) -> None:
        """Run the task that is due."""
        ...

    def failed(self, exc: Exception) -> None:
        """``fire`` raised ``exc`` (a device type's bug): count it; the pacer goes on."""
        ...


class Pacer:
    """One timer for all of a worker's devices: a heap of their next tasks, fired when due.

    One sleeping coroutine instead of one timer and one wait task per device per message (what a
    per-device loop costs), so a large, mostly idle fleet costs little CPU. With ``rate`` (this worker's
    share of the account-wide publish quota) a token bucket with 0.1 s of burst holds tasks back, late
    rather than dropped; ``waits`` counts how often it did.

    When it wakes it also runs what falls due within ``batch_s`` (tasks up to that much early): the
    devices' sends then go out together, their PUBACKs come back together, and the loop wakes once for
    them instead of once each. At a few hundred messages a second per worker most of its CPU was spent
    waking up (see bench/BENCHMARKS.md); a simulated device is late or early by ``batch_s`` at most.
    """

    def __init__(self, rate: float | None = None, *, batch_s: float = BATCH_S) -> None:
        self._heap: list[tuple[float, int, Paced]] = []
        self._order = itertools.count()
        self._wake: asyncio.Future[None] | None = None
        self._stopped = False
        self.rate = rate
        self._bucket = None if rate is None else TokenBucket(rate, capacity=max(1.0, rate / 10))
        self.waits = 0
        self.batch_s = batch_s

    def add(self, plan: Paced) -> None:
        at = plan.next_at()
        heapq.heappush(self._heap, (at, next(self._order), plan))
        if self._heap[0][2] is plan:
            self._poke()

    def stop(self) -> None:
        self._stopped = True
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            now = loop.time()
            wake_at = None
            while self._heap and self._heap[0][0] <= now + self.batch_s and not self._stopped:
                wait = 0.0 if self._bucket is None else self._bucket.acquire(now)
                if wait > 0:
                    self.waits += 1
                    wake_at = now + wait
                    break
                _, _, plan = heapq.heappop(self._heap)
                if plan.active:
                    try:
                        plan.fire()
                    except Exception as exc:  # noqa: BLE001 - a device type's bug: the plan counts it, the fleet goes on
                        plan.failed(exc)
                    heapq.heappush(self._heap, (plan.next_at(), next(self._order), plan))
            self._wake = loop.create_future()
            if wake_at is None and self._heap:
                wake_at = self._heap[0][0]
            timer = loop.call_at(wake_at, self._poke) if wake_at is not None else None
            try:
                await self._wake
            finally:
                if timer is not None:
                    timer.cancel()
