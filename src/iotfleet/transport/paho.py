"""The pure-Python transport: paho-mqtt 2.x (MQTT5) driven by the asyncio event loop.

The socket is watched with ``add_reader``/``add_writer``; paho's ``loop_start()`` thread is never used
(it relies on select() and silently stops past ~340 clients, DESIGN.md decision 1). Only the blocking
TCP connect and TLS handshake run in the default executor. A session is declared dead when nothing has
been read for keepalive + ping timeout: paho sends a PINGREQ after ``keepalive`` idle seconds, so a
live broker always answers within that window.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from iotfleet.config import Endpoint
from iotfleet.errors import ConnectError, ConnectionLost
from iotfleet.transport.base import (
    ALPN_IOT_CORE,
    ConnectOptions,
    DisconnectInfo,
    DisconnectReason,
    InboundMessage,
    PublishCallback,
    connect_failed,
    connect_timed_out,
    publish_via_send,
    uses_alpn,
)
from iotfleet.transport.tls import identity_context

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

__all__ = ["PahoSession", "PahoTransport"]


class _Client(mqtt.Client):
    """paho's client, except that a failed TLS handshake closes its socket.

    paho 2.2 leaves that socket to the garbage collector, which a blackholed endpoint turns into one leaked
    file descriptor per connect attempt until GC runs. Only the wrap step is replaced, with our own
    context, host name and timeout; if paho renames the hook, its own (leaky but correct) code runs.
    """

    def __init__(self, *args: Any, tls: ssl.SSLContext, host: str, timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._iotfleet_tls = (tls, host, timeout)
        self.tls_alert: str | None = None  # a TLS error read after the handshake (a refused certificate)
        self.tls_set_context(tls)

    def _sock_recv(self, bufsize: int) -> bytes:
        """paho's read, keeping a TLS alert it would log and drop: with TLS 1.3 the server checks the
        client certificate after the client's handshake is done, so a revoked one is told on the first read."""
        try:
            return super()._sock_recv(bufsize)
        except ssl.SSLError as exc:
            if not isinstance(exc, ssl.SSLWantReadError | ssl.SSLWantWriteError):
                self.tls_alert = str(exc)  # the text only: the exception's traceback would hold the socket
            raise

    def _ssl_wrap_socket(self, tcp_sock: Any) -> ssl.SSLSocket:
        tls, host, timeout = self._iotfleet_tls
        ssl_sock = tls.wrap_socket(tcp_sock, server_hostname=host, do_handshake_on_connect=False)
        try:
            ssl_sock.settimeout(timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


class PahoSession:
    """One paho client on the event loop, connected once."""

    def __init__(self, endpoint: Endpoint, options: ConnectOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self._options = options
        self._loop = loop
        self.connected: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[DisconnectInfo] = loop.create_future()
        self._pending: dict[int, asyncio.Future[Any]] = {}  # SUBSCRIBE / UNSUBSCRIBE by packet id
        self._sends: dict[int, PublishCallback] = {}  # PUBLISH by packet id
        self._sock: SocketLike | None = None
        self._last_read = time.monotonic()
        self._ticker: asyncio.TimerHandle | None = None
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=mqtt.MQTTv5,
            tls=identity_context(options.identity, alpn=[ALPN_IOT_CORE] if uses_alpn(endpoint) else []),
            host=endpoint.host,
            timeout=options.connect_timeout_s,
        )
        client.max_inflight_messages_set(options.receive_maximum)
        client.connect_timeout = options.connect_timeout_s  # bounds the TCP connect and the TLS handshake
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_ack
        client.on_unsubscribe = self._on_ack
        self.client = client

    # ---- socket plumbing (the open/register callbacks may come from the executor thread)

    def _on_socket_open(self, _c: mqtt.Client, _u: Any, sock: SocketLike) -> None:
        self._loop.call_soon_threadsafe(self._watch, sock)

    def _watch(self, sock: SocketLike) -> None:
        self._sock = sock
        self._loop.add_reader(sock, self._readable)
        self._readable()  # TLS may already hold decrypted bytes that select() will never report

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: SocketLike) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _on_register_write(self, _c: mqtt.Client, _u: Any, sock: SocketLike) -> None:
        self._loop.call_soon_threadsafe(self._add_writer, sock)

    def _add_writer(self, sock: SocketLike) -> None:
        if sock.fileno() >= 0 and not self.closed.done():
            self._loop.add_writer(sock, self.client.loop_write)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: SocketLike) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        self._last_read = time.monotonic()
        self.client.loop_read()
        sock = self._sock
        while isinstance(sock, ssl.SSLSocket) and sock.fileno() >= 0 and sock.pending():
            self.client.loop_read()

    def _tick(self) -> None:
        """Keepalive bookkeeping once a quarter second, and the silence check."""
        if self.closed.done():
            return
        self.client.loop_misc()
        silent = time.monotonic() - self._last_read
        if self.connected.done() and silent > self._options.keepalive_s + self._options.ping_timeout_s:
            self._end(DisconnectInfo(DisconnectReason.PING_TIMEOUT, f"nothing read for {silent:.1f}s"))
            self.client.disconnect()
            self._close_socket()
            return
        self._ticker = self._loop.call_later(0.25, self._tick)

    # ---- paho callbacks (loop thread once connected)

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        if self.connected.done():
            return
        if rc.is_failure:
            reason = f"connack 0x{rc.value:02x}"
            self.connected.set_exception(connect_failed(self.endpoint, reason))
            self.connected.exception()  # an abandoned attempt must not log "never retrieved"; awaiters still get it
        else:
            self.connected.set_result(None)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        by_client = rc.value == 0
        if by_client:
            reason: str = DisconnectReason.CLOSED
        elif rc.getName() == "Unspecified error":
            reason = DisconnectReason.TLS if self.client.tls_alert is not None else DisconnectReason.RESET
        else:
            reason = DisconnectReason.of_code(rc.value)
        self._end(DisconnectInfo(reason, str(rc), by_client))

    def _end(self, info: DisconnectInfo) -> None:
        if not self.connected.done():
            alert = self.client.tls_alert
            detail = f"closed before CONNACK: {alert}" if alert is not None else "closed before CONNACK"
            self.connected.set_exception(connect_failed(self.endpoint, info.reason, detail))
            self.connected.exception()  # an abandoned attempt must not log "never retrieved"; awaiters still get it
        if not self.closed.done():
            self.closed.set_result(info)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"the session to {self.endpoint} ended ({info.reason})"))
        self._pending.clear()
        sends, self._sends = self._sends, {}
        now = time.monotonic()
        for done in sends.values():
            done(0, ConnectionLost(f"the session to {self.endpoint} ended ({info.reason}) before the PUBACK"), now)
        if self._ticker is not None:
            self._ticker.cancel()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg.properties, "UserProperty", None) or []
        message = InboundMessage(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), tuple(props))
        self._options.on_message(message)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties | None) -> None:
        done = self._sends.pop(mid, None)
        if done is not None:
            done(rc.value, None, time.monotonic())

    def _on_ack(self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Properties | None) -> None:
        fut = self._pending.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result([r.value for r in rcs])

    def _abandon(self, connecting: asyncio.Future[None]) -> None:
        """A connect that finished after its timeout: drop its socket, and its outcome, which nobody awaits."""
        if not connecting.cancelled():
            connecting.exception()
        self._close_socket()

    def _close_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            sock.close()

    # ---- the connect attempt (PahoTransport.connect)

    def start_ticking(self) -> None:
        """Start the keepalive ticks, once the blocking connect has opened the socket."""
        self._ticker = self._loop.call_later(0.25, self._tick)

    def abort(self, info: DisconnectInfo | None = None) -> None:
        """Give up a connect attempt: end the session with ``info`` (when given) and close the socket."""
        if info is not None:
            self._end(info)
        self._close_socket()

    def abandon(self, connecting: asyncio.Future[None]) -> None:
        """The device closes mid-connect: close the socket now, and the one the blocking connect may open later."""
        connecting.add_done_callback(self._abandon)
        self._close_socket()

    # ---- Session protocol

    def _track(self, rc: MQTTErrorCode, mid: int | None) -> asyncio.Future[Any]:
        if (
            self.closed.done()
            or rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
            or mid is None
        ):
            raise ConnectionLost(f"the session to {self.endpoint} has ended ({mqtt.error_string(rc)})")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[mid] = fut
        return fut

    def send(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]], done: PublishCallback
    ) -> None:
        props = None
        if user_properties:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it untyped
            props.UserProperty = list(user_properties)
        if self.closed.done():
            raise ConnectionLost(f"the session to {self.endpoint} has ended")
        info = self.client.publish(topic, payload, qos=qos, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise ConnectionLost(f"the session to {self.endpoint} has ended ({mqtt.error_string(info.rc)})")
        if qos == 0:  # nothing comes back; paho may even have reported the write already, inside publish()
            done(0, None, time.monotonic())
            return
        self._sends[info.mid] = done

    async def publish(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]] = ()
    ) -> int:
        return await publish_via_send(self, topic, payload, qos, user_properties)

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        rc, mid = self.client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in filters])
        codes: list[int] = await self._track(rc, mid)
        return codes

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        rc, mid = self.client.unsubscribe(list(filters))
        await self._track(rc, mid)

    async def close(self) -> None:
        if not self.closed.done():
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.closed), timeout=2)
            self._end(DisconnectInfo(DisconnectReason.CLOSED, by_client=True))
        self._close_socket()


