"""Requests answered on reserved topics and matched by ``clientToken``, one session at a time: what the
shadow client and the jobs client both do (AWS's IotShadowClientV2 and IotJobsClientV2 match theirs so).

A request publishes ``body`` with a new ``clientToken`` and waits for the answer that echoes it. When
the session ends first, every waiting request fails at once with ConnectionLost instead of timing out;
no answer within the timeout is RequestTimeout.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from iotfleet.device.events import DeviceEvent, EventKind
from iotfleet.errors import ConnectionLost, RequestTimeout
from iotfleet.transport.base import InboundMessage

__all__ = ["Correlated"]


class _Device(Protocol):
    thing: str

    async def publish_to(self, topic: str, payload: Any, *, qos: int = 1, timeout: float | None = None) -> Any: ...

    def add_listener(self, listener: Callable[[DeviceEvent], None]) -> None: ...


class Correlated:
    """The requests a client of ``service`` (named in errors: "the shadow", "Jobs") has waiting on ``device``."""

    def __init__(self, device: _Device, service: str) -> None:
        self.device = device
        self.service = service
        self._pending: dict[str, asyncio.Future[InboundMessage]] = {}
        device.add_listener(self._on_event)

    def _on_event(self, event: DeviceEvent) -> None:
        """Answers are per session: when it ends, waiting requests fail now instead of timing out."""
        if event.kind is EventKind.DISCONNECTED:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(
                        ConnectionLost(f"{self.device.thing}'s session ended before {self.service} answered")
                    )

    def resolve(self, message: InboundMessage) -> bool:
        """Hand an answer to the request whose ``clientToken`` it echoes (if one waits); False when the
        answer cannot be read (the caller counts or logs it)."""
        try:
            token = json.loads(message.payload).get("clientToken")
        except (ValueError, AttributeError):
            return False
        future = self._pending.get(token) if isinstance(token, str) else None
        if future is not None and not future.done():
            future.set_result(message)
        return True

    async def request(
        self, topic: str, body: Mapping[str, Any], timeout: float, what: str
    ) -> tuple[str, InboundMessage]:
        """Publish ``body`` to ``topic`` with a new clientToken; the token and the answer. ``what`` names
        the request in a RequestTimeout ("shadow get", "jobs start-next")."""
        token = uuid.uuid4().hex
        answer: asyncio.Future[InboundMessage] = asyncio.get_running_loop().create_future()
        self._pending[token] = answer
        try:
            await self.device.publish_to(topic, {**body, "clientToken": token}, timeout=timeout)
            return token, await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"no answer to {what} of {self.device.thing} within {timeout}s",
                operation=what.replace(" ", "-"),
                timeout=timeout,
            ) from None
        finally:
            self._pending.pop(token, None)
            if answer.done() and not answer.cancelled():
                # a session that ended while the request was still being sent (publish_to failed): the
                # answer's ConnectionLost is the same failure, already raised; mark it retrieved
                answer.exception()
