"""LoopBridge: callables handed over from other threads run on the loop, each once, in order; with
``coalesce_s`` they wait that long so that later ones join them."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

from iotfleet.transport.crt import LoopBridge


def test_without_coalescing_a_call_runs_on_the_next_turn_of_the_loop() -> None:
    async def scenario() -> None:
        bridge = LoopBridge(asyncio.get_running_loop())
        ran: list[int] = []
        bridge.call(ran.append, 1)
        await asyncio.sleep(0)
        assert ran == [1]

    asyncio.run(scenario())


def test_with_coalescing_calls_wait_and_then_run_together_in_order() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        bridge = LoopBridge(loop, coalesce_s=0.2)
        ran: list[tuple[int, int]] = []
        finished = asyncio.Event()
        first_at = loop.time()
        bridge.call(lambda: ran.append((1, threading.get_ident())))
        for _ in range(5):  # turns of the loop: without coalescing the first call would have run by now
            await asyncio.sleep(0)
        assert ran == []
        await asyncio.to_thread(bridge.call, lambda: ran.append((2, threading.get_ident())))
        bridge.call(finished.set)
        await finished.wait()
        assert [n for n, _ in ran] == [1, 2]
        assert {thread for _, thread in ran} == {threading.get_ident()}  # on the loop's thread
        assert loop.time() - first_at >= 0.2

    asyncio.run(scenario())


def test_calls_from_many_threads_each_run_once_in_each_threads_order() -> None:
    threads, per_thread = 4, 2000

    async def scenario() -> None:
        bridge = LoopBridge(asyncio.get_running_loop(), coalesce_s=0.001)
        ran: dict[int, list[int]] = {t: [] for t in range(threads)}
        left = [threads * per_thread]
        finished = asyncio.Event()

        def record(thread: int, n: int) -> None:
            ran[thread].append(n)
            left[0] -= 1
            if left[0] == 0:
                finished.set()

        def produce(thread: int) -> None:
            for n in range(per_thread):
                bridge.call(record, thread, n)

        await asyncio.gather(*(asyncio.to_thread(produce, t) for t in range(threads)))
        await asyncio.wait_for(finished.wait(), 30)
        assert all(ran[t] == list(range(per_thread)) for t in range(threads))

    asyncio.run(scenario())


def test_a_failing_callback_is_reported_and_the_ones_behind_it_still_run() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        bridge = LoopBridge(loop)
        ran: list[int] = []

        def broken() -> None:
            raise ValueError("a bug in one callback")

        bridge.call(ran.append, 1)
        bridge.call(broken)
        bridge.call(ran.append, 2)
        await asyncio.sleep(0)
        assert ran == [1, 2]
        assert [type(c["exception"]) for c in reported] == [ValueError]

    asyncio.run(scenario())


def test_a_cancelled_callback_leaves_the_ones_behind_it_for_the_next_turn() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, _context: None)  # the cancellation escapes the handle
        bridge = LoopBridge(loop)
        ran: list[int] = []

        def cancelled() -> None:
            raise asyncio.CancelledError

        bridge.call(cancelled)
        bridge.call(ran.append, 1)
        for _ in range(3):
            await asyncio.sleep(0)
        assert ran == [1]

    asyncio.run(scenario())


def test_a_coalescing_bridge_is_freed_by_reference_counting() -> None:
    """Not left to the cyclic collector (disabled here): after settle_heap() froze the heap, a bridge in a
    reference cycle would never be freed once its loop had closed."""

    async def scenario() -> weakref.ref[LoopBridge]:
        bridge = LoopBridge(asyncio.get_running_loop(), coalesce_s=0.001)
        finished = asyncio.Event()
        bridge.call(finished.set)
        await finished.wait()
        return weakref.ref(bridge)

    gc.collect()
    gc.disable()
    try:
        ref = asyncio.run(scenario())
        assert ref() is None
    finally:
        gc.enable()
