"""Streams of inbound data (messages, commands, shadow deltas) that end when their client closes.

::

    async with await device.commands() as commands:   # returns once the SUBACK is in
        await operator.send("reboot")                  # nothing sent from here on can slip past
        async for command in commands:                 # ends when the device client closes
            ...

A :class:`Stream` starts collecting the moment it is created. ``await stream`` (which ``async for``
also does before its first item) returns once its subscription is in place, so nobody sleeps or polls
waiting for a SUBACK. When its client closes the stream ends: iteration stops after the items already
received; ``aclose()`` ends it early. Items beyond ``maxsize`` waiting to be read are dropped and
counted in ``dropped`` (and by the device client in ``counters.inbound_dropped``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, Self, TypeVar

__all__ = ["Stream"]

T = TypeVar("T")


class Stream(Generic[T]):
    """An async iterator fed by the device client; see the module docstring."""

    def __init__(self, name: str, *, maxsize: int, subscribe: Callable[[], Awaitable[None]] | None = None) -> None:
        self.name = name
        self.maxsize = maxsize
        self.dropped = 0
        self._items: collections.deque[T] = collections.deque()
        self._subscribe = subscribe
        self._subscribing: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._on_end: list[Callable[[Stream[T]], None]] = []

    @property
    def ended(self) -> bool:
        return self._ended

    def on_end(self, callback: Callable[[Stream[T]], None]) -> None:
        """Call ``callback(stream)`` once when the stream ends (its owner stops feeding it)."""
        self._on_end.append(callback)

    # ---- the owner's side

    def put(self, item: T) -> bool:
        """Queue ``item`` for the reader; False (and counted in ``dropped``) if the stream is full or ended."""
        if self._ended or len(self._items) >= self.maxsize:
            self.dropped += 1
            return False
        self._items.append(item)
        self._wake()
        return True

    def end(self, error: BaseException | None = None) -> None:
        """No more items: the reader gets what is queued, then the end (or ``error``, if given)."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        callbacks, self._on_end = self._on_end, []
        for callback in callbacks:
            callback(self)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # ---- the reader's side

    async def subscribed(self) -> Self:
        """Return once the stream's subscription is in place (the broker's SUBACK received)."""
        if self._subscribe is not None:
            if self._subscribing is None:
                self._subscribing = asyncio.get_running_loop().create_task(_call(self._subscribe))
            try:
                await asyncio.shield(self._subscribing)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self.end(exc)
                raise
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self.subscribed().__await__()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        await self.subscribed()
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        return self._items.popleft()

    async def aclose(self) -> None:
        """Stop receiving; what was queued is discarded."""
        self._items.clear()
        self.end()

    async def __aenter__(self) -> Self:
        return await self.subscribed()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _call(subscribe: Callable[[], Awaitable[None]]) -> None:
    await subscribe()
