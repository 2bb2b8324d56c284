"""An asyncio event loop on a private thread, for synchronous callers (DESIGN.md decision 2).

The blocking device facade and the local cloud's service host both run async code this way: one loop
per object, started on its own daemon thread, coroutines handed to it from any other thread, and a
stop that lets every task unwind before the loop closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")

StartThread = Callable[[Callable[[], None], str], threading.Thread]
ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]


def _daemon(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class LoopThread:
    """A new event loop running forever on a thread started by ``start(target, name)``.

    ``start`` defaults to a plain daemon thread; the local cloud passes ``Failures.thread`` so the thread
    is owned. ``exception_handler`` gets what the loop cannot hand to anyone (a failing callback).
    """

    def __init__(
        self, name: str, *, start: StartThread = _daemon, exception_handler: ExceptionHandler | None = None
    ) -> None:
        self.loop = asyncio.new_event_loop()
        if exception_handler is not None:
            self.loop.set_exception_handler(exception_handler)
        self.thread = start(self.loop.run_forever, name)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; its result (or exception) arrives in the returned future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result; raises what it raises (TimeoutError after ``timeout``)."""
        return self.submit(coro).result(timeout)

    def stop(self, unwind_s: float = 10.0) -> None:
        """Cancel every task and give them ``unwind_s`` to finish, stop the loop, join its thread, close it.

        Safe to call again once stopped.
        """
        if self.loop.is_closed():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            self.call(_cancel_all(), timeout=unwind_s)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


async def _cancel_all() -> None:
    """Cancel every other task of the running loop and wait until each has unwound."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
