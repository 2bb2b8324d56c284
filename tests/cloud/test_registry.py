"""A region's registry and the replicator."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest

from iotfleet.cloud.owned import Failures
from iotfleet.cloud.registry import (
    CertificateRecord,
    CertificateStatus,
    Change,
    PolicyAttachment,
    PrincipalRow,
    Registration,
    Registry,
    Replicator,
    StatusChange,
    Thing,
    ThingChange,
    ThingPrincipal,
    VersionConflict,
)
from iotfleet.errors import RegistryError


def registration(name: str, cert_id: str, cn: str | None = None) -> Registration:
    return Registration(
        Thing(name, {"tenant": "acme", "site": "hq"}),
        CertificateRecord(cert_id, cn or name, "PEM", CertificateStatus.ACTIVE, name),
        {"device": {"Statement": []}},
    )


def test_apply_is_idempotent_and_principals_are_the_active_certificates(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.apply(registration("lamp-1", "c1"))
    reg.apply(registration("lamp-1", "c1"))
    reg.apply(registration("lamp-2", "c2"))
    reg.apply(StatusChange("c2", CertificateStatus.INACTIVE))
    attributes, documents = '{"site": "hq", "tenant": "acme"}', ('{"Statement": []}',)
    assert reg.principals() == [PrincipalRow("lamp-1", "lamp-1", attributes, documents)]
    assert reg.certificate_by_identity("lamp-2").status is CertificateStatus.INACTIVE  # type: ignore[union-attr]


def test_a_certificate_has_every_policy_attached_to_it_and_loses_a_detached_one(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.apply(registration("lamp-1", "c1"))
    reg.apply(PolicyAttachment("extra", "c1", {"Statement": [1]}), PolicyAttachment("extra", "c1", {"Statement": [2]}))
    assert reg.policies_of("c1") == {"device": {"Statement": []}, "extra": {"Statement": [2]}}  # replaced, once
    assert reg.principals()[0].documents == ('{"Statement": []}', '{"Statement": [2]}')
    reg.apply(PolicyAttachment("device", "c1", None))
    assert list(reg.policies_of("c1")) == ["extra"]
    reg.apply(PolicyAttachment("extra", "c1", None))
    assert reg.principals() == []  # a certificate with no policy may do nothing: it is no principal
    with pytest.raises(RegistryError, match="no certificate with id 'c9'"):
        reg.apply(PolicyAttachment("extra", "c9", {"Statement": []}))


def test_a_thing_may_hold_several_certificates_during_a_rotation(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.apply(registration("lamp-1", "c1"), registration("lamp-1", "c2", cn="lamp-1-next"))
    assert [c.certificate_id for c in reg.certificates_of("lamp-1")] == ["c1", "c2"]
    assert [p.common_name for p in reg.principals()] == ["lamp-1", "lamp-1-next"]


def test_a_registry_of_the_one_policy_per_thing_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE policies (name TEXT PRIMARY KEY, document TEXT NOT NULL);
            CREATE TABLE things (name TEXT PRIMARY KEY, attributes TEXT NOT NULL,
                                 policy TEXT NOT NULL REFERENCES policies(name), created REAL NOT NULL);
            CREATE TABLE certificates (id TEXT PRIMARY KEY, common_name TEXT NOT NULL UNIQUE, pem TEXT NOT NULL,
                status TEXT NOT NULL, thing TEXT REFERENCES things(name) ON DELETE SET NULL, created REAL NOT NULL);
            INSERT INTO policies VALUES ('device', '{"Statement": []}');
            INSERT INTO things VALUES ('lamp-1', '{}', 'device', 0);
            INSERT INTO certificates VALUES ('c1', 'lamp-1', 'PEM', 'ACTIVE', 'lamp-1', 0);
            """
        )
    reg = Registry(path)
    assert reg.policies_of("c1") == {"device": {"Statement": []}}
    assert reg.thing("lamp-1") == Thing("lamp-1", {}, version=1)
    assert reg.things_of("c1") == ["lamp-1"]
    reg.apply(registration("lamp-2", "c2"))  # the new schema takes writes
    assert [p.common_name for p in Registry(path).principals()] == ["lamp-1", "lamp-2"]


