"""One aiohttp server on its own loop thread: the local cloud's HTTP control plane and each region's
HTTPS publish endpoint are each one of these.

aiohttp is a maintained asyncio HTTP server (and client): it runs on a loop of ours, takes an
``ssl.SSLContext`` (one that asks for client certificates, for HTTPS publish) and hands the handler the
peer certificate. Its own thread keeps it apart from the services' loop, whose blocking calls a handler
makes in a worker thread.
"""

from __future__ import annotations

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


class HttpServer:
    """``handler`` for every request on ``host:port`` (0: a free port, then :attr:`port`), over TLS with
    ``ssl_context``; bodies up to ``max_body`` bytes."""

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

    def start(self) -> int:
        """Listen; return the port."""
        kwargs: dict[str, Any] = {} if self._start_thread is None else {"start": self._start_thread}
        thread = self._thread = LoopThread(self.name, **kwargs)

        async def serve() -> int:
            app = web.Application(client_max_size=self.max_body)
            app.router.add_route("*", "/{tail:.*}", self.handler)
            runner = self._runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context).start()
            return int(runner.addresses[0][1])

        self.port = thread.call(serve())
        return self.port

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._runner is not None:
            self._thread.call(self._runner.cleanup(), timeout=10)
        self._thread.stop()
        self._thread = None
