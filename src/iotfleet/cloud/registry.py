"""A region's registry: things, certificates and policies in SQLite (WAL).

Each region has its own file, as each AWS region has its own registry; :class:`Replicator` copies
registrations between them with a configurable lag (the shape of a DynamoDB global table).
"""

from __future__ import annotations

import heapq
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from iotfleet.cloud.owned import KEEP, Failures
from iotfleet.errors import RegistryError
from iotfleet.topics import validate_thing_name

__all__ = ["CertificateRecord", "CertificateStatus", "Registration", "Registry", "Replicator", "Thing"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS things (
    name TEXT PRIMARY KEY,
    attributes TEXT NOT NULL,
    policy TEXT NOT NULL REFERENCES policies(name),
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    id TEXT PRIMARY KEY,
    common_name TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    status TEXT NOT NULL,
    thing TEXT REFERENCES things(name) ON DELETE SET NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_thing ON certificates(thing);
"""


class CertificateStatus(StrEnum):
    """AWS IoT certificate states."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    PENDING_ACTIVATION = "PENDING_ACTIVATION"
    REVOKED = "REVOKED"


@dataclass(frozen=True, slots=True)
class Thing:
    """A registered thing; ``tenant`` and ``site`` are attributes the device policy reads."""

    name: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    policy: str = "iotfleet-device"

    @property
    def tenant(self) -> str | None:
        return self.attributes.get("tenant")

    @property
    def site(self) -> str | None:
        return self.attributes.get("site")


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A certificate known to a region. ``common_name`` is the broker identity (the username)."""

    certificate_id: str
    common_name: str
    pem: str
    status: CertificateStatus
    thing: str | None


@dataclass(frozen=True, slots=True)
class Registration:
    """Everything a region needs to let one thing connect: the thing, its certificate, its policy."""

    thing: Thing
    certificate: CertificateRecord
    policy_document: Mapping[str, Any]


class Registry:
    """One region's registry in ``path`` (SQLite, WAL). Safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ writes

    def put(self, *registrations: Registration) -> None:
        """Record things, their policies and their certificates (attached) in one transaction.

        Re-putting the same registration is a no-op, so replication is idempotent. A certificate
        already attached to another thing, or an identity already used, fails the whole transaction.
        """
        for registration in registrations:
            validate_thing_name(registration.thing.name)
        with self._tx() as db:
            for registration in registrations:
                _put_one(db, registration)

    def add_certificate(self, record: CertificateRecord) -> None:
        """Record a certificate attached to no thing (fleet provisioning's ``PENDING_ACTIVATION`` ones)."""
        with self._tx() as db:
            try:
                db.execute(
                    "INSERT INTO certificates(id, common_name, pem, status, thing, created) "
                    "VALUES (?, ?, ?, ?, NULL, ?)",
                    (record.certificate_id, record.common_name, record.pem, record.status, time.time()),
                )
            except sqlite3.IntegrityError as exc:
                raise RegistryError(f"certificate {record.certificate_id[:12]}... is already registered") from exc

    def delete_unused_certificate(self, certificate_id: str) -> bool:
        """Delete a certificate that is still ``PENDING_ACTIVATION`` and attached to nothing; True if it was."""
        with self._tx() as db:
            deleted = db.execute(
                "DELETE FROM certificates WHERE id = ? AND thing IS NULL AND status = ?",
                (certificate_id, CertificateStatus.PENDING_ACTIVATION.value),
            ).rowcount
        return deleted > 0

    def delete_thing(self, name: str) -> None:
        """Remove a thing; its certificates stay, detached (they can no longer connect)."""
        with self._tx() as db:
            if db.execute("DELETE FROM things WHERE name = ?", (name,)).rowcount == 0:
                raise RegistryError(f"no thing named {name!r} in {self.path.name}")

    def set_status(self, certificate_id: str, status: CertificateStatus) -> None:
        with self._tx() as db:
            if db.execute("UPDATE certificates SET status = ? WHERE id = ?", (status, certificate_id)).rowcount == 0:
                raise RegistryError(f"no certificate with id {certificate_id!r}")

    # ------------------------------------------------------------------ reads

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def thing(self, name: str) -> Thing | None:
        rows = self._query("SELECT name, attributes, policy FROM things WHERE name = ?", (name,))
        return Thing(rows[0][0], json.loads(rows[0][1]), rows[0][2]) if rows else None

    def things(self) -> list[Thing]:
        return [Thing(n, json.loads(a), p) for n, a, p in self._query("SELECT name, attributes, policy FROM things")]

    def certificate_by_identity(self, common_name: str) -> CertificateRecord | None:
        rows = self._query(
            "SELECT id, common_name, pem, status, thing FROM certificates WHERE common_name = ?",
            (common_name,),
        )
        return _cert(rows[0]) if rows else None

    def certificate(self, certificate_id: str) -> CertificateRecord | None:
        rows = self._query(
            "SELECT id, common_name, pem, status, thing FROM certificates WHERE id = ?", (certificate_id,)
        )
        return _cert(rows[0]) if rows else None

    def policy(self, name: str) -> dict[str, Any] | None:
        rows = self._query("SELECT document FROM policies WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def connectable(self) -> list[tuple[CertificateRecord, Thing, dict[str, Any]]]:
        """Every ACTIVE certificate attached to a thing, with the thing and its policy document."""
        rows = self._query(
            "SELECT c.id, c.common_name, c.pem, c.status, c.thing, t.attributes, t.policy, p.document "
            "FROM certificates c JOIN things t ON c.thing = t.name JOIN policies p ON t.policy = p.name "
            "WHERE c.status = ? ORDER BY c.common_name",
            (CertificateStatus.ACTIVE.value,),
        )
        return [(_cert(r[:5]), Thing(r[4], json.loads(r[5]), r[6]), json.loads(r[7])) for r in rows]

    def acl_rows(self) -> list[tuple[str, str, str, str]]:
        """``(identity, thing, attributes JSON, policy JSON)`` for every connectable certificate, unparsed,
        so that a caller can cache what it renders from each row."""
        rows = self._query(
            "SELECT c.common_name, c.thing, t.attributes, p.document "
            "FROM certificates c JOIN things t ON c.thing = t.name JOIN policies p ON t.policy = p.name "
            "WHERE c.status = ? ORDER BY c.common_name",
            (CertificateStatus.ACTIVE.value,),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]


def _put_one(db: sqlite3.Connection, registration: Registration) -> None:
    thing, cert = registration.thing, registration.certificate
    db.execute(
        "INSERT INTO policies(name, document) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET document = excluded.document",
        (thing.policy, json.dumps(registration.policy_document, sort_keys=True)),
    )
    db.execute(
        "INSERT INTO things(name, attributes, policy, created) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET attributes = excluded.attributes, policy = excluded.policy",
        (thing.name, json.dumps(dict(thing.attributes), sort_keys=True), thing.policy, time.time()),
    )
    row = db.execute("SELECT thing FROM certificates WHERE id = ?", (cert.certificate_id,)).fetchone()
    if row is not None and row[0] not in (None, thing.name):
        raise RegistryError(
            f"certificate {cert.certificate_id[:12]}... is attached to thing {row[0]!r}; "
            f"detach it before attaching it to {thing.name!r}"
        )
    try:
        db.execute(
            "INSERT INTO certificates(id, common_name, pem, status, thing, created) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status = excluded.status, thing = excluded.thing",
            (cert.certificate_id, cert.common_name, cert.pem, cert.status, thing.name, time.time()),
        )
    except sqlite3.IntegrityError as exc:
        raise RegistryError(
            f"another certificate already uses the identity {cert.common_name!r}: each certificate's "
            "common name must be unique"
        ) from exc


def _cert(row: tuple[Any, ...]) -> CertificateRecord:
    return CertificateRecord(row[0], row[1], row[2], CertificateStatus(row[3]), row[4])


class Replicator:
    """Copies batches of registrations from one region to the others after ``lag`` seconds.

    ``apply(region, registrations)`` does the copy. With ``lag == 0`` the copy happens before
    :meth:`replicate` returns, and a copy that fails raises to its caller (the registration that asked
    for it fails). Otherwise one background thread, owned by ``failures``, applies copies when they fall
    due, in order; a copy that fails is kept in :attr:`errors` (the first :data:`~iotfleet.cloud.owned.KEEP`)
    and recorded in ``failures``, which logs it and counts it, and the next copies go on. The cloud's
    ``failures`` are surfaced by ``LocalCloud.ingest_stats()`` while it runs and ``LocalCloud.stop()``'s
    problems.
    """

    def __init__(
        self,
        apply: Callable[[str, tuple[Registration, ...]], None],
        *,
        lag: float = 0.0,
        failures: Failures | None = None,
    ) -> None:
        if lag < 0:
            raise ValueError("replication lag must be >= 0 seconds")
        self.lag = lag
        self.failures = failures or Failures()
        self._apply = apply
        self._heap: list[tuple[float, int, str, tuple[Registration, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def replicate(self, registrations: tuple[Registration, ...], targets: list[str]) -> None:
        if self.lag == 0:
            for target in targets:
                self._apply(target, registrations)
            return
        with self._cond:
            if self._thread is None:
                self._thread = self.failures.thread(self._run, "replicator")
            due = time.monotonic() + self.lag
            for target in targets:
                heapq.heappush(self._heap, (due, next(self._seq), target, registrations))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(timeout=(self._heap[0][0] - time.monotonic()) if self._heap else None)
                if self._closed:
                    return
                _, _, target, registrations = heapq.heappop(self._heap)
            try:
                self._apply(target, registrations)
            except Exception as exc:  # noqa: BLE001 - recorded, surfaced by LocalCloud; next copies go on
                names = ", ".join(r.thing.name for r in registrations[:5])
                more = f" and {len(registrations) - 5} more" if len(registrations) > 5 else ""
                error = f"replicating {names}{more} to {target}: {exc}"
                if len(self.errors) < KEEP:
                    self.errors.append(error)
                self.failures.record(f"replicator to {target}", error)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
