"""A region's registry: things, certificates, policies and which policies each certificate has, in SQLite (WAL).

As on AWS IoT, policies are attached to certificates (principals), any number each; a thing may have
several certificates (during a rotation), and a certificate may be attached to several things
(AttachThingPrincipal's default, NON_EXCLUSIVE_THING: the thing policy variables then resolve for the
connection whose client id is one of those things' names). A thing record has a version: 1 when it is
created, one more at each update (UpdateThing, or a registration that changes its attributes); an
update or delete may require the version it expects (:class:`VersionConflict` otherwise). Every change
is a value (:data:`Change`): a :class:`Registration`, a :class:`PolicyAttachment`, a
:class:`StatusChange`, ... applied by :meth:`Registry.apply` in one transaction. Each region has its own
file, as each AWS region has its own registry; :class:`Replicator` copies changes between them with a
configurable lag (the shape of a DynamoDB global table), and a region applies them in the order they
were made, so a thing has the same version in every region once its changes have arrived.
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

__all__ = [
    "CertificateAddition",
    "CertificateRecord",
    "CertificateStatus",
    "Change",
    "PolicyAttachment",
    "PrincipalRow",
    "Registration",
    "Registry",
    "Replicator",
    "StatusChange",
    "Thing",
    "ThingChange",
    "ThingPrincipal",
    "VersionConflict",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS things (
    name TEXT PRIMARY KEY,
    attributes TEXT NOT NULL,
    created REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS certificates (
    id TEXT PRIMARY KEY,
    common_name TEXT NOT NULL UNIQUE,
    pem TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS thing_principals (
    thing TEXT NOT NULL REFERENCES things(name) ON DELETE CASCADE,
    certificate_id TEXT NOT NULL REFERENCES certificates(id) ON DELETE CASCADE,
    attached REAL NOT NULL,
    PRIMARY KEY (thing, certificate_id)
);
CREATE INDEX IF NOT EXISTS thing_principals_certificate ON thing_principals(certificate_id);
CREATE TABLE IF NOT EXISTS principal_policies (
    certificate_id TEXT NOT NULL REFERENCES certificates(id) ON DELETE CASCADE,
    policy TEXT NOT NULL REFERENCES policies(name),
    PRIMARY KEY (certificate_id, policy)
);
"""

# Registries written before policies were attached to certificates kept one policy per thing.
_MIGRATE_THING_POLICY = """
INSERT OR IGNORE INTO principal_policies(certificate_id, policy)
    SELECT c.id, t.policy FROM certificates c JOIN things t ON c.thing = t.name;
CREATE TABLE things_v2 (name TEXT PRIMARY KEY, attributes TEXT NOT NULL, created REAL NOT NULL);
INSERT INTO things_v2(name, attributes, created) SELECT name, attributes, created FROM things;
DROP TABLE things;
ALTER TABLE things_v2 RENAME TO things;
"""

# Registries written before a certificate could be attached to several things kept its one thing in a column.
_MIGRATE_CERTIFICATE_THING = """
INSERT OR IGNORE INTO thing_principals(thing, certificate_id, attached)
    SELECT c.thing, c.id, c.created FROM certificates c JOIN things t ON c.thing = t.name;
CREATE TABLE certificates_v2 (id TEXT PRIMARY KEY, common_name TEXT NOT NULL UNIQUE, pem TEXT NOT NULL,
                              status TEXT NOT NULL, created REAL NOT NULL);
INSERT INTO certificates_v2(id, common_name, pem, status, created)
    SELECT id, common_name, pem, status, created FROM certificates;
DROP TABLE certificates;
ALTER TABLE certificates_v2 RENAME TO certificates;
"""


