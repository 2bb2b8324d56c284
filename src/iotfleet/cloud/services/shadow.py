"""The local Device Shadow service: classic and named shadows on AWS's reserved topics.

Requests arrive on ``$aws/things/<thing>/shadow[/name/<name>]/{get,update,delete}``; answers go to
``.../accepted`` or ``.../rejected``, and after every accepted update to ``.../update/documents`` and,
when desired and reported differ, ``.../update/delta``. The document rules live in
:mod:`iotfleet.shadow.document`; this module adds the topics, the registry check (404 "Thing not found"),
persistence in the region's SQLite file, per-thing request rate (429) and an operator API for tests.
A request the store cannot serve gets IoT Core's 500 "Internal service failure"; the failure is
recorded in the cloud's failures (never silent), and the service goes on.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotfleet._rate import TokenBucket, over_rate
from iotfleet.cloud.registry import Registry
from iotfleet.cloud.services.base import RegionService, ServiceHost
from iotfleet.errors import ShadowRejected
from iotfleet.shadow import document
from iotfleet.shadow.document import ShadowLimits, StoredShadow
from iotfleet.topics import ShadowOp, ShadowTopics
from iotfleet.transport.base import InboundMessage

__all__ = ["REQUEST_FILTERS", "ShadowOperator", "ShadowService", "ShadowStore"]

REQUEST_FILTERS = ("$aws/things/+/shadow/+", "$aws/things/+/shadow/name/+/+")
_REQUEST = re.compile(r"\$aws/things/([^/]+)/shadow(?:/name/([^/]+))?/(get|update|delete)")
RATE_PER_THING = 20  # requests per second per thing (IOT_CORE.md section 4)


class ShadowStore:
    """Shadows of one region in SQLite (WAL), keyed by thing and shadow name ('' for the classic one)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS shadows (thing TEXT NOT NULL, name TEXT NOT NULL, document TEXT NOT NULL, "
            "PRIMARY KEY (thing, name))"
        )

    def get(self, thing: str, name: str | None) -> StoredShadow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT document FROM shadows WHERE thing = ? AND name = ?", (thing, name or "")
            ).fetchone()
        return StoredShadow.from_json(row[0]) if row else None

    def put(self, thing: str, name: str | None, shadow: StoredShadow) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO shadows(thing, name, document) VALUES (?, ?, ?) "
                "ON CONFLICT(thing, name) DO UPDATE SET document = excluded.document",
                (thing, name or "", shadow.to_json()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True, slots=True)
class _Answer:
    topic: str
    body: dict[str, Any]


