"""What every local-cloud service is: an MQTT client of its region's broker, with the service identity.

Nothing in the device path is short-circuited in-process (DESIGN.md decision 5): a device's request
reaches a service through mosquitto, and the answer goes back the same way. :class:`ServiceHost` runs
every service of a cloud on one event-loop thread; :class:`ServiceConnection` keeps one service
connected to its region, reconnecting after the broker is killed and restored. Every task of a
service, and the host's loop itself, is owned by the host's :class:`~iotfleet.cloud.owned.Failures`:
nothing a service runs in the background can die silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

from iotfleet._loop_thread import LoopThread
from iotfleet.cloud.owned import Failures
from iotfleet.config import Endpoint, Identity
from iotfleet.errors import CloudError, ConnectError, ConnectionLost
from iotfleet.transport.base import ConnectOptions, InboundMessage, Session, Transport
from iotfleet.transport.crt import CrtTransport

__all__ = ["SERVICE_CLIENT_PREFIX", "OperatorConnection", "RegionService", "ServiceConnection", "ServiceHost"]

# Client ids starting with this belong to the cloud's own services: the broker plugin refuses them to
# every other certificate (iotfleet_routing.c), so no device can take over a service's session.
SERVICE_CLIENT_PREFIX: Final = "iotfleet-service"
# How long the broker keeps a service's session after a dropped connection. 0: clean sessions. Kept
# sessions (600 s) were tried at 30,000 devices so that an ingest whose connection dropped would resume
# what the broker had queued for it: the runs then counted 101,009-153,356 duplicates at the ingest, not
# explained yet, so the services stay clean (ConnectOptions.session_expiry_s is there for the next try)
SERVICE_SESSION_EXPIRY_S: Final = 0
SERVICE_PING_TIMEOUT_S: Final = 30.0
SERVICE_RECEIVE_MAXIMUM: Final = 1000

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServiceHost:
    """One event loop on a private thread for all of a cloud's services; sync callers use :meth:`call`.

    ``failures`` owns every task the services start; an exception the loop cannot hand to anyone
    (a failing callback) is recorded there too.
    """

    def __init__(self, failures: Failures | None = None) -> None:
        self.failures = failures or Failures()
        self._loop_thread = LoopThread(
            "service host loop",
            start=self.failures.thread,
            exception_handler=self.failures.loop_handler("service host loop"),
        )
        self.loop = self._loop_thread.loop
        self.transport: Transport = CrtTransport()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the services' loop and wait for its result."""
        return self._loop_thread.call(coro, timeout)

    def stop(self) -> None:
        """Cancel the services' tasks (each may take 10 s to unwind), stop the loop and close it."""
        self._loop_thread.stop(unwind_s=10)