class CertificateStatus(StrEnum):
    """AWS IoT certificate states."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    PENDING_ACTIVATION = "PENDING_ACTIVATION"
    REVOKED = "REVOKED"


class VersionConflict(RegistryError):
    """An update or delete expected another version of the thing than the registry's (AWS's
    VersionConflictException)."""


@dataclass(frozen=True, slots=True)
class Thing:
    """A registered thing; ``tenant`` and ``site`` are attributes the device policy reads. ``version`` is
    the registry record's, as read (a change given a thing leaves the version to the registry)."""

    name: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    version: int = 1

    @property
    def tenant(self) -> str | None:
        return self.attributes.get("tenant")

    @property
    def site(self) -> str | None:
        return self.attributes.get("site")


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A certificate known to a region. ``common_name`` is the broker identity (the username). ``thing``:
    in a :class:`Registration`, the thing it is attached to; as read, the first thing it was attached to
    (:meth:`Registry.things_of` lists them all), or None."""

    certificate_id: str
    common_name: str
    pem: str
    status: CertificateStatus
    thing: str | None


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True)


def _put_policy(db: sqlite3.Connection, name: str, document: Mapping[str, Any]) -> None:
    db.execute(
        "INSERT INTO policies(name, document) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET document = excluded.document",
        (name, _json(document)),
    )


def _known_certificate(db: sqlite3.Connection, certificate_id: str) -> None:
    if db.execute("SELECT 1 FROM certificates WHERE id = ?", (certificate_id,)).fetchone() is None:
        raise RegistryError(f"no certificate with id {certificate_id!r}")


def _attach(db: sqlite3.Connection, thing: str, certificate_id: str) -> None:
    db.execute(
        "INSERT OR IGNORE INTO thing_principals(thing, certificate_id, attached) VALUES (?, ?, ?)",
        (thing, certificate_id, time.time()),
    )


def _attached_things(db: sqlite3.Connection, certificate_id: str) -> list[str]:
    """The things a certificate is attached to, in the order it was attached."""
    rows = db.execute(
        "SELECT thing FROM thing_principals WHERE certificate_id = ? ORDER BY attached, thing", (certificate_id,)
    )
    return [row[0] for row in rows]


def _check_version(db: sqlite3.Connection, name: str, expected: int | None) -> None:
    """:class:`VersionConflict` unless the thing is at version ``expected`` (when given)."""
    if expected is None:
        return
    row = db.execute("SELECT version FROM things WHERE name = ?", (name,)).fetchone()
    if row is None or row[0] != expected:
        found = "does not exist" if row is None else f"is at version {row[0]}"
        raise VersionConflict(f"thing {name!r} {found}, not at the expected version {expected}")


@dataclass(frozen=True, slots=True)
class Registration:
    """Everything a region needs to let one thing connect: the thing, its certificate (attached to it),
    and the policies attached to the certificate (name -> document; re-putting adds, never detaches)."""

    thing: Thing
    certificate: CertificateRecord
    policies: Mapping[str, Mapping[str, Any]]

    def check(self) -> None:
        validate_thing_name(self.thing.name)

    def describe(self) -> str:
        return f"thing {self.thing.name}"

    def apply_to(self, db: sqlite3.Connection) -> None:
        """The certificate is the thing's own identity: one attached to other things (by
        AttachThingPrincipal) and not to this one is refused."""
        thing, cert = self.thing, self.certificate
        _put_thing(db, thing.name, thing.attributes, bump=False)
        others = _attached_things(db, cert.certificate_id)
        if others and thing.name not in others:
            raise RegistryError(
                f"certificate {cert.certificate_id[:12]}... is attached to thing {others[0]!r}; "
                f"detach it before registering it as {thing.name!r}'s"
            )
        try:
            db.execute(
                "INSERT INTO certificates(id, common_name, pem, status, created) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET status = excluded.status",
                (cert.certificate_id, cert.common_name, cert.pem, cert.status, time.time()),
            )
        except sqlite3.IntegrityError as exc:
            raise RegistryError(
                f"another certificate already uses the identity {cert.common_name!r}: each certificate's "
                "common name must be unique"
            ) from exc
        _attach(db, thing.name, cert.certificate_id)
        for name, document in self.policies.items():
            PolicyAttachment(name, cert.certificate_id, document).apply_to(db)


@dataclass(frozen=True, slots=True)
class PolicyAttachment:
    """AttachPolicy (with ``document``: the policy is created or replaced too) or DetachPolicy (``None``)."""

    policy: str
    certificate_id: str
    document: Mapping[str, Any] | None

    def check(self) -> None:
        pass

    def describe(self) -> str:
        verb = "attaching" if self.document is not None else "detaching"
        return f"{verb} policy {self.policy} to certificate {self.certificate_id[:12]}"

    def apply_to(self, db: sqlite3.Connection) -> None:
        _known_certificate(db, self.certificate_id)
        if self.document is None:
            db.execute(
                "DELETE FROM principal_policies WHERE certificate_id = ? AND policy = ?",
                (self.certificate_id, self.policy),
            )
            return
        _put_policy(db, self.policy, self.document)
        db.execute(
            "INSERT OR IGNORE INTO principal_policies(certificate_id, policy) VALUES (?, ?)",
            (self.certificate_id, self.policy),
        )


@dataclass(frozen=True, slots=True)
class StatusChange:
    """UpdateCertificate: a certificate's new status (only ACTIVE ones can connect)."""

    certificate_id: str
    status: CertificateStatus

    def check(self) -> None:
        pass

    def describe(self) -> str:
        return f"certificate {self.certificate_id[:12]} to {self.status}"

    def apply_to(self, db: sqlite3.Connection) -> None:
        _known_certificate(db, self.certificate_id)
        db.execute("UPDATE certificates SET status = ? WHERE id = ?", (self.status, self.certificate_id))


