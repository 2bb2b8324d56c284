"""The default transport: AWS's own MQTT5 client from awscrt, with mTLS.

awscrt calls back on its native event-loop threads. Nothing blocks there: each callback is queued on
a :class:`LoopBridge`, which wakes the asyncio loop once for however many callbacks arrived, so a
burst of PUBACKs costs one wakeup rather than one self-pipe write each. The CRT client's own reconnect
is never used: a session ends on its first disconnect and the device client decides where to go next.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from awscrt import io, mqtt5
from awscrt.exceptions import AwsCrtError

from iotfleet.config import Endpoint, Identity
from iotfleet.errors import CertificateError, ConnectionLost
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

__all__ = ["CrtRuntime", "CrtSession", "CrtTransport", "LoopBridge", "skip_system_trust_store"]

_NEVER_MS = 24 * 3600 * 1000  # the CRT's own reconnect delay: a session is stopped long before
_QOS = (mqtt5.QoS.AT_MOST_ONCE, mqtt5.QoS.AT_LEAST_ONCE)


def skip_system_trust_store() -> None:
    """Stop s2n loading the system CA bundle for every new TLS context; call at process start.

    iotfleet always replaces the trust store with the identity's CA file, but s2n's ``s2n_config_new``
    parses the system bundle first (found through aws-lc's ``SSL_CERT_FILE``/``SSL_CERT_DIR``), then
    wipes it: about 4 ms of CPU per new identity against 0.2 ms without (measured with 50 contexts,
    bench/BENCHMARKS.md). Processes that create thousands of identities (the simulator's workers,
    the benchmarks) point both variables at nothing. Call it before starting threads, and only in a
    process where nothing else relies on the default trust store.
    """
    os.environ["SSL_CERT_FILE"] = os.devnull
    os.environ["SSL_CERT_DIR"] = os.devnull


class LoopBridge:
    """Runs callables on an asyncio loop, called from any thread, coalescing the wakeups.

    With ``coalesce_s`` > 0 the first call after a drain wakes the loop, which waits that long before it
    drains, so the calls that arrive meanwhile cost no wakeup at all.

    No lock: under the GIL a producer's append is seen by the drain that follows its check of
    ``_scheduled``, because the drain clears the flag before it takes the items (an item appended after
    that schedules another drain). Two producers that both see the flag clear schedule two drains, and
    the second finds nothing to do. Every PUBACK and inbound message crosses here, and a contended lock
    cost the loop thread more than the callback itself (a py-spy profile of the simulator).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, coalesce_s: float = 0.0) -> None:
        self._loop = loop
        self._items: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = collections.deque()
        self._scheduled = False
        self._coalesce_s = coalesce_s

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        self._items.append((fn, args))
        if self._scheduled:
            return
        self._scheduled = True
        try:
            # bound here, not kept on the bridge: a bridge holding its own bound method is a reference cycle,
            # which a settled heap (iotfleet.settle_heap) never frees once the bridge's loop is gone
            self._loop.call_soon_threadsafe(self._drain_later if self._coalesce_s > 0 else self._drain)
        except RuntimeError:  # the loop is closed: nothing is waiting for these any more
            self._items.clear()
            self._scheduled = False

    def _drain_later(self) -> None:
        self._loop.call_later(self._coalesce_s, self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        items = self._items
        try:
            while items:
                fn, args = items.popleft()
                try:
                    fn(*args)
                except Exception as exc:  # noqa: BLE001 - one callback's bug must not strand the ones queued behind it
                    self._loop.call_exception_handler(
                        {"message": f"a transport callback failed: {fn!r}", "exception": exc, "bridge": self}
                    )
        finally:
            if items and not self._scheduled:  # a BaseException (a cancellation) left some behind: next turn
                self._scheduled = True
                self._loop.call_soon(self._drain)


@dataclass
class CrtRuntime:
    """CRT event-loop threads and a DNS resolver for clients to share.

    ``threads=None`` lets the CRT choose (one per core). Most code wants :meth:`shared`: creating and
    dropping event-loop groups while clients are still winding down crashed the process natively in this
    project's tests (a SIGSEGV on a CRT thread), so the process keeps one for its whole life.
    """

    threads: int | None = None

    def __post_init__(self) -> None:
        self.event_loop_group = io.EventLoopGroup(self.threads)
        self.host_resolver = io.DefaultHostResolver(self.event_loop_group)
        self.bootstrap = io.ClientBootstrap(self.event_loop_group, self.host_resolver)

    @classmethod
    def shared(cls) -> CrtRuntime:
        """The process-wide runtime, created on first use and never torn down before exit."""
        with _SHARED_LOCK:
            global _SHARED_RUNTIME  # noqa: PLW0603 - one per process on purpose, see the class docstring
            if _SHARED_RUNTIME is None:
                _SHARED_RUNTIME = cls()
            return _SHARED_RUNTIME


_STOPPING: set[mqtt5.Client] = set()  # clients between stop() and their "stopped" callback
_SHARED_LOCK = threading.Lock()
_SHARED_RUNTIME: CrtRuntime | None = None


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return DisconnectReason.CLOSED
    name = getattr(exc, "name", type(exc).__name__)
    for needle, reason in (
        ("CONNECTION_REFUSED", DisconnectReason.REFUSED),
        ("PING", DisconnectReason.PING_TIMEOUT),
        ("TIMEOUT", DisconnectReason.TIMEOUT),
        ("TLS", DisconnectReason.TLS),
        ("CLOSED", DisconnectReason.RESET),
        ("RESET", DisconnectReason.RESET),
        ("HANGUP", DisconnectReason.RESET),
        ("USER_REQUESTED_STOP", DisconnectReason.CLOSED),
    ):
        if needle in name:
            return reason
    return str(name).lower()


class CrtSession:
    """One awscrt MQTT5 client, connected once, stopped on its first disconnect."""

    def __init__(
        self, endpoint: Endpoint, options: ConnectOptions, loop: asyncio.AbstractEventLoop, bridge: LoopBridge
    ) -> None:
        self.endpoint = endpoint
        self._options = options
        self._bridge = bridge
        self.connected: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[DisconnectInfo] = loop.create_future()
        self.client: mqtt5.Client | None = None
        self._stopping: mqtt5.Client | None = None
        self._stopped = loop.create_future()
        # Each publish's callback, found by its future when the PUBACK comes: per message a dict entry and
        # a bound method, not a closure (a closure and its cells are five objects the garbage collector
        # walks while the publish is in flight; bench/BENCHMARKS.md). The methods are bound per use, not
        # kept on the session: a session holding its own bound methods is a cycle that only the collector
        # frees, and never once a settled heap has frozen it.
        self._awaiting: dict[Future[mqtt5.PublishCompletionData], PublishCallback] = {}

    # ---- native-thread callbacks: queue on the bridge, nothing else

    def on_success(self, _data: mqtt5.LifecycleConnectSuccessData) -> None:
        self._bridge.call(self._connected)

    def on_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        self._bridge.call(self._failed, data.exception, data.connack_packet)

    def on_disconnect(self, data: mqtt5.LifecycleDisconnectData) -> None:
        code = data.disconnect_packet.reason_code if data.disconnect_packet else None
        self._bridge.call(self._ended, data.exception, code)

    def on_stopped(self, _data: mqtt5.LifecycleStoppedData) -> None:
        self._bridge.call(self._on_stopped)

    def _publish_done(self, future: Future[mqtt5.PublishCompletionData]) -> None:
        self._bridge.call(self._settle, future, time.monotonic())

    def on_publish(self, data: mqtt5.PublishReceivedData) -> None:
        p = data.publish_packet
        props = tuple([(u.name, u.value) for u in p.user_properties or ()])
        message = InboundMessage(p.topic, bytes(p.payload or b""), int(p.qos), bool(p.retain), props)
        self._bridge.call(self._options.on_message, message)

    # ---- loop-thread handlers

    def _settle(self, future: Future[mqtt5.PublishCompletionData], at: float) -> None:
        _complete_publish(future, self._awaiting.pop(future), self, at)

    def _connected(self) -> None:
        if not self.connected.done():
            self.connected.set_result(None)

    def _failed(self, exc: BaseException | None, connack: mqtt5.ConnackPacket | None) -> None:
        if not self.connected.done():
            reason = f"connack 0x{int(connack.reason_code):02x}" if connack is not None else _reason(exc)
            self.connected.set_exception(connect_failed(self.endpoint, reason))
            self.connected.exception()  # an abandoned attempt must not log "never retrieved"; awaiters still get it
        self._stop()

    def _ended(self, exc: BaseException | None, code: mqtt5.DisconnectReasonCode | None) -> None:
        reason = DisconnectReason.of_code(int(code)) if code is not None else _reason(exc)
        if not self.closed.done():
            self.closed.set_result(DisconnectInfo(reason, str(exc or "")))
        self._stop()

    def _on_stopped(self) -> None:
        if not self.closed.done():
            self.closed.set_result(DisconnectInfo(DisconnectReason.CLOSED, by_client=True))
        if not self._stopped.done():
            self._stopped.set_result(None)
        if self._stopping is not None:
            _STOPPING.discard(self._stopping)
            self._stopping = None

    def _stop(self, packet: mqtt5.DisconnectPacket | None = None) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            # An awscrt client freed while it is still stopping crashes the process on a CRT thread
            # (seen here as a SIGSEGV with no Python frame). Keep it referenced until it reports "stopped".
            self._stopping = client
            _STOPPING.add(client)
            client.stop(packet)

    def abort(self) -> None:
        """Stop the client of a connect attempt that failed, timed out or was cancelled."""
        self._stop()

    # ---- Session protocol

    def send(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]], done: PublishCallback
    ) -> None:
        client = self.client
        if client is None or self.closed.done():
            raise ConnectionLost(f"the session to {self.endpoint} has ended")
        packet = mqtt5.PublishPacket(
            topic=topic,
            payload=payload,
            qos=_QOS[qos],
            user_properties=[mqtt5.UserProperty(k, v) for k, v in user_properties] or None,
        )
        future = client.publish(packet)
        self._awaiting[future] = done
        future.add_done_callback(self._publish_done)

    async def publish(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]] = ()
    ) -> int:
        return await publish_via_send(self, topic, payload, qos, user_properties)

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        client = self._live()
        packet = mqtt5.SubscribePacket([mqtt5.Subscription(f, mqtt5.QoS(q)) for f, q in filters])
        suback = await self._await(client.subscribe(packet))
        return [int(code) for code in suback.reason_codes]

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        await self._await(self._live().unsubscribe(mqtt5.UnsubscribePacket(list(filters))))

    async def close(self) -> None:
        if self.client is not None:
            self._stop(mqtt5.DisconnectPacket())
            if not self.closed.done():
                self.closed.set_result(DisconnectInfo(DisconnectReason.CLOSED, by_client=True))
        with contextlib.suppress(TimeoutError):  # the CRT stops asynchronously; it is freed with its last reference
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout=5)

    def _live(self) -> mqtt5.Client:
        if self.client is None or self.closed.done():
            raise ConnectionLost(f"the session to {self.endpoint} has ended")
        return self.client

    async def _await(self, future: Future[Any]) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: self._bridge.call(_copy_result, done, f, self))
        return await done


