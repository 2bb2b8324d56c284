"""A device's session loop: connect, serve, and reconnect, fail over or fail back until the client closes.

:class:`SessionLoop` is one part of :class:`~iotfleet.device.client.DeviceClient`. It connects to the
endpoint the :class:`~iotfleet.device.failover.EndpointSelector` chooses; on each new session it gives
the session to the publisher, restores the inbound part's subscriptions, starts the session hooks and
lets the outbox move. A session ends when the broker or the network ends it, when the oldest in-flight
publish goes unanswered past its deadline (the publisher wakes the loop), or when a failback probe to
the preferred endpoint connects. Then the selector says how long to wait and where to go next, unless
a standby session (``ReconnectPolicy.standby``), kept open to the next region meanwhile, takes over at
once. It knows the network only through the :class:`~iotfleet.transport.base.Transport` and
:class:`~iotfleet.transport.base.Session` protocols, so it is tested against fake ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from iotfleet.config import Endpoint, Identity
from iotfleet.device.events import Connected, ConnectFailed, Disconnected, FailedOver, Listeners
from iotfleet.device.failover import EndpointSelector, NextAttempt
from iotfleet.device.inbound import Inbound
from iotfleet.device.publisher import Publisher
from iotfleet.errors import CertificateError, ConfigError, ConnectError, ConnectionLost, IdentityRefused
from iotfleet.transport.base import ConnectOptions, DisconnectReason, Session, Transport, refuses_identity

__all__ = ["REBOOT", "SILENT_REASONS", "SessionLoop"]

log = logging.getLogger(__name__)

REBOOT = "reboot"  # the reason of a session the device itself ended to restart (DeviceClient.reboot)
SILENT_REASONS = frozenset(  # the endpoint stopped answering
    {DisconnectReason.ACK_TIMEOUT, DisconnectReason.PING_TIMEOUT, DisconnectReason.KEEP_ALIVE_TIMEOUT}
)

SessionStart = Callable[[Endpoint], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class _Standby:
    """A second session kept open to ``endpoint`` (another region), ready to take over."""

    endpoint: Endpoint
    task: asyncio.Task[None] | None = None  # keeps it open: connects, waits for its end, reconnects
    session: Session | None = None  # while open and not taken over
    connect_s: float = 0.0  # how long its CONNECT took


class SessionCounts(Protocol):
    """Where :class:`SessionLoop` counts connections, failed attempts, short sessions and failovers."""

    connects: int
    connect_failures: int
    short_sessions: int
    failovers: int


class SessionLoop:
    """Owns the device's one live session and the decisions about the next one.

    ``options`` are the CONNECT's (client id, identity, keepalive, ...); ``publisher`` and ``inbound``
    are the parts a session serves; ``hooks`` run as tasks on every new session, after the
    subscriptions are restored. ``stop`` ends the loop.
    """

    def __init__(
        self,
        thing: str,
        transport: Transport,
        selector: EndpointSelector,
        options: ConnectOptions,
        *,
        publisher: Publisher,
        inbound: Inbound,
        counts: SessionCounts,
        listeners: Listeners,
    ) -> None:
        self.thing = thing
        self.transport = transport
        self.selector = selector
        self.policy = selector.policy
        self.options = options
        self.publisher = publisher
        self.inbound = inbound
        self.counts = counts
        self.listeners = listeners
        self.hooks: list[SessionStart] = []
        self.session: Session | None = None
        self.sessions = 0  # sessions opened so far
        self.served = False  # whether any session has been served (the device is reconnecting, not new)
        self.connected = asyncio.Event()  # set while a session is live
        self.stop = asyncio.Event()
        self.last_error: ConnectError | None = None  # why the last attempt failed
        self.last_reason = ""  # why the last session ended
        self.refusals: dict[Endpoint, str] = {}  # endpoints whose last attempt refused the identity
        self.refusal: IdentityRefused | None = None  # set while every endpoint refuses the identity
        self.refused = asyncio.Event()  # set with ``refusal``
        self.next_delay_s = 0.0  # how long the loop waits before its next attempt
        self._look: asyncio.Future[None] | None = None  # wakes the loop: an ack is overdue, a renewal asked
        self._renewal: asyncio.Future[None] | None = None  # use_identity's: done when the new session is up
        self._reboot_s: float | None = None  # reboot's: the offline time asked for, until the session is closed
        self._hook_tasks: set[asyncio.Task[None]] = set()  # running hooks (each logs its own failure)
        self._standby: _Standby | None = None
        self._closing: set[asyncio.Task[None]] = set()  # standby sessions being closed

    async def run(self) -> None:
        """Connect, serve, and reconnect / fail over / fail back until :attr:`stop` is set."""
        delay = 0.0
        session: Session | None = None
        while not self.stop.is_set():
            if session is None:
                if delay > 0 and await _wait_or(self.stop, delay):
                    return
                if self._standby is not None and self._standby.endpoint == self.selector.current:
                    self._drop_standby()  # the standby did not open in time; two sessions there would evict each other
                session = await self.attempt(self.selector.current)
                if session is None:
                    delay = self._moved(self.selector.failed())
                    if self.refusal is not None:  # no hot loop: the next round comes after the longest backoff
                        delay = max(delay, self.policy.max_backoff_s * (0.5 + self.selector.jitter() / 2))
                    self.next_delay_s = delay
                    continue
                self.selector.connected()
            while session is not None:
                session = await self.serve(session)
            if self.stop.is_set():
                return
            if self._reboot_s is not None:  # a deliberate restart, not a failure: off for a while, then anew
                delay, self._reboot_s = self._reboot_s, None
                self._drop_standby()
                self.selector.restart()
                self.next_delay_s = delay
                continue
            if not self.selector.stable():
                self.counts.short_sessions += 1
                log.info(
                    "%s: the session to %s ended within %.0fs (%s): a failed attempt",
                    self.thing,
                    self.selector.current,
                    self.policy.stable_after_s,
                    self.last_reason,
                )
            left = self.selector.current
            step = self.selector.disconnected(silent=self.last_reason in SILENT_REASONS)
            session = self._take_over(left)
            if session is None:
                delay = self.next_delay_s = self._moved(step)

    def _moved(self, step: NextAttempt) -> float:
        """Count and tell a failover the selector decided on; return how long to wait before the next try."""
        if step.failover_from is not None:
            self.counts.failovers += 1
            self.listeners.emit(FailedOver(self.thing, step.failover_from, step.endpoint, failback=False))
        return step.delay_s

    async def attempt(self, endpoint: Endpoint) -> Session | None:
        """One CONNECT to ``endpoint``: the session, or None (counted, told, and kept as ``last_error``)."""
        started = time.monotonic()
        try:
            session = await self.transport.connect(endpoint, self.options)
        except ConnectError as exc:
            self.counts.connect_failures += 1
            self.last_error = exc
            refused = refuses_identity(exc.reason)
            self.listeners.emit(ConnectFailed(self.thing, endpoint, exc.reason, refused=refused))
            self._count_refusal(endpoint, exc.reason if refused else None)
            self._settle_renewal(exc)
            return None
        except CertificateError as exc:  # a file changed under a running client: keep trying, loudly
            log.error("%s: %s", self.thing, exc.message)
            self.counts.connect_failures += 1
            self.last_error = ConnectError(exc.message, endpoint=str(endpoint), reason="identity")
            self.listeners.emit(ConnectFailed(self.thing, endpoint, "identity"))
            return None
        self._opened(endpoint, started)
        return session

    def _opened(self, endpoint: Endpoint, started: float) -> None:
        """A session to ``endpoint`` is up (its CONNECT began at ``started``): counted and told; the
        identity is accepted, so no refusal stands, and a renewal waiting for it is done."""
        self.counts.connects += 1
        self.sessions += 1
        self.refusals.clear()
        self.refusal = None
        self.refused.clear()
        self._settle_renewal(None)
        self.listeners.emit(Connected(self.thing, endpoint, time.monotonic() - started, self.sessions))

    def _count_refusal(self, endpoint: Endpoint, reason: str | None) -> None:
        """Keep each endpoint's last refusal; when every endpoint refuses, say so once, clearly."""
        if reason is None:
            self.refusals.pop(endpoint, None)
            return
        self.refusals[endpoint] = reason
        if self.refusal is not None or len(self.refusals) < len(set(self.selector.endpoints)):
            return
        reasons = {str(e): r for e, r in self.refusals.items()}
        self.refusal = IdentityRefused(
            f"{self.thing}: every endpoint refused this identity ("
            + ", ".join(f"{e}: {r}" for e, r in reasons.items())
            + f"). The certificate {self.options.identity.cert_file} may be revoked or inactive, or its policies "
            f"do not allow iot:Connect on client/{self.options.client_id}: check it in the registry (or rotate "
            f"it). Retrying every {self.policy.max_backoff_s:g}s or so.",
            endpoint=str(endpoint),
            reasons=reasons,
        )
        log.error("%s", self.refusal)
        self.refused.set()

    async def serve(self, session: Session) -> Session | None:
        """Run one session until it ends; return a replacement session if a failback probe connected."""
        self.session = session
        self.served = True
        self.publisher.attach(session, self._wake)
        with contextlib.suppress(ConnectionLost):  # the session died at once; closed is already set
            await self.inbound.restore(session)
        loop = asyncio.get_running_loop()
        for hook in self.hooks:
            task = loop.create_task(self._run_hook(hook, session.endpoint))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)
        self.connected.set()
        self.publisher.pump()
        self._keep_standby()
        ended = asyncio.ensure_future(_settled(session.closed))
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            while not ended.done() and not stop.done():
                look: asyncio.Future[None] = loop.create_future()
                self._look = look
                if self._renewal is not None or self._reboot_s is not None:
                    look.set_result(None)
                waits: set[asyncio.Future[Any]] = {ended, stop, look}
                await asyncio.wait(waits, timeout=self._probe_tick_s(), return_when=asyncio.FIRST_COMPLETED)
                if ended.done() or stop.done():
                    break
                over, replacement = await self._woken(session)
                if over:
                    return replacement
        finally:
            stop.cancel()
            if not ended.done():
                ended.cancel()
            self._look = None
            self.publisher.detach()
        if session.closed.done():
            self.last_reason = session.closed.result().reason
            self.listeners.emit(Disconnected(self.thing, session.endpoint, self.last_reason))
        elif self.stop.is_set():  # the loop ends: the session ends with it, not left to its owner
            await session.close()
        self._went_offline()
        return None

    async def _woken(self, session: Session) -> tuple[bool, Session | None]:
        """Act on what woke the loop: whether ``session`` is over, and the session that replaces it, if any."""
        if self._reboot_s is not None:
            await self._end(session, REBOOT)
            return True, None
        if self._renewal is not None:
            replacement = await self._renew(session)
            if replacement is not None:
                return True, replacement
        if self.publisher.ack_overdue():
            await self._end(session, DisconnectReason.ACK_TIMEOUT)
            return True, None
        if self.selector.failback_due():
            replacement = await self._fail_back(session)
            if replacement is not None:
                return True, replacement
        return False, None

    async def _end(self, session: Session, reason: str) -> None:
        """Close ``session`` on the device's side, for ``reason``, and tell it."""
        await session.close()
        self.last_reason = reason
        self.listeners.emit(Disconnected(self.thing, session.endpoint, reason))
        self._went_offline()

    def reboot(self, offline_s: float) -> None:
        """End the live session (a client DISCONNECT), stay offline ``offline_s``, then start over from the
        preferred endpoint with a fresh backoff, as a device that just booted. Offline already, the next
        attempt waits ``offline_s`` and starts over the same way."""
        if offline_s < 0:
            raise ConfigError("a reboot's offline time must be >= 0 seconds")
        self._reboot_s = offline_s
        self._wake()

    async def use_identity(self, identity: Identity) -> None:
        """Connect with ``identity`` from now on. Online, a new session is opened with it to the same endpoint
        before the old one is closed (make before break: the broker hands the client id over), and this
        returns once it is up; if the new identity is refused, the old one stays and the error is raised.
        Offline, the next attempt uses it."""
        previous = self.options
        self.options = dataclasses.replace(self.options, identity=identity)
        if self.session is None:
            self.refusals.clear()
            return
        renewal: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._renewal = renewal
        self._wake()
        try:
            await renewal
        except BaseException:
            self.options = previous
            raise

    def _settle_renewal(self, error: BaseException | None) -> None:
        """A session with the new identity is up (``None``), or an attempt with it failed."""
        renewal, self._renewal = self._renewal, None
        if renewal is None or renewal.done():
            return
        if error is None:
            renewal.set_result(None)
        else:
            renewal.set_exception(error)

    async def _renew(self, session: Session) -> Session | None:
        """Open a session with the new identity to ``session``'s endpoint, then close ``session``."""
        started = time.monotonic()
        try:
            replacement = await self.transport.connect(session.endpoint, self.options)
        except (ConnectError, CertificateError) as exc:
            self._settle_renewal(exc)
            return None
        self._went_offline()
        await session.close()
        self._opened(replacement.endpoint, started)
        self._drop_standby()  # reopened with the new identity once the new session is served
        return replacement

    async def close(self) -> None:
        """Close the live session and the standby, if any (the loop's task is cancelled by its owner)."""
        self._drop_standby()
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # ---------------------------------------------------------------- the standby session

    def _keep_standby(self) -> None:
        """Have a standby session open to the selector's standby target (moved there if it was elsewhere)."""
        target = self.selector.standby_target()
        if self._standby is not None and self._standby.endpoint == target:
            return
        self._drop_standby()
        if target is not None:
            standby = self._standby = _Standby(target)
            standby.task = asyncio.get_running_loop().create_task(self._hold_standby(standby))
            standby.task.add_done_callback(self._standby_ended)

    def _standby_ended(self, task: asyncio.Task[None]) -> None:
        """A standby task ends by being cancelled; anything else is a bug, logged (the device goes on
        without a standby until its next session)."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: the standby session's task failed", self.thing, exc_info=exc)

    async def _hold_standby(self, standby: _Standby) -> None:
        """Keep ``standby`` open until it is dropped or taken over: connect, wait for the session's end,
        reconnect, backing off as the selector's policy says while the endpoint is down. Its attempts
        are not the device's (no events, no counts): it serves nothing until it takes over."""
        level = 0
        while True:
            started = time.monotonic()
            try:
                session = await self.transport.connect(standby.endpoint, self.options)
            except (ConnectError, CertificateError) as exc:
                log.debug("%s: standby to %s: %s", self.thing, standby.endpoint, exc)
                level += 1
                ceiling = min(self.policy.max_backoff_s, self.policy.min_backoff_s * 2**level)
                await asyncio.sleep(self.selector.jitter() * ceiling)
                continue
            level = 0
            standby.session, standby.connect_s = session, time.monotonic() - started
            with contextlib.suppress(Exception):  # not CancelledError: taken over or dropped, this task ends
                await asyncio.shield(session.closed)
            standby.session = None
            await asyncio.sleep(self.selector.jitter() * self.policy.min_backoff_s)

    def _take_standby(self) -> tuple[Session, float] | None:
        """The open standby session and its connect time, now the caller's; None if there is none."""
        standby = self._standby
        session = None if standby is None else standby.session
        if standby is None or session is None or session.closed.done():
            return None
        standby.session, self._standby = None, None
        if standby.task is not None:
            standby.task.cancel()
        return session, standby.connect_s

    def _take_over(self, left: Endpoint) -> Session | None:
        """The live session to ``left`` ended: the open standby session, if any, is the device's now (a
        failover, or a failback on the preferred endpoint)."""
        taken = self._take_standby()
        if taken is None:
            return None
        session, connect_s = taken
        self.selector.promoted(session.endpoint)
        self.counts.failovers += 1
        failback = session.endpoint == self.selector.preferred
        self.listeners.emit(FailedOver(self.thing, left, session.endpoint, failback=failback))
        self._opened(session.endpoint, time.monotonic() - connect_s)
        return session

    def _drop_standby(self) -> None:
        """Stop keeping a standby; its open session is closed in the background (awaited by :meth:`close`)."""
        standby, self._standby = self._standby, None
        if standby is None:
            return
        if standby.task is not None:
            standby.task.cancel()
        if standby.session is not None:
            task = asyncio.get_running_loop().create_task(standby.session.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            standby.session = None

    def _wake(self) -> None:
        if self._look is not None and not self._look.done():
            self._look.set_result(None)

    def _went_offline(self) -> None:
        self.session = None
        self.connected.clear()
        self.publisher.detach()

    def _probe_tick_s(self) -> float | None:
        """How long the loop may sleep: for ever on the preferred endpoint (the publisher's ack timer
        wakes it), else until the next failback probe may be due. Idle devices never wake: a large
        fleet of them costs no CPU."""
        if self.selector.failback_due() or self.selector.current != self.selector.preferred:
            return max(0.05, self.policy.failback_probe_s / 4)
        return None

    async def _fail_back(self, session: Session) -> Session | None:
        """Move back to the preferred endpoint: the standby session there takes over if it is open (if
        the standby is still trying it, wait for the next probe), else a probe connects. On success
        close ``session`` and return the new one."""
        preferred = self.selector.preferred
        replacement: Session | None
        if self._standby is not None and self._standby.endpoint == preferred:
            taken = self._take_standby()
            if taken is None:
                self.selector.probe_failed()
                return None
            replacement, connect_s = taken
            self.selector.promoted(preferred)
            self._opened(preferred, time.monotonic() - connect_s)
        else:
            replacement = await self._probe_preferred()
            if replacement is None:
                return None
        self._went_offline()
        self.listeners.emit(FailedOver(self.thing, session.endpoint, replacement.endpoint, failback=True))
        self.counts.failovers += 1
        await session.close()
        return replacement

    async def _probe_preferred(self) -> Session | None:
        session = await self.attempt(self.selector.preferred)
        if session is None:
            self.selector.probe_failed()
            return None
        self.selector.failed_back()
        return session

    async def _run_hook(self, hook: SessionStart, endpoint: Endpoint) -> None:
        try:
            await hook(endpoint)
        except Exception:  # a hook's failure is logged; the session goes on
            log.exception("%s: session hook %r failed", self.thing, hook)


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` without raising its exception."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.shield(future)


async def _wait_or(event: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds unless ``event`` is set first; return whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), delay)
    except TimeoutError:
        return False
    return True