@dataclass(frozen=True, slots=True)
class ThingChange:
    """CreateThing (version 1) or UpdateThing (``thing``'s attributes become the thing's, and its version
    goes up by one), or DeleteThing (``delete``), which AWS refuses while principals are attached. With
    ``expected_version``, an update or delete of a thing at another version raises :class:`VersionConflict`.
    Applied in every region in the same order, it leaves the same version everywhere."""

    thing: Thing
    delete: bool = False
    expected_version: int | None = None

    def check(self) -> None:
        validate_thing_name(self.thing.name)

    def describe(self) -> str:
        return f"{'deleting' if self.delete else 'putting'} thing {self.thing.name}"

    def apply_to(self, db: sqlite3.Connection) -> None:
        name = self.thing.name
        _check_version(db, name, self.expected_version)
        if not self.delete:
            _put_thing(db, name, self.thing.attributes, bump=True)
            return
        attached = db.execute("SELECT count(*) FROM thing_principals WHERE thing = ?", (name,)).fetchone()[0]
        if attached:
            raise RegistryError(f"thing {name!r} has {attached} principal(s) attached: detach them before deleting it")
        db.execute("DELETE FROM things WHERE name = ?", (name,))


def _put_thing(db: sqlite3.Connection, name: str, attributes: Mapping[str, str], *, bump: bool) -> None:
    """Create the thing at version 1, or set its attributes: one version more with ``bump`` (UpdateThing),
    else only if they change (a registration, so that applying it again changes nothing)."""
    db.execute(
        "INSERT INTO things(name, attributes, created, version) VALUES (?, ?, ?, 1) "
        "ON CONFLICT(name) DO UPDATE SET attributes = excluded.attributes, "
        "version = version + (? OR attributes IS NOT excluded.attributes)",
        (name, _json(attributes), time.time(), bump),
    )