def _lost(session: CrtSession, exc: BaseException) -> ConnectionLost:
    lost = ConnectionLost(f"the session to {session.endpoint} ended before the broker answered ({_reason(exc)})")
    lost.__cause__ = exc
    return lost


def _complete_publish(
    result: Future[mqtt5.PublishCompletionData], done: PublishCallback, session: CrtSession, at: float
) -> None:
    try:
        completion = result.result()  # done already: one look at it (each takes the future's lock)
    except Exception as exc:  # noqa: BLE001 - the publish's own failure, handed to its callback
        done(0, _lost(session, exc), at)
        return
    puback = completion.puback  # for QoS 0 awscrt gives a PUBACK with no reason code
    done(int(puback.reason_code) if puback is not None and puback.reason_code is not None else 0, None, at)


def _copy_result(done: asyncio.Future[Any], result: Future[Any], session: CrtSession) -> None:
    if done.done():
        return
    exc = result.exception()
    if exc is not None:
        done.set_exception(_lost(session, exc))
    else:
        done.set_result(result.result())


class CrtTransport:
    """Sessions on awscrt's MQTT5 client; one instance serves any number of devices.

    ``coalesce_s`` (0 by default) lets the CRT's callbacks (PUBACKs, inbound messages, connection events)
    gather for that long after the first one before the event loop is woken to run them all (see
    :class:`LoopBridge`). A process with thousands of clients wakes its loop once per batch instead of
    once per PUBACK, at the price of answers reaching the application up to ``coalesce_s`` later; publish
    latencies are still measured to the moment the CRT saw each PUBACK. The simulator's workers use 5 ms.
    """

    name = "crt"

    def __init__(self, runtime: CrtRuntime | None = None, *, coalesce_s: float = 0.0) -> None:
        self._runtime = runtime
        self._coalesce_s = coalesce_s
        self._tls: dict[tuple[str, str, str, bool], io.ClientTlsContext] = {}
        self._bridges: dict[asyncio.AbstractEventLoop, LoopBridge] = {}

    @property
    def runtime(self) -> CrtRuntime:
        if self._runtime is None:
            self._runtime = CrtRuntime.shared()
        return self._runtime

    def _tls_context(self, identity: Identity, alpn: bool) -> io.ClientTlsContext:
        key = (str(identity.cert_file), str(identity.key_file), str(identity.ca_file), alpn)
        ctx = self._tls.get(key)
        if ctx is None:
            identity.check()  # names the file and the problem; the CRT would say only "1033"
            try:
                opts = io.TlsContextOptions.create_client_with_mtls_from_path(
                    str(identity.cert_file), str(identity.key_file)
                )
                opts.override_default_trust_store_from_path(None, str(identity.ca_file))
                if alpn:
                    opts.alpn_list = [ALPN_IOT_CORE]
                ctx = io.ClientTlsContext(opts)
            except (AwsCrtError, RuntimeError, ValueError) as exc:
                raise CertificateError(
                    f"cannot load the identity of {identity.thing_name} ({identity.cert_file}, {identity.key_file}, "
                    f"{identity.ca_file}): {getattr(exc, 'name', exc)}; check the files exist and belong together"
                ) from exc
            self._tls[key] = ctx
        return ctx

    def _bridge(self, loop: asyncio.AbstractEventLoop) -> LoopBridge:
        bridge = self._bridges.get(loop)
        if bridge is None:
            self._bridges = {lp: b for lp, b in self._bridges.items() if not lp.is_closed()}
            bridge = self._bridges[loop] = LoopBridge(loop, self._coalesce_s)
        return bridge

    async def connect(self, endpoint: Endpoint, options: ConnectOptions) -> CrtSession:
        loop = asyncio.get_running_loop()
        session = CrtSession(endpoint, options, loop, self._bridge(loop))
        socket_options = io.SocketOptions()
        socket_options.connect_timeout_ms = int(options.connect_timeout_s * 1000)
        client = mqtt5.Client(
            mqtt5.ClientOptions(
                host_name=endpoint.host,
                port=endpoint.port,
                bootstrap=self.runtime.bootstrap,
                socket_options=socket_options,
                tls_ctx=self._tls_context(options.identity, alpn=uses_alpn(endpoint)),
                connect_options=mqtt5.ConnectPacket(
                    client_id=options.client_id,
                    keep_alive_interval_sec=options.keepalive_s,
                    session_expiry_interval_sec=options.session_expiry_s,
                    receive_maximum=options.receive_maximum,
                ),
                session_behavior=(
                    mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS
                    if options.session_expiry_s
                    else mqtt5.ClientSessionBehaviorType.CLEAN
                ),
                extended_validation_and_flow_control_options=mqtt5.ExtendedValidationAndFlowControlOptions.NONE,
                offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
                min_reconnect_delay_ms=_NEVER_MS,
                max_reconnect_delay_ms=_NEVER_MS,
                ping_timeout_ms=int(options.ping_timeout_s * 1000),
                connack_timeout_ms=int(options.connect_timeout_s * 1000),
                on_publish_callback_fn=session.on_publish,
                on_lifecycle_event_stopped_fn=session.on_stopped,
                on_lifecycle_event_connection_success_fn=session.on_success,
                on_lifecycle_event_connection_failure_fn=session.on_failure,
                on_lifecycle_event_disconnection_fn=session.on_disconnect,
                disable_metrics=True,
            )
        )
        session.client = client
        client.start()
        try:
            await asyncio.wait_for(asyncio.shield(session.connected), options.connect_timeout_s)
        except TimeoutError:
            session.connected.cancel()  # a late failure callback finds it done and stays quiet
            session.abort()
            raise connect_timed_out(endpoint, options.connect_timeout_s) from None
        except BaseException:  # a failed or *cancelled* attempt: a running client dropped here would be
            session.abort()  # freed while still connecting, which crashes the process on a CRT thread
            raise
        return session