class PahoTransport:
    """Sessions on paho-mqtt, the pure-Python alternative to awscrt.

    paho's connect (TCP + TLS handshake) blocks, so it runs on this transport's own thread pool:
    a blackholed endpoint holds a thread for the whole connect timeout, and the default executor's
    handful of threads would then delay every other device's connect.
    """

    name = "paho"

    def __init__(self, connect_threads: int = 256) -> None:
        self._connect_threads = connect_threads
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def connect(self, endpoint: Endpoint, options: ConnectOptions) -> PahoSession:
        loop = asyncio.get_running_loop()
        session = PahoSession(endpoint, options, loop)
        client = session.client
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(self._connect_threads, "iotfleet-paho-connect")

        properties = None
        if options.session_expiry_s:  # a session the broker keeps, resumed by the next CONNECT
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it untyped
            properties.SessionExpiryInterval = options.session_expiry_s

        def blocking_connect() -> None:
            client.connect(
                endpoint.host,
                endpoint.port,
                keepalive=options.keepalive_s,
                clean_start=not options.session_expiry_s,
                properties=properties,
            )

        connecting = loop.run_in_executor(self._executor, blocking_connect)
        try:
            # paho bounds the TCP connect and the TLS handshake by connect_timeout inside the thread; the
            # time spent queued for a thread is not the endpoint's fault and must not count against it
            await asyncio.shield(connecting)
            session.start_ticking()
            await asyncio.wait_for(asyncio.shield(session.connected), options.connect_timeout_s)
        except TimeoutError:  # the TCP connect or the handshake (socket.timeout), or no CONNACK in time
            session.connected.cancel()
            session.abort(DisconnectInfo(DisconnectReason.TIMEOUT))
            raise connect_timed_out(endpoint, options.connect_timeout_s) from None
        except asyncio.CancelledError:
            # the device is closing: the blocking connect may still finish later; close what it opens then
            session.abandon(connecting)
            raise
        except (OSError, ssl.SSLError) as exc:
            session.abort()
            reason = (
                DisconnectReason.REFUSED
                if isinstance(exc, ConnectionRefusedError)
                else DisconnectReason.TLS
                if isinstance(exc, ssl.SSLError)
                else DisconnectReason.IO
            )
            raise connect_failed(endpoint, reason, str(exc)) from exc
        except ConnectError:
            session.abort()
            raise
        return session