@dataclass(frozen=True, slots=True)
class CertificateAddition:
    """CreateKeysAndCertificate or CreateCertificateFromCsr: a certificate attached to nothing yet."""

    certificate: CertificateRecord

    def check(self) -> None:
        pass

    def describe(self) -> str:
        return f"certificate {self.certificate.certificate_id[:12]}"

    def apply_to(self, db: sqlite3.Connection) -> None:
        cert = self.certificate
        db.execute(
            "INSERT OR IGNORE INTO certificates(id, common_name, pem, status, created) VALUES (?, ?, ?, ?, ?)",
            (cert.certificate_id, cert.common_name, cert.pem, cert.status, time.time()),
        )


@dataclass(frozen=True, slots=True)
class ThingPrincipal:
    """AttachThingPrincipal (``attach``) or DetachThingPrincipal of a certificate. A certificate may be
    attached to any number of things (AWS's default, NON_EXCLUSIVE_THING)."""

    thing: str
    certificate_id: str
    attach: bool

    def check(self) -> None:
        validate_thing_name(self.thing)

    def describe(self) -> str:
        return f"{'attaching' if self.attach else 'detaching'} certificate {self.certificate_id[:12]} to {self.thing}"

    def apply_to(self, db: sqlite3.Connection) -> None:
        _known_certificate(db, self.certificate_id)
        if not self.attach:
            db.execute(
                "DELETE FROM thing_principals WHERE thing = ? AND certificate_id = ?", (self.thing, self.certificate_id)
            )
            return
        if db.execute("SELECT 1 FROM things WHERE name = ?", (self.thing,)).fetchone() is None:
            raise RegistryError(f"no thing named {self.thing!r}")
        _attach(db, self.thing, self.certificate_id)


Change = Registration | PolicyAttachment | StatusChange | ThingChange | CertificateAddition | ThingPrincipal
"""One change to a registry; the same value is applied in every region it is replicated to."""


