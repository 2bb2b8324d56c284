"""The device side of Device Shadows: requests correlated by clientToken, deltas, and a sync engine.

::

    shadow = Shadow(device)                        # classic; Shadow(device, "config") for a named one
    doc = await shadow.get()                       # ShadowDocument, or ShadowRejected(404)
    await shadow.update(reported={"dim": 40})
    async for delta in shadow.deltas(): ...

    sync = ShadowSync(shadow, handlers={"dim": luminaire.set_dim}, state_file=Path("lamp-1.shadow.json"))
    await sync.start()     # resyncs now and on every new session, including after a regional failover

Each request is one awaitable with a timeout: publish (QoS 1) and wait for ``/accepted`` or ``/rejected``
carrying our clientToken; when the session drops first, the request fails at once with ConnectionLost.
The exact topics are subscribed (AWS advises against ``shadow/#``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from iotfleet._files import write_private
from iotfleet.config import Endpoint
from iotfleet.device.correlated import Correlated
from iotfleet.device.stream import Stream
from iotfleet.errors import ClientError, ShadowRejected
from iotfleet.shadow.document import merge
from iotfleet.topics import ShadowOp, ShadowTopics
from iotfleet.transport.base import InboundMessage

if TYPE_CHECKING:
    from iotfleet.device.client import DeviceClient

__all__ = ["Shadow", "ShadowDelta", "ShadowDocument", "ShadowState", "ShadowSync"]

log = logging.getLogger(__name__)
_UNSET: Final = object()


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class ShadowState(_Wire):
    desired: dict[str, Any] | None = None
    reported: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None


class ShadowDocument(_Wire):
    """``/get/accepted`` or ``/update/accepted``."""

    state: ShadowState = ShadowState()
    metadata: dict[str, Any] = {}
    version: int
    timestamp: int | None = None
    client_token: str | None = Field(default=None, alias="clientToken")


class ShadowDelta(_Wire):
    """``/update/delta``: the desired values that differ from reported."""

    state: dict[str, Any]
    metadata: dict[str, Any] = {}
    version: int
    timestamp: int | None = None
    client_token: str | None = Field(default=None, alias="clientToken")


class Shadow:
    """One shadow of the device's thing: ``Shadow(device)`` (classic) or ``Shadow(device, name)``.

    Build one per shadow and keep it: each registers its handlers with the device and subscribes
    to its answer topics once.
    """

    def __init__(self, device: DeviceClient, name: str | None = None, *, timeout: float = 10.0) -> None:
        self.device = device
        self.name = name
        self.topics = ShadowTopics(device.thing, name)
        self.timeout = timeout
        self._requests = Correlated(device, "the shadow")
        self._delta_streams: list[Stream[ShadowDelta]] = []
        self._subscribing: asyncio.Task[None] | None = None
        self.malformed = 0  # answers that could not be parsed: counted, logged, never silently dropped
        for op in ShadowOp:
            device.add_message_handler(self.topics.accepted(op), self._on_answer)
            device.add_message_handler(self.topics.rejected(op), self._on_answer)
        device.add_message_handler(self.topics.delta, self._on_delta)

    async def _subscribe(self) -> None:
        """Subscribe once; every caller waits until all the SUBACKs are in (no answer may slip past)."""
        if self._subscribing is None:
            self._subscribing = asyncio.get_running_loop().create_task(self._subscribe_all())
        await asyncio.shield(self._subscribing)

    async def _subscribe_all(self) -> None:
        answers = [t for op in ShadowOp for t in (self.topics.accepted(op), self.topics.rejected(op))]
        for topic in [*answers, self.topics.delta]:
            await self.device.subscribe(topic)

    def _on_answer(self, message: InboundMessage) -> None:
        if not self._requests.resolve(message):
            self.malformed += 1
            log.warning("%s: unreadable shadow answer on %s", self.device.thing, message.topic)

    def _on_delta(self, message: InboundMessage) -> None:
        try:
            delta = ShadowDelta.model_validate_json(message.payload)
        except ValueError:
            self.malformed += 1
            log.warning("%s: unreadable shadow delta on %s", self.device.thing, message.topic)
            return
        for stream in list(self._delta_streams):
            if not stream.put(delta):
                log.warning(
                    "%s: shadow delta %d dropped: its reader is %d behind",
                    self.device.thing,
                    delta.version,
                    stream.maxsize,
                )

    async def _request(self, op: ShadowOp, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        await self._subscribe()
        wait = self.timeout if timeout is None else timeout
        token, message = await self._requests.request(self.topics.request(op), body, wait, f"shadow {op}")
        payload: dict[str, Any] = json.loads(message.payload)
        if message.topic.endswith("/rejected"):
            raise ShadowRejected(int(payload.get("code", 0)), str(payload.get("message", "")), client_token=token)
        return payload

    async def get(self, *, timeout: float | None = None) -> ShadowDocument:
        """The whole document (desired, reported, delta, metadata, version); 404 raises ShadowRejected."""
        return ShadowDocument.model_validate(await self._request(ShadowOp.GET, {}, timeout))

    async def update(
        self, *, desired: Any = _UNSET, reported: Any = _UNSET, version: int | None = None, timeout: float | None = None
    ) -> ShadowDocument:
        """Partial update: omitted sections stay, ``None`` values delete (``desired=None`` drops the section)."""
        state: dict[str, Any] = {}
        if desired is not _UNSET:
            state["desired"] = desired
        if reported is not _UNSET:
            state["reported"] = reported
        body: dict[str, Any] = {"state": state}
        if version is not None:
            body["version"] = version
        return ShadowDocument.model_validate(await self._request(ShadowOp.UPDATE, body, timeout))

    async def delete(self, *, timeout: float | None = None) -> int:
        """Delete the shadow; return its version, which a recreation within 48 hours continues."""
        return int((await self._request(ShadowOp.DELETE, {}, timeout))["version"])

    def deltas(self) -> Stream[ShadowDelta]:
        """Every ``/update/delta`` from now until the device client closes.

        ``await shadow.deltas()`` returns once the shadow's topics are subscribed; ``async for`` over it
        does the same before its first delta.
        """
        name = f"shadow {self.name or 'classic'} deltas"
        stream: Stream[ShadowDelta] = self.device.open_stream(name, self._subscribe)
        self._delta_streams.append(stream)  # collecting now: nothing between the SUBACK and a read is lost
        stream.on_end(self._delta_streams.remove)
        return stream


Handler = Callable[[Any], Any]


class ShadowSync:
    """Keeps a device's reported state and its shadow in step.

    On every delta (newer than the last version seen; older ones are dropped and counted) each key's
    handler applies the desired value and returns the value to report (``None``: the desired value).
    Keys without a handler go to ``default`` if given, else are reported as desired. The reported state
    is kept in ``state_file`` (0600) so a restarted device republishes it. On every new session, and so
    after a failover, it re-gets the shadow, resets version tracking (the other region's shadow is a
    different document), applies any delta and republishes the whole reported state; a resync that
    fails (throttled, timed out, session lost) is tried again on the next session. A 409 on a report
    re-gets the version and retries; a report that fails (session lost, timeout) is logged, counted in
    ``report_failures`` and left to the next resync.
    """

    def __init__(
        self,
        shadow: Shadow,
        *,
        handlers: Mapping[str, Handler] | None = None,
        default: Handler | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.shadow = shadow
        self.handlers = dict(handlers or {})
        self.default = default
        self.state_file = state_file
        self.reported: dict[str, Any] = self._load()
        self.version: int | None = None
        self.applied = 0
        self.stale_dropped = 0
        self.report_failures = 0
        self.resyncs = 0
        self._resync_failed = False
        self.handler_errors = 0
        self._task: asyncio.Task[None] | None = None
        self._deltas: Stream[ShadowDelta] | None = None
        self._lock = asyncio.Lock()

    def _load(self) -> dict[str, Any]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            data = json.loads(self.state_file.read_text())
        except ValueError as exc:
            raise ClientError(f"the shadow state file {self.state_file} is unreadable ({exc}); move it aside") from exc
        return dict(data.get("reported", {}))

    def _save(self) -> None:
        if self.state_file is not None:
            write_private(self.state_file, json.dumps({"reported": self.reported}).encode())

    async def start(self) -> None:
        """Resync now, then follow deltas and resync on every new session."""
        self.shadow.device.add_session_hook(self._on_session)
        self._deltas = await self.shadow.deltas()  # subscribed: no delta from here on is missed
        self._task = asyncio.get_running_loop().create_task(self._follow(self._deltas))
        await self.resync()

    async def stop(self) -> None:
        if self._deltas is not None:
            await self._deltas.aclose()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _on_session(self, _device: DeviceClient, _endpoint: Endpoint) -> None:
        # the first session is covered by start(); a resync that failed is tried again on the next one
        if self.version is not None or self._resync_failed:
            await self.resync()

    async def resync(self) -> None:
        async with self._lock:
            self.resyncs += 1
            self._resync_failed = True
            try:
                doc: ShadowDocument | None = await self.shadow.get()
            except ShadowRejected as exc:
                if exc.code != 404:
                    raise
                doc = None
            self.version = doc.version if doc is not None else 0
            if doc is not None and doc.state.delta:
                self._apply(doc.state.delta)
            if self.reported:
                await self._report(self.reported)
            self._resync_failed = False

    async def _follow(self, deltas: Stream[ShadowDelta]) -> None:
        """Apply every delta until the device closes; one failing delta never stops the ones after it."""
        async for delta in deltas:
            try:
                await self._on_delta(delta)
            except ClientError as exc:  # the next session's resync republishes the reported state
                self.report_failures += 1
                log.warning("%s: shadow delta %d not reported: %s", self.shadow.device.thing, delta.version, exc)
            except Exception:  # a handler's bug: counted and logged, the sync goes on
                self.handler_errors += 1
                log.exception("%s: applying shadow delta %d failed", self.shadow.device.thing, delta.version)

    async def _on_delta(self, delta: ShadowDelta) -> None:
        async with self._lock:
            if self.version is not None and delta.version <= self.version:
                self.stale_dropped += 1
                return
            self.version = delta.version
            changes = self._apply(delta.state)
            if changes:
                await self._report(changes)

    def _apply(self, delta: Mapping[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for key, value in delta.items():
            handler = self.handlers.get(key, self.default)
            result = handler(value) if handler is not None else None
            changes[key] = value if result is None else result
            self.applied += 1
        self.reported = merge(self.reported, changes)
        self._save()
        return changes

    async def report(self, values: Mapping[str, Any]) -> None:
        """Report the device's own state changes (a sensor reading, a local button press): kept and published."""
        async with self._lock:
            self.reported = merge(self.reported, dict(values))
            self._save()
            await self._report(values)

    async def _report(self, values: Mapping[str, Any]) -> None:
        values = dict(values)
        for _ in range(3):
            try:
                accepted = await self.shadow.update(reported=values, version=self.version)
            except ShadowRejected as exc:
                if exc.code != 409:
                    raise
                # someone else updated: catch up. The newer document may carry a desired change whose
                # delta is then dropped as stale (its version is not newer), so apply it from here.
                doc = await self.shadow.get()
                self.version = doc.version
                if doc.state.delta:
                    values.update(self._apply(doc.state.delta))
                continue
            self.version = accepted.version
            return
        raise ClientError(f"{self.shadow.device.thing}: the shadow kept changing; reported state not published")