def test_a_registry_of_the_one_thing_per_certificate_schema_is_migrated(tmp_path: Path) -> None:
    """The schema before versions and several things per certificate: a column of certificates named the thing."""
    path = tmp_path / "r.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE policies (name TEXT PRIMARY KEY, document TEXT NOT NULL);
            CREATE TABLE things (name TEXT PRIMARY KEY, attributes TEXT NOT NULL, created REAL NOT NULL);
            CREATE TABLE certificates (id TEXT PRIMARY KEY, common_name TEXT NOT NULL UNIQUE, pem TEXT NOT NULL,
                status TEXT NOT NULL, thing TEXT REFERENCES things(name) ON DELETE SET NULL, created REAL NOT NULL);
            CREATE INDEX certificates_thing ON certificates(thing);
            CREATE TABLE principal_policies (
                certificate_id TEXT NOT NULL REFERENCES certificates(id) ON DELETE CASCADE,
                policy TEXT NOT NULL REFERENCES policies(name), PRIMARY KEY (certificate_id, policy));
            INSERT INTO policies VALUES ('device', '{"Statement": []}');
            INSERT INTO things VALUES ('lamp-1', '{"site": "hq"}', 0), ('lamp-2', '{}', 0);
            INSERT INTO certificates VALUES ('c1', 'lamp-1', 'PEM', 'ACTIVE', 'lamp-1', 0),
                                            ('c2', 'spare', 'PEM', 'INACTIVE', NULL, 1);
            INSERT INTO principal_policies VALUES ('c1', 'device');
            """
        )
    reg = Registry(path)
    assert reg.things() == [Thing("lamp-1", {"site": "hq"}, 1), Thing("lamp-2", {}, 1)]
    assert (reg.certificate("c1").thing, reg.certificate("c2").thing) == ("lamp-1", None)  # type: ignore[union-attr]
    assert reg.principals() == [PrincipalRow("lamp-1", "lamp-1", '{"site": "hq"}', ('{"Statement": []}',))]
    reg.apply(ThingPrincipal("lamp-2", "c1", attach=True), ThingChange(Thing("lamp-1", {"site": "lab"})))
    reopened = Registry(path)  # migrated once: opening it again changes nothing
    assert reopened.things_of("c1") == ["lamp-1", "lamp-2"]
    assert reopened.thing("lamp-1") == Thing("lamp-1", {"site": "lab"}, 2)
    assert reopened.delete_unused_certificate("c2") is False  # INACTIVE, not PENDING_ACTIVATION: kept


def test_registry_survives_reopen_in_wal_mode(tmp_path: Path) -> None:
    Registry(tmp_path / "r.sqlite").apply(registration("lamp-1", "c1"))
    reopened = Registry(tmp_path / "r.sqlite")
    assert reopened.thing("lamp-1") == Thing("lamp-1", {"tenant": "acme", "site": "hq"})
    with contextlib.closing(sqlite3.connect(tmp_path / "r.sqlite")) as db:  # WAL is a setting of the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_batch_is_one_transaction(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.apply(registration("lamp-1", "c1"))
    with pytest.raises(RegistryError, match="identity 'lamp-1'"):
        reg.apply(registration("lamp-2", "c2"), registration("lamp-3", "c3", cn="lamp-1"))
    assert reg.thing("lamp-2") is None


def test_certificate_identity_must_be_unique_and_stay_with_its_thing(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.apply(registration("lamp-1", "c1"))
    with pytest.raises(RegistryError, match="identity 'lamp-1'"):
        reg.apply(registration("lamp-9", "c9", cn="lamp-1"))
    with pytest.raises(RegistryError, match="attached to thing 'lamp-1'"):
        reg.apply(registration("lamp-2", "c1", cn="other"))
    assert reg.thing("lamp-9") is None  # the failed transaction left nothing behind


def test_deleting_a_thing_detaches_its_certificate(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.apply(registration("lamp-1", "c1"))
    reg.delete_thing("lamp-1")
    # as on AWS IoT, the certificate keeps its policies; only the thing variables no longer resolve
    assert reg.principals() == [PrincipalRow("lamp-1", None, "{}", ('{"Statement": []}',))]
    assert reg.certificate("c1").thing is None  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="no thing named"):
        reg.delete_thing("lamp-1")


def test_replicator_applies_after_the_lag_in_order() -> None:
    applied: list[tuple[str, str]] = []
    done = threading.Event()

    def apply(target: str, regs: tuple[Change, ...]) -> None:
        applied.extend((target, reg.describe()) for reg in regs)
        if len(applied) == 4:
            done.set()

    rep = Replicator(apply, lag=0.2)
    rep.replicate((registration("a", "1"),), ["r2", "r3"])
    rep.replicate((registration("b", "2"),), ["r2", "r3"])
    assert applied == []
    assert rep.pending() == 4
    assert done.wait(5)
    assert applied == [("r2", "thing a"), ("r3", "thing a"), ("r2", "thing b"), ("r3", "thing b")]
    rep.close()


def test_replicator_without_lag_applies_before_returning() -> None:
    applied: list[str] = []
    Replicator(lambda target, regs: applied.append(target)).replicate((registration("a", "1"),), ["r2"])
    assert applied == ["r2"]


def test_replication_failures_are_kept_and_the_next_copies_go_on() -> None:
    later_copy_applied = threading.Event()

    def apply(target: str, regs: tuple[Change, ...]) -> None:
        if target == "r2":
            raise RegistryError("disk full")
        later_copy_applied.set()

    failures = Failures()
    rep = Replicator(apply, lag=0.01, failures=failures)
    rep.replicate((registration("a", "1"), registration("b", "2")), ["r2", "r3"])  # applied in this order
    assert later_copy_applied.wait(10)
    assert rep.errors == ["replicating thing a, thing b to r2: disk full"]
    assert [str(f) for f in failures.kept()] == ["replicator to r2: replicating thing a, thing b to r2: disk full"]
    rep.close()


def test_without_lag_a_failed_copy_raises_to_the_caller() -> None:
    def apply(target: str, regs: tuple[Change, ...]) -> None:
        raise RegistryError("disk full")

    failures = Failures()
    with pytest.raises(RegistryError, match="disk full"):
        Replicator(apply, failures=failures).replicate((registration("a", "1"),), ["r2"])
    assert failures.count == 0  # the caller has the error; nothing happened in the background


def test_a_thing_is_created_at_version_1_and_each_update_counts_one_more(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.apply(ThingChange(Thing("lamp-1", {"site": "hq"})))
    assert reg.thing("lamp-1") == Thing("lamp-1", {"site": "hq"}, version=1)
    reg.apply(ThingChange(Thing("lamp-1", {"site": "lab"})), ThingChange(Thing("lamp-1", {"site": "lab"})))
    assert reg.thing("lamp-1") == Thing("lamp-1", {"site": "lab"}, version=3)  # UpdateThing counts, changed or not
    reg.apply(registration("lamp-1", "c1"))  # a registration that changes the attributes is an update too
    assert reg.thing("lamp-1").version == 4  # type: ignore[union-attr]
    reg.apply(registration("lamp-1", "c1"))  # the same registration again changes nothing
    assert [t.version for t in reg.things()] == [4]


def test_an_update_or_delete_at_another_expected_version_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.apply(ThingChange(Thing("lamp-1", {"site": "hq"})), ThingChange(Thing("lamp-1", {"site": "lab"})))
    with pytest.raises(VersionConflict, match="'lamp-1' is at version 2, not at the expected version 1"):
        reg.apply(ThingChange(Thing("lamp-1", {"site": "x"}), expected_version=1))
    with pytest.raises(VersionConflict):
        reg.apply(ThingChange(Thing("lamp-1"), delete=True, expected_version=3))
    assert reg.thing("lamp-1") == Thing("lamp-1", {"site": "lab"}, 2)
    reg.apply(ThingChange(Thing("lamp-1", {"site": "x"}), expected_version=2))
    reg.apply(ThingChange(Thing("lamp-1"), delete=True, expected_version=3))
    assert reg.thing("lamp-1") is None


def test_replicated_changes_leave_the_same_versions_in_every_region(tmp_path: Path) -> None:
    home, replica = Registry(tmp_path / "eu.sqlite"), Registry(tmp_path / "us.sqlite")
    replicator = Replicator(lambda _target, changes: replica.apply(*changes))

    def change(*changes: Change) -> None:  # as LocalCloud.change: the home region, then the others
        home.apply(*changes)
        replicator.replicate(changes, ["us"])

    change(registration("lamp-1", "c1"))
    change(ThingChange(Thing("lamp-1", {"site": "lab"})))
    change(ThingChange(Thing("lamp-1", {"site": "hq"}), expected_version=2))
    assert home.things() == replica.things() == [Thing("lamp-1", {"site": "hq"}, 3)]
    replica.apply(ThingChange(Thing("lamp-1", {"site": "us-only"})))  # a write the home region never saw
    with pytest.raises(VersionConflict):  # the copy of a change expecting version 3 fails loudly, not silently
        change(ThingChange(Thing("lamp-1", {"site": "eu"}), expected_version=3))


def test_a_certificate_may_be_attached_to_several_things_and_is_a_principal_for_each(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.apply(registration("lamp-1", "c1"), ThingChange(Thing("lamp-2", {"site": "lab"})))
    reg.apply(ThingPrincipal("lamp-2", "c1", attach=True), ThingPrincipal("lamp-2", "c1", attach=True))
    assert reg.things_of("c1") == ["lamp-1", "lamp-2"]
    assert [c.certificate_id for c in reg.certificates_of("lamp-2")] == ["c1"]
    assert reg.certificate("c1").thing == "lamp-1"  # type: ignore[union-attr]  # the first it was attached to
    documents = ('{"Statement": []}',)
    assert reg.principals() == [
        PrincipalRow("lamp-1", "lamp-1", '{"site": "hq", "tenant": "acme"}', documents),
        PrincipalRow("lamp-1", "lamp-2", '{"site": "lab"}', documents),
    ]
    with pytest.raises(RegistryError, match="1 principal"):  # DeleteThing while attached
        reg.apply(ThingChange(Thing("lamp-2"), delete=True))
    reg.apply(ThingPrincipal("lamp-1", "c1", attach=False))
    assert reg.things_of("c1") == ["lamp-2"]
    assert reg.principals() == [PrincipalRow("lamp-1", "lamp-2", '{"site": "lab"}', documents)]
    with pytest.raises(RegistryError, match="attached to thing 'lamp-2'"):  # a registration's certificate is its own
        reg.apply(registration("lamp-3", "c1"))
    reg.delete_thing("lamp-2")
    assert reg.things_of("c1") == []
    assert reg.principals() == [PrincipalRow("lamp-1", None, "{}", documents)]