class ServiceConnection:
    """A service's connection to one region: subscribe, hand every message to ``handler``, reconnect.

    ``publish`` answers at QoS 1 on the live session; while the region is down answers are dropped,
    as the requests that asked for them were lost with the broker.
    """

    def __init__(
        self,
        *,
        client_id: str,
        endpoint: Endpoint,
        identity: Identity,
        filters: Sequence[str],
        handler: Callable[[InboundMessage], None],
        transport: Transport,
        failures: Failures | None = None,
        session_expiry_s: int = SERVICE_SESSION_EXPIRY_S,
    ) -> None:
        self.client_id = client_id
        self._session_expiry_s = session_expiry_s
        self.endpoint = endpoint
        self._identity = identity
        self._filters = list(filters)
        self._handler = handler
        self._transport = transport
        self._failures = failures or Failures()
        self._session: Session | None = None
        self._became_ready = asyncio.Condition()  # notified each time a session is up and subscribed
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # answers that could not be sent because the region was down
        self.handler_failures = 0  # messages whose handler raised (each recorded in ``failures``)
        self.sessions = 0  # connections made
        self.reconnects = 0  # connections after the first (a broker restarted or a session dropped)
        self.ready_since: float | None = None  # time.monotonic() when the live session was subscribed; None: none

    def start(self) -> None:
        self._task = self._failures.spawn(self._run(), f"{self.client_id} connection")

    def _deliver(self, message: InboundMessage) -> None:
        """Hand one message to the handler; a handler that raises is recorded and the next message goes on."""
        try:
            self._handler(message)
        except Exception as exc:  # noqa: BLE001 - recorded; one bad message must not stop the others
            self.handler_failures += 1
            self._failures.record(f"{self.client_id} handler", exc)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        await self._wait_until(lambda: self.ready_since is not None, timeout)

    async def wait_served_since(self, since: float, deadline: float) -> None:
        """Wait until this service has a session that became ready (connected and subscribed) at or after
        ``since`` (``time.monotonic()``, the same clock in every process on Linux): after its broker was
        killed and restarted, it serves the new one. Raises :class:`CloudError` at ``deadline``."""

        def served() -> bool:
            return self.ready_since is not None and self.ready_since >= since

        try:
            await self._wait_until(served, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise CloudError(
                f"{self.client_id} was not connected and subscribed again to {self.endpoint} in time after its "
                "broker restarted; see the cloud's log for its connect errors"
            ) from None

    async def _wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Wait until ``ready()`` holds, checked now and each time a session becomes ready."""
        async with self._became_ready:
            await asyncio.wait_for(self._became_ready.wait_for(ready), timeout)

    async def _run(self) -> None:
        options = ConnectOptions(
            client_id=self.client_id,
            identity=self._identity,
            keepalive_s=30,
            # a busy service is not a dead broker: on an overloaded machine the CRT's thread waits for
            # the GIL behind thousands of messages, and a 5 s ping timeout dropped the ingest's session
            # (at 30,000 devices on 2 cores); a dead broker resets the connection at once anyway
            ping_timeout_s=SERVICE_PING_TIMEOUT_S,
            connect_timeout_s=5,
            # what the broker may have in flight to the service; the rest waits in its (unbounded) queue.
            # 65,535 meant a resumed session got tens of thousands of messages again at once
            receive_maximum=SERVICE_RECEIVE_MAXIMUM,
            on_message=self._deliver,
            session_expiry_s=self._session_expiry_s,
        )
        while True:
            try:
                session = await self._transport.connect(self.endpoint, options)
                if self.sessions:
                    self.reconnects += 1
                    log.warning(
                        "%s reconnected to %s (%s)",
                        self.client_id,
                        self.endpoint,
                        "its session resumed"
                        if self._session_expiry_s
                        else "a clean session: what the broker had queued for the old one is gone",
                    )
                self.sessions += 1
                if self._filters:
                    await session.subscribe([(f, 1) for f in self._filters])
            except (ConnectError, ConnectionLost) as exc:
                log.debug("%s: %s; retrying", self.client_id, exc)
                await asyncio.sleep(0.1)
                continue
            self._session = session
            self.ready_since = time.monotonic()
            async with self._became_ready:
                self._became_ready.notify_all()
            try:
                await asyncio.shield(session.closed)
            except asyncio.CancelledError:
                await session.close()
                raise
            finally:
                self._session = None
                self.ready_since = None

    def publish(self, topic: str, payload: bytes, user_properties: Sequence[tuple[str, str]] = ()) -> bool:
        """Send at QoS 1 on the live session; False (and counted in :attr:`dropped`) when there is none."""
        session = self._session
        if session is None:
            self.dropped += 1
            return False
        try:
            session.send(topic, payload, 1, user_properties, _ignore)
        except ConnectionLost:
            self.dropped += 1
            return False
        return True

    async def deliver(
        self, topic: str, payload: bytes, user_properties: Sequence[tuple[str, str]] = (), *, timeout: float = 10.0
    ) -> bool:
        """Send at QoS 1 and wait for the broker's PUBACK: True once the broker has the message (so a
        broker killed right after cannot lose what the caller was told is accepted); False, counted in
        :attr:`dropped`, when the session is down, ends first, refuses it or does not answer in time."""
        session = self._session
        if session is not None:
            try:
                code = await asyncio.wait_for(session.publish(topic, payload, 1, user_properties), timeout)
            except (ConnectionLost, TimeoutError):
                pass
            else:
                if code < 0x80:
                    return True
        self.dropped += 1
        return False


class RegionService:
    """A service of one region: ``kind`` names its client id, ``filters`` what it serves."""

    kind: str
    filters: Sequence[str]

    def __init__(self, region: str) -> None:
        self.region = region
        self.connection: ServiceConnection | None = None
        self.failures = Failures()  # the host's, once attached
        self.loop: asyncio.AbstractEventLoop | None = None  # the host's, once attached
        self._tasks: set[asyncio.Task[None]] = set()

    def on_message(self, message: InboundMessage) -> None:
        raise NotImplementedError

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the running loop, owned: kept until it ends, its failure recorded and logged."""
        name = getattr(coro, "__name__", "task").lstrip("_")
        task = self.failures.spawn(coro, f"{self.kind} {self.region} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def attach(
        self,
        endpoint: Endpoint,
        identity: Identity,
        host: ServiceHost,
        *,
        instance: str = "",
        session_expiry_s: int = SERVICE_SESSION_EXPIRY_S,
    ) -> ServiceConnection:
        """Create this service's connection to its region (started by the caller on ``host``'s loop);
        ``instance`` tells apart the client ids of several processes running the same service, and
        ``session_expiry_s`` is how long the broker keeps its session after a dropped connection."""
        self.failures = host.failures
        self.loop = host.loop
        self.connection = ServiceConnection(
            client_id=f"{SERVICE_CLIENT_PREFIX}-{self.kind}-{self.region}{instance}",
            endpoint=endpoint,
            identity=identity,
            filters=self.filters,
            handler=self.on_message,
            transport=host.transport,
            failures=host.failures,
            session_expiry_s=session_expiry_s,
        )
        return self.connection


def _ignore(_code: int, _error: object, _at: float) -> None:
    """Service answers are fire-and-forget: a lost answer is a lost request, as on AWS."""


class OperatorConnection(RegionService):
    """The cloud operator's own connection to a region: what it publishes to devices (commands). It
    subscribes to nothing; :meth:`publish` sends at QoS 1 on the live session (False while it is down)."""

    kind = "operator"
    filters: Sequence[str] = ()

    def on_message(self, message: InboundMessage) -> None:
        """It subscribes to nothing."""

    def publish(self, topic: str, payload: bytes, user_properties: Sequence[tuple[str, str]] = ()) -> bool:
        return self.connection is not None and self.connection.publish(topic, payload, user_properties)

    async def deliver(self, topic: str, payload: bytes, user_properties: Sequence[tuple[str, str]] = ()) -> bool:
        """:meth:`publish`, returning once the broker acknowledged it (:meth:`ServiceConnection.deliver`)."""
        return self.connection is not None and await self.connection.deliver(topic, payload, user_properties)
