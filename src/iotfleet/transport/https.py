"""HTTPS device publish as a transport: every PUBLISH is ``POST /topics/<topic>?qos=N`` with the device's
certificate (IOT_CORE.md section 11(b)), as constrained devices send, so a :class:`~iotfleet.device.DeviceClient`
keeps its outbox, failover, events and loss accounting over HTTPS too.

A session is one endpoint's keep-alive connection (aiohttp's client, already the local cloud's HTTP
server: one connection, so requests go in order). :meth:`HttpsTransport.connect` makes one request
(``HEAD /``) to know the endpoint answers and takes the certificate (a 401 is a refused identity, as a
failed handshake is: the device tries elsewhere and keeps its messages; IoT Core fails the handshake of
a certificate that is not ACTIVE, the local cloud answers this 401); then each
publish is one request,
its user properties in the ``x-amz-mqtt5-user-properties`` header (base64 of a JSON list), so the ingest
dedupes and counts it as it does an MQTT publish. What a status means to the device client, as the
PUBACK reason code it would get over MQTT:

- 200: ``0x00``; 401 or 403: ``0x87`` not authorized; 429: ``0x97`` quota exceeded; any other 4xx:
  ``0x83`` (the answer's message is logged); each of these settles the message;
- 5xx, a reset, a refused or failed connection: the session ends (the region is unavailable) and the
  message stays in the outbox for the next session, maybe in another region.

HTTPS can't subscribe: :meth:`HttpsSession.subscribe` raises :class:`~iotfleet.errors.ClientError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from typing import Final

import aiohttp
from yarl import URL

from iotfleet.config import Endpoint
from iotfleet.errors import ClientError, ConnectionLost
from iotfleet.transport.base import (
    ConnectOptions,
    DisconnectInfo,
    DisconnectReason,
    PubackCode,
    PublishCallback,
    connect_failed,
    connect_timed_out,
    publish_via_send,
)
from iotfleet.transport.tls import identity_context

__all__ = ["HTTPS_PORT", "HttpsSession", "HttpsTransport", "puback_of_status", "user_properties_header"]

log = logging.getLogger(__name__)

HTTPS_PORT: Final = 8443  # IoT Core's HTTPS port for X.509 client certificates
USER_PROPERTIES: Final = "x-amz-mqtt5-user-properties"


def puback_of_status(status: int) -> int | None:
    """The PUBACK reason code an HTTP answer stands for; None for a 5xx (the region is unavailable)."""
    if status >= 500:
        return None
    if 200 <= status < 300:
        return PubackCode.SUCCESS
    if status in (401, 403):
        return PubackCode.NOT_AUTHORIZED
    if status == 429:
        return PubackCode.QUOTA_EXCEEDED
    return PubackCode.IMPLEMENTATION_SPECIFIC_ERROR


def user_properties_header(properties: Sequence[tuple[str, str]]) -> str:
    """The ``x-amz-mqtt5-user-properties`` header's value for ``properties``."""
    items = [{"key": key, "value": value} for key, value in properties]
    return base64.b64encode(json.dumps(items, separators=(",", ":")).encode()).decode()


def _reason(exc: BaseException) -> str:
    """A failed request's cause, as the short reasons of :class:`DisconnectReason`."""
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return DisconnectReason.TLS
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError):
        return DisconnectReason.REFUSED
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError | aiohttp.ClientOSError):
        return DisconnectReason.RESET
    return DisconnectReason.IO


