"""Owned background work: every task or thread of the local cloud is started here, so none dies silently.

:class:`Failures` starts asyncio tasks (:meth:`Failures.spawn`) and threads (:meth:`Failures.thread`)
and records anything they raise: it is logged at once, counted by source, kept (the first
:data:`KEEP` of them, so a failure repeating a million times costs no memory) and surfaced by
``LocalCloud.ingest_stats()``, ``LocalCloud.stop()`` and the simulator's report. Work that fails
for one item and goes on (an ingest batch that rolled back, a replication that could not be applied)
calls :meth:`Failures.record` itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["KEEP", "Failure", "Failures"]

log = logging.getLogger(__name__)

KEEP: Final = 100  # failures kept with their text; beyond that they are only counted


@dataclass(frozen=True, slots=True)
class Failure:
    """One failure of background work: where (``source``), what (``error``) and when (epoch seconds)."""

    source: str
    error: str
    at: float

    def __str__(self) -> str:
        return f"{self.source}: {self.error}"


class Failures:
    """Starts owned tasks and threads and keeps what went wrong in them; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: list[Failure] = []
        self.by_source: Counter[str] = Counter()

    # ---------------------------------------------------------------- starting work

    def spawn(self, coro: Coroutine[Any, Any, None], source: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task on the running loop; its exception (not its cancellation) is recorded."""
        task = asyncio.get_running_loop().create_task(coro, name=f"iotfleet {source}")
        task.add_done_callback(lambda done: self._task_done(done, source))
        return task

    def _task_done(self, task: asyncio.Task[None], source: str) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.record(source, exc)

    def thread(self, target: Callable[[], None], source: str) -> threading.Thread:
        """Start ``target`` on a daemon thread; an exception that ends it is recorded."""

        def run() -> None:
            try:
                target()
            except Exception as exc:  # noqa: BLE001 - the thread's owner: recorded, logged, surfaced
                self.record(source, exc)

        thread = threading.Thread(target=run, name=f"iotfleet {source}", daemon=True)
        thread.start()
        return thread

    def loop_handler(self, source: str) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
        """An event-loop exception handler that records what the loop could not hand to anyone."""

        def handle(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            self.record(source, exc if isinstance(exc, BaseException) else str(context.get("message")))

        return handle

    # ---------------------------------------------------------------- what went wrong

    def record(self, source: str, error: BaseException | str) -> Failure:
        """Log, count and keep one failure of ``source``; return it."""
        if isinstance(error, BaseException):
            text = f"{type(error).__name__}: {error}"
            detail = "".join(traceback.format_exception(error))
        else:
            text = detail = error
        failure = Failure(source, text, time.time())
        with self._lock:
            self.by_source[source] += 1
            n = self.by_source[source]
            if len(self._kept) < KEEP:
                self._kept.append(failure)
        if n == 1:
            log.error("%s failed: %s", source, detail)
        elif n & (n - 1) == 0:  # a failure that repeats is logged 1, 2, 4, 8, ... times, always counted
            log.warning("%s failed %d times; the last: %s", source, n, text)
        return failure

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self.by_source.values())

    def kept(self, prefix: str = "") -> list[Failure]:
        """The failures kept, of the sources starting with ``prefix`` (all by default)."""
        with self._lock:
            return [f for f in self._kept if f.source.startswith(prefix)]

    def counts(self, prefix: str = "") -> dict[str, int]:
        """How many times each source starting with ``prefix`` failed."""
        with self._lock:
            return {s: n for s, n in self.by_source.items() if s.startswith(prefix)}

    def summary(self) -> list[str]:
        """One line per failing source: how often it failed and its first error."""
        with self._lock:
            first: dict[str, Failure] = {}
            for failure in self._kept:
                first.setdefault(failure.source, failure)
            return [
                f"{source}: failed {n} time{'s' if n != 1 else ''}"
                + (f"; first: {first[source].error}" if source in first else "")
                for source, n in sorted(self.by_source.items())
            ]