@dataclass(frozen=True, slots=True)
class PrincipalRow:
    """An ACTIVE certificate that has policies, with one thing it is attached to (a certificate attached
    to several things has a row for each): what the broker's authorization data needs of it, unparsed
    (``attributes`` and each document are JSON text) so a caller can cache what it renders."""

    common_name: str
    thing: str | None
    attributes: str
    documents: tuple[str, ...]


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
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Bring a file written by an older iotfleet to this schema, in one transaction."""
        steps = []
        if "policy" in self._columns("things"):
            steps.append(_MIGRATE_THING_POLICY)
        if "thing" in self._columns("certificates"):
            steps.append(_MIGRATE_CERTIFICATE_THING)
        if "version" not in self._columns("things"):
            steps.append("ALTER TABLE things ADD COLUMN version INTEGER NOT NULL DEFAULT 1;")
        if not steps:
            return
        self._db.execute("PRAGMA foreign_keys=OFF")
        try:
            self._db.executescript(f"BEGIN; {''.join(steps)} COMMIT;")
        finally:
            self._db.execute("PRAGMA foreign_keys=ON")

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

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

    def apply(self, *changes: Change) -> None:
        """Apply changes (registrations, policy attachments, status changes) in one transaction.

        Applying the same change again is a no-op, but for an UpdateThing (a :class:`ThingChange` that
        puts an existing thing), which counts one more version each time, as on AWS: each change is
        applied once in each region. A registration of a certificate attached to other things, an
        identity already used, an unknown certificate or a version other than expected fails the whole
        transaction.
        """
        for change in changes:
            change.check()
        with self._tx() as db:
            for change in changes:
                change.apply_to(db)

    def add_certificate(self, record: CertificateRecord) -> None:
        """Record a certificate attached to no thing (fleet provisioning's ``PENDING_ACTIVATION`` ones)."""
        with self._tx() as db:
            try:
                db.execute(
                    "INSERT INTO certificates(id, common_name, pem, status, created) VALUES (?, ?, ?, ?, ?)",
                    (record.certificate_id, record.common_name, record.pem, record.status, time.time()),
                )
            except sqlite3.IntegrityError as exc:
                raise RegistryError(f"certificate {record.certificate_id[:12]}... is already registered") from exc

    def delete_unused_certificate(self, certificate_id: str) -> bool:
        """Delete a certificate that is still ``PENDING_ACTIVATION`` and attached to nothing; True if it was."""
        with self._tx() as db:
            deleted = db.execute(
                "DELETE FROM certificates WHERE id = ? AND status = ? "
                "AND NOT EXISTS (SELECT 1 FROM thing_principals tp WHERE tp.certificate_id = certificates.id)",
                (certificate_id, CertificateStatus.PENDING_ACTIVATION.value),
            ).rowcount
        return deleted > 0

    def delete_thing(self, name: str) -> None:
        """Remove a thing; its certificates stay, detached, with their policies (as on AWS IoT, where the
        thing policy variables then no longer resolve for them)."""
        with self._tx() as db:
            if db.execute("DELETE FROM things WHERE name = ?", (name,)).rowcount == 0:
                raise RegistryError(f"no thing named {name!r} in {self.path.name}")

    def set_status(self, certificate_id: str, status: CertificateStatus) -> None:
        self.apply(StatusChange(certificate_id, status))

    # ------------------------------------------------------------------ reads

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def thing(self, name: str) -> Thing | None:
        rows = self._query("SELECT name, attributes, version FROM things WHERE name = ?", (name,))
        return Thing(rows[0][0], json.loads(rows[0][1]), rows[0][2]) if rows else None

    def things(self) -> list[Thing]:
        return [Thing(n, json.loads(a), v) for n, a, v in self._query("SELECT name, attributes, version FROM things")]

    def certificates_of(self, thing: str) -> list[CertificateRecord]:
        """The certificates attached to ``thing`` (ListThingPrincipals), oldest first."""
        rows = self._query(
            f"{_CERTIFICATE} JOIN thing_principals a ON a.certificate_id = c.id WHERE a.thing = ? "
            "ORDER BY c.created, c.id",
            (thing,),
        )
        return [_cert(r) for r in rows]

    def things_of(self, certificate_id: str) -> list[str]:
        """The things ``certificate_id`` is attached to (ListPrincipalThings), in the order it was attached."""
        with self._lock:
            return _attached_things(self._db, certificate_id)

    def policies_of(self, certificate_id: str) -> dict[str, dict[str, Any]]:
        """The policies attached to a certificate (ListPrincipalPolicies): name -> document."""
        rows = self._query(
            "SELECT p.name, p.document FROM principal_policies pp JOIN policies p ON p.name = pp.policy "
            "WHERE pp.certificate_id = ? ORDER BY p.name",
            (certificate_id,),
        )
        return {name: json.loads(document) for name, document in rows}

    def certificate_by_identity(self, common_name: str) -> CertificateRecord | None:
        rows = self._query(f"{_CERTIFICATE} WHERE c.common_name = ?", (common_name,))
        return _cert(rows[0]) if rows else None

    def certificate(self, certificate_id: str) -> CertificateRecord | None:
        rows = self._query(f"{_CERTIFICATE} WHERE c.id = ?", (certificate_id,))
        return _cert(rows[0]) if rows else None

    def policy(self, name: str) -> dict[str, Any] | None:
        rows = self._query("SELECT document FROM policies WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def taken_off(self) -> list[tuple[str, str, CertificateStatus]]:
        """``(certificate id, PEM, status)`` of every INACTIVE or REVOKED certificate: the TLS handshake
        refuses them, as IoT Core's does."""
        rows = self._query(
            "SELECT id, pem, status FROM certificates WHERE status IN (?, ?) ORDER BY id",
            (CertificateStatus.INACTIVE.value, CertificateStatus.REVOKED.value),
        )
        return [(r[0], r[1], CertificateStatus(r[2])) for r in rows]

    def policies_of_thing(self, thing: str) -> dict[str, dict[str, Any]]:
        """The policies attached to any of ``thing``'s certificates: what a new certificate of the thing
        gets (a rotation, a re-registration whose template attaches none)."""
        policies: dict[str, dict[str, Any]] = {}
        for record in self.certificates_of(thing):
            policies.update(self.policies_of(record.certificate_id))
        return policies

    def principals(self) -> list[PrincipalRow]:
        """Every ACTIVE certificate with at least one policy: who may connect, and under which policies;
        one row for each thing it is attached to. A certificate attached to no thing is a principal too
        (the thing variables do not resolve for it)."""
        rows = self._query(
            "SELECT c.common_name, t.name, COALESCE(t.attributes, '{}'), p.document "
            "FROM certificates c LEFT JOIN thing_principals tp ON tp.certificate_id = c.id "
            "LEFT JOIN things t ON t.name = tp.thing "
            "JOIN principal_policies pp ON pp.certificate_id = c.id JOIN policies p ON p.name = pp.policy "
            "WHERE c.status = ? ORDER BY c.common_name, t.name, p.name",
            (CertificateStatus.ACTIVE.value,),
        )
        principals: list[PrincipalRow] = []
        for common_name, thing, attributes, document in rows:
            last = principals[-1] if principals else None
            if last is not None and (last.common_name, last.thing) == (common_name, thing):
                principals[-1] = PrincipalRow(common_name, thing, attributes, (*last.documents, document))
            else:
                principals.append(PrincipalRow(common_name, thing, attributes, (document,)))
        return principals


# A certificate with the first thing it was attached to (a correlated subquery: one row per certificate).
_CERTIFICATE = (
    "SELECT c.id, c.common_name, c.pem, c.status, (SELECT tp.thing FROM thing_principals tp "
    "WHERE tp.certificate_id = c.id ORDER BY tp.attached, tp.thing LIMIT 1) FROM certificates c"
)


def _cert(row: tuple[Any, ...]) -> CertificateRecord:
    return CertificateRecord(row[0], row[1], row[2], CertificateStatus(row[3]), row[4])


class Replicator:
    """Copies batches of changes from one region to the others after ``lag`` seconds.

    ``apply(region, changes)`` does the copy. With ``lag == 0`` the copy happens before
    :meth:`replicate` returns, and a copy that fails raises to its caller (the registration that asked
    for it fails). Otherwise one background thread, owned by ``failures``, applies copies when they fall
    due, in order; a copy that fails is kept in :attr:`errors` (the first :data:`~iotfleet.cloud.owned.KEEP`)
    and recorded in ``failures``, which logs it and counts it, and the next copies go on. The cloud's
    ``failures`` are surfaced by ``LocalCloud.ingest_stats()`` while it runs and ``LocalCloud.stop()``'s
    problems.
    """

    def __init__(
        self,
        apply: Callable[[str, tuple[Change, ...]], None],
        *,
        lag: float = 0.0,
        failures: Failures | None = None,
    ) -> None:
        if lag < 0:
            raise ValueError("replication lag must be >= 0 seconds")
        self.lag = lag
        self.failures = failures or Failures()
        self._apply = apply
        self._heap: list[tuple[float, int, str, tuple[Change, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def replicate(self, changes: tuple[Change, ...], targets: list[str]) -> None:
        if self.lag == 0:
            for target in targets:
                self._apply(target, changes)
            return
        with self._cond:
            if self._thread is None:
                self._thread = self.failures.thread(self._run, "replicator")
            due = time.monotonic() + self.lag
            for target in targets:
                heapq.heappush(self._heap, (due, next(self._seq), target, changes))
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
                _, _, target, changes = heapq.heappop(self._heap)
            try:
                self._apply(target, changes)
            except Exception as exc:  # noqa: BLE001 - recorded, surfaced by LocalCloud; next copies go on
                names = ", ".join(c.describe() for c in changes[:5])
                more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
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
