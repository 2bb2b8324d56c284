"""LoopThread: an event loop on its own thread that sync code calls into, and that stops cleanly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from iotfleet._loop_thread import LoopThread


def test_call_runs_on_the_loop_thread_and_returns_or_raises() -> None:
    runner = LoopThread("test-loop")

    async def where() -> str:
        return threading.current_thread().name

    async def broken() -> None:
        raise ValueError("from the loop")

    try:
        assert runner.call(where()) == "test-loop"
        with pytest.raises(ValueError, match="from the loop"):
            runner.call(broken())
    finally:
        runner.stop()
    assert runner.loop.is_closed()
    assert not runner.thread.is_alive()


def test_stop_cancels_every_task_and_lets_it_unwind() -> None:
    runner = LoopThread("test-loop")
    started, unwound = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # unwinding may await
            unwound.set()

    runner.submit(forever())
    assert started.wait(5)
    runner.stop(unwind_s=30)  # generous: once, in a loaded full run, 5 s were not enough to get the loop's turn
    assert unwound.is_set()
    runner.stop()  # stopping again does nothing


def test_the_thread_is_started_by_the_given_starter_and_loop_errors_go_to_the_handler() -> None:
    started: list[str] = []
    handled = threading.Event()
    contexts: list[dict[str, object]] = []

    def start(target: Callable[[], None], name: str) -> threading.Thread:
        started.append(name)
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        contexts.append(context)
        handled.set()

    def broken_callback() -> None:
        raise RuntimeError("callback broke")

    runner = LoopThread("owned-loop", start=start, exception_handler=handler)
    try:
        runner.loop.call_soon_threadsafe(broken_callback)
        assert handled.wait(5)
    finally:
        runner.stop()
    assert started == ["owned-loop"]
    assert isinstance(contexts[0]["exception"], RuntimeError)
