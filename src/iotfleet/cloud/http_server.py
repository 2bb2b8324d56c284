"""One aiohttp server on its own loop thread: the local cloud's HTTP control plane and each region's
HTTPS publish endpoint are each one of these.

aiohttp is a maintained asyncio HTTP server (and client): it runs on a loop of ours, takes an
``ssl.SSLContext`` (one that asks for client certificates, for HTTPS publish) and hands the handler the
peer certificate. Its own thread keeps it apart from the services' loop, whose blocking calls a handler
makes in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from iotfleet._loop_thread import LoopThread

__all__ = ["AwsError", "HttpServer"]


class AwsError(Exception):
    """An answer in AWS's error shape: ``status``, ``code`` (the exception's name, in the
    ``x-amzn-ErrorType`` header botocore reads) and a JSON body with ``message`` and any ``fields``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    def response(self, **fields: str) -> web.Response:
        body = json.dumps({"message": self.message, **fields})
        headers = {"x-amzn-ErrorType": f"{self.code}:", "Content-Type": "application/json"}
        return web.Response(status=self.status, text=body, headers=headers)


async def _abort(runner: web.AppRunner, held: set[asyncio.Task[Any]]) -> None:
    """Close the listening sockets, cancel the requests held by :meth:`HttpServer.freeze` (they are
    never answered), abort every connection (no graceful drain) and clean up."""
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    for handler in list(server.connections if server is not None else ()):
        if handler.transport is not None:
            handler.transport.abort()
        handler.force_close()
    for task in list(held):
        task.cancel()
    await runner.cleanup()


class HttpServer:
    """``handler`` for every request on ``host:port`` (0: a free port, then :attr:`port`), over TLS with
    ``ssl_context``; bodies up to ``max_body`` bytes.

    Chaos, for a region's endpoint: :meth:`kill` stops listening and drops every connection (clients see
    resets, then refused connections), :meth:`freeze` holds every request unanswered (a blackhole: the
    handshake still completes, nothing comes back), :meth:`restore` undoes either on the same port.
    """

    def __init__(
        self,
        name: str,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        *,
        host: str,
        port: int = 0,
        ssl_context: Any = None,
        max_body: int = 1 << 20,
        start_thread: Callable[[Callable[[], None], str], threading.Thread] | None = None,
    ) -> None:
        self.name, self.handler, self.host, self.port = name, handler, host, port
        self.ssl_context, self.max_body, self._start_thread = ssl_context, max_body, start_thread
        self._thread: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self._open: asyncio.Event | None = None  # cleared while frozen
        self._held: set[asyncio.Task[Any]] = set()  # requests waiting at the gate while frozen

    def start(self) -> int:
        """Listen; return the port."""
        kwargs: dict[str, Any] = {} if self._start_thread is None else {"start": self._start_thread}
        thread = self._thread = LoopThread(self.name, **kwargs)

        async def serve() -> int:
            self._open = asyncio.Event()
            self._open.set()
            return await self._serve()

        self.port = thread.call(serve())
        return self.port

    async def _serve(self) -> int:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self._gate)
        runner = self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context).start()
        return int(runner.addresses[0][1])

    async def _gate(self, request: web.Request) -> web.StreamResponse:
        if self._open is not None and not self._open.is_set():
            task = asyncio.current_task()
            assert task is not None  # noqa: S101 - aiohttp runs each request in a task
            self._held.add(task)
            try:
                await self._open.wait()
            finally:
                self._held.discard(task)
        return await self.handler(request)

    @property
    def held(self) -> int:
        """Requests held unanswered while frozen."""
        return len(self._held)

    def kill(self) -> None:
        """Stop listening and reset every connection at once, answered or not, as a dead host does
        (:meth:`restore` listens again on the same port)."""
        if self._thread is not None and self._runner is not None:
            runner, self._runner = self._runner, None
            self._thread.call(_abort(runner, self._held), timeout=10)

    def freeze(self) -> None:
        """Hold every request unanswered until :meth:`restore`."""
        if self._thread is not None and self._open is not None:
            self._thread.loop.call_soon_threadsafe(self._open.clear)

    def restore(self) -> None:
        """Answer again: listen on the same port after :meth:`kill`, release held requests after :meth:`freeze`."""
        if self._thread is None:
            return
        if self._runner is None:
            self._thread.call(self._serve(), timeout=10)
        if self._open is not None:
            self._thread.loop.call_soon_threadsafe(self._open.set)

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._open is not None:  # frozen requests are answered, not left to the shutdown timeout
            self._thread.loop.call_soon_threadsafe(self._open.set)
        if self._runner is not None:
            self._thread.call(self._runner.cleanup(), timeout=10)
        self._thread.stop()
        self._thread = None