class HttpsSession:
    """Requests to one endpoint until one fails at the connection level, or :meth:`close`."""

    def __init__(self, endpoint: Endpoint, client: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.closed: asyncio.Future[DisconnectInfo] = loop.create_future()
        self._client = client
        self._base = f"https://{endpoint.host}:{endpoint.port}"
        self._posts: set[asyncio.Task[None]] = set()
        self._release: asyncio.Task[None] | None = None  # closing the connection, once the session ended

    def send(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]], done: PublishCallback
    ) -> None:
        if self.closed.done():
            raise ConnectionLost(f"the HTTPS session to {self.endpoint} has ended")
        task = asyncio.get_running_loop().create_task(self._post(topic, payload, qos, user_properties, done))
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    async def _post(
        self, topic: str, payload: bytes, qos: int, properties: Sequence[tuple[str, str]], done: PublishCallback
    ) -> None:
        url = URL(f"{self._base}/topics/{urllib.parse.quote(topic, safe='')}?qos={qos}", encoded=True)
        headers = {USER_PROPERTIES: user_properties_header(properties)} if properties else {}
        try:
            async with self._client.post(url, data=payload, headers=headers) as response:
                body = await response.read()
        except asyncio.CancelledError:
            done(
                0,
                ConnectionLost(f"the HTTPS session to {self.endpoint} was closed before {topic} was answered"),
                time.monotonic(),
            )
            raise
        except (aiohttp.ClientError, OSError) as exc:
            self._end(_reason(exc), str(exc) or type(exc).__name__)
            done(0, ConnectionLost(f"the HTTPS session to {self.endpoint} ended: {exc}"), time.monotonic())
            return
        at = time.monotonic()  # the answer is in
        code = puback_of_status(response.status)
        if code is None:
            self._end(DisconnectReason.RESET, f"HTTP {response.status}: {body[:200]!r}")
            done(0, ConnectionLost(f"{self.endpoint} answered HTTP {response.status}: the region is unavailable"), at)
            return
        if code == PubackCode.IMPLEMENTATION_SPECIFIC_ERROR:
            log.warning("%s refused a publish to %s: HTTP %d %r", self.endpoint, topic, response.status, body[:200])
        done(int(code), None, at)

    async def publish(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]] = ()
    ) -> int:
        return await publish_via_send(self, topic, payload, qos, user_properties)

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        raise ClientError(
            f"an HTTPS session can only publish, not subscribe to {[f for f, _ in filters]}: use an MQTT transport "
            "(crt or paho) for commands, shadows and jobs"
        )

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        raise ClientError("an HTTPS session has no subscriptions")

    def _end(self, reason: str, detail: str = "", *, by_client: bool = False) -> None:
        """The session is over: say why once, and release the connection (the device client may never
        call :meth:`close` on a session that ended by itself)."""
        if not self.closed.done():
            self.closed.set_result(DisconnectInfo(reason, detail, by_client))
            self._release = asyncio.get_running_loop().create_task(self._client.close())
            _owned(self._release)

    async def close(self) -> None:
        self._end(DisconnectReason.CLOSED, by_client=True)
        for task in list(self._posts):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._posts, return_exceptions=True)
        if self._release is not None:  # set by _end: the one close of the connection
            await asyncio.shield(self._release)


_closing: set[asyncio.Task[None]] = set()  # sessions being released: held until done, failures logged


def _owned(task: asyncio.Task[None]) -> None:
    _closing.add(task)
    task.add_done_callback(_released)


def _released(task: asyncio.Task[None]) -> None:
    _closing.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("closing an HTTPS session failed: %r", exc)


class HttpsTransport:
    """Opens :class:`HttpsSession` s; an :class:`~iotfleet.config.Endpoint` names the HTTPS port (8443
    on IoT Core, each local region's ``https_port``)."""

    name = "https"

    async def connect(self, endpoint: Endpoint, options: ConnectOptions) -> HttpsSession:
        context = identity_context(options.identity)
        connector = aiohttp.TCPConnector(ssl=context, limit=1)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=options.connect_timeout_s)
        client = aiohttp.ClientSession(connector=connector, timeout=timeout)
        try:
            async with (
                asyncio.timeout(options.connect_timeout_s),
                client.head(f"https://{endpoint.host}:{endpoint.port}/") as response,
            ):
                await response.read()
        except TimeoutError as exc:
            await client.close()
            raise connect_timed_out(endpoint, options.connect_timeout_s) from exc
        except (aiohttp.ClientError, OSError) as exc:
            await client.close()
            raise connect_failed(endpoint, _reason(exc), str(exc)) from exc
        except BaseException:
            await client.close()
            raise
        if response.status == 401:  # the endpoint does not take this certificate (here, yet)
            await client.close()
            raise connect_failed(endpoint, DisconnectReason.TLS, "HTTP 401: the certificate is refused")
        return HttpsSession(endpoint, client, asyncio.get_running_loop())