class ShadowService(RegionService):
    """Serves one region's shadow topics; one instance per region."""

    kind = "shadow"
    filters = REQUEST_FILTERS

    def __init__(
        self, *, region: str, registry: Registry, store: ShadowStore, limits: ShadowLimits | None = None
    ) -> None:
        super().__init__(region)
        self.registry = registry
        self.store = store
        self.limits = limits or ShadowLimits()
        self.replicas: list[ShadowStore] = []  # other regions' stores, when classic shadows replicate
        self.requests = 0
        self.rejected: dict[int, int] = defaultdict(int)
        self._buckets: dict[str, TokenBucket] = {}  # per thing: a second of burst, then RATE_PER_THING a second

    # ---- the MQTT path

    def on_message(self, message: InboundMessage) -> None:
        match = _REQUEST.fullmatch(message.topic)
        if match is None:
            return
        thing, name, op = match.group(1), match.group(2), ShadowOp(match.group(3))
        self.requests += 1
        self.serve(thing, name, op, message.payload, now=time.time())

    def serve(self, thing: str, name: str | None, op: ShadowOp, payload: bytes, *, now: float) -> list[_Answer]:
        """Handle one request and publish its answers, as a request over MQTT is (the operator's way in)."""
        answers = self.handle(thing, name, op, payload, now=now)
        for answer in answers:
            self._send(answer)
        return answers

    def _keep(self, thing: str, name: str | None, shadow: StoredShadow) -> None:
        """Persist a shadow; a classic one is also copied to the replica regions (as the AWS DR solution does)."""
        self.store.put(thing, name, shadow)
        if name is None:
            for replica in self.replicas:
                replica.put(thing, None, shadow)

    def _send(self, answer: _Answer) -> None:
        if self.connection is not None:
            self.connection.publish(answer.topic, json.dumps(answer.body, separators=(",", ":")).encode())

    def handle(self, thing: str, name: str | None, op: ShadowOp, payload: bytes, *, now: float) -> list[_Answer]:
        """Apply one request; return the messages to publish (accepted/rejected, documents, delta)."""
        topics = ShadowTopics(thing, name)
        seconds = int(now)
        try:
            if self.registry.thing(thing) is None:
                _, token = _token_of(payload)
                raise ShadowRejected(404, "Thing not found", client_token=token)
            if over_rate(self._buckets, thing, RATE_PER_THING, now):
                _, token = _token_of(payload)
                raise ShadowRejected(429, "Too Many Requests", client_token=token)
            stored = self.store.get(thing, name)
            if op is ShadowOp.GET:
                return [
                    _Answer(
                        topics.accepted(op),
                        document.get(stored, payload, seconds, thing=thing, name=name, limits=self.limits),
                    )
                ]
            if op is ShadowOp.DELETE:
                gone, accepted = document.delete(stored, payload, seconds, thing=thing, name=name, limits=self.limits)
                self._keep(thing, name, gone)
                return [_Answer(topics.accepted(op), accepted)]
            outcome = document.update(stored, payload, seconds, self.limits)
            self._keep(thing, name, outcome.shadow)
            answers = [_Answer(topics.accepted(op), outcome.accepted), _Answer(topics.documents, outcome.documents)]
            if outcome.delta is not None:
                answers.append(_Answer(topics.delta, outcome.delta))
            return answers
        except ShadowRejected as exc:
            return [self._rejection(topics, op, exc, seconds)]
        except Exception as exc:  # noqa: BLE001 - the store failed: recorded, answered 500 as IoT Core does, go on
            self.failures.record(f"shadow {self.region} store", exc)
            _, token = _token_of(payload)
            return [
                self._rejection(
                    topics, op, ShadowRejected(500, "Internal service failure", client_token=token), seconds
                )
            ]

    def _rejection(self, topics: ShadowTopics, op: ShadowOp, exc: ShadowRejected, seconds: int) -> _Answer:
        self.rejected[exc.code] += 1
        body: dict[str, Any] = {"code": exc.code, "message": exc.error, "timestamp": seconds}
        if exc.client_token is not None:
            body["clientToken"] = exc.client_token
        return _Answer(topics.rejected(op), body)


def _token_of(payload: bytes) -> tuple[dict[str, Any], str | None]:
    try:
        return document.parse_request(payload)
    except ShadowRejected:
        return {}, None


class ShadowOperator:
    """Operator access to one region's shadows, for tests and the simulator (the AWS console/API role).

    Changes go through the service, so devices get their delta and documents messages as usual.
    """

    def __init__(self, service: ShadowService, host: ServiceHost) -> None:
        self._service = service
        self._host = host

    def update(
        self,
        thing: str,
        *,
        desired: dict[str, Any] | None = None,
        reported: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Update a shadow as an operator would; return the ``/update/accepted`` document."""
        state: dict[str, Any] = {}
        if desired is not None:
            state["desired"] = desired
        if reported is not None:
            state["reported"] = reported
        return self._run(thing, name, ShadowOp.UPDATE, json.dumps({"state": state}).encode())

    def get(self, thing: str, *, name: str | None = None) -> dict[str, Any]:
        """The ``/get/accepted`` document of a shadow; raises :class:`ShadowRejected` (404) if there is none."""
        return self._run(thing, name, ShadowOp.GET, b"")

    def delete(self, thing: str, *, name: str | None = None) -> dict[str, Any]:
        return self._run(thing, name, ShadowOp.DELETE, b"")

    def request(self, thing: str, op: ShadowOp, payload: bytes, *, name: str | None = None) -> dict[str, Any]:
        """A raw request (the body a device would send, e.g. an update with ``version``), as the HTTP
        control plane's GetThingShadow / UpdateThingShadow / DeleteThingShadow make it; the accepted
        document, or :class:`ShadowRejected`."""
        return self._run(thing, name, op, payload)

    def _run(self, thing: str, name: str | None, op: ShadowOp, payload: bytes) -> dict[str, Any]:
        service = self._service

        async def apply() -> list[_Answer]:
            return service.serve(thing, name, op, payload, now=time.time())

        first = self._host.call(apply())[0]
        if first.topic.endswith("/rejected"):
            raise ShadowRejected(first.body["code"], first.body["message"])
        return first.body
