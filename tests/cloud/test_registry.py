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
    Registration,
    Registry,
    Replicator,
    Thing,
)
from iotfleet.errors import RegistryError


def registration(name: str, cert_id: str, cn: str | None = None) -> Registration:
    return Registration(
        Thing(name, {"tenant": "acme", "site": "hq"}, "device"),
        CertificateRecord(cert_id, cn or name, "PEM", CertificateStatus.ACTIVE, name),
        {"Statement": []},
    )


def test_put_is_idempotent_and_connectable_lists_active_certificates(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.put(registration("lamp-1", "c1"))
    reg.put(registration("lamp-1", "c1"))
    reg.put(registration("lamp-2", "c2"))
    reg.set_status("c2", CertificateStatus.INACTIVE)
    assert [(c.common_name, t.name, t.tenant) for c, t, _ in reg.connectable()] == [("lamp-1", "lamp-1", "acme")]
    assert reg.certificate_by_identity("lamp-2").status is CertificateStatus.INACTIVE  # type: ignore[union-attr]


def test_registry_survives_reopen_in_wal_mode(tmp_path: Path) -> None:
    Registry(tmp_path / "r.sqlite").put(registration("lamp-1", "c1"))
    reopened = Registry(tmp_path / "r.sqlite")
    assert reopened.thing("lamp-1") == Thing("lamp-1", {"tenant": "acme", "site": "hq"}, "device")
    with contextlib.closing(sqlite3.connect(tmp_path / "r.sqlite")) as db:  # WAL is a setting of the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_batch_is_one_transaction(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.put(registration("lamp-1", "c1"))
    with pytest.raises(RegistryError, match="identity 'lamp-1'"):
        reg.put(registration("lamp-2", "c2"), registration("lamp-3", "c3", cn="lamp-1"))
    assert reg.thing("lamp-2") is None


def test_certificate_identity_must_be_unique_and_stay_with_its_thing(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.put(registration("lamp-1", "c1"))
    with pytest.raises(RegistryError, match="identity 'lamp-1'"):
        reg.put(registration("lamp-9", "c9", cn="lamp-1"))
    with pytest.raises(RegistryError, match="attached to thing 'lamp-1'"):
        reg.put(registration("lamp-2", "c1", cn="other"))
    assert reg.thing("lamp-9") is None  # the failed transaction left nothing behind


def test_deleting_a_thing_detaches_its_certificate(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    reg.put(registration("lamp-1", "c1"))
    reg.delete_thing("lamp-1")
    assert reg.connectable() == []
    assert reg.certificate("c1").thing is None  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="no thing named"):
        reg.delete_thing("lamp-1")


def test_replicator_applies_after_the_lag_in_order() -> None:
    applied: list[tuple[str, str]] = []
    done = threading.Event()

    def apply(target: str, regs: tuple[Registration, ...]) -> None:
        applied.extend((target, reg.thing.name) for reg in regs)
        if len(applied) == 4:
            done.set()

    rep = Replicator(apply, lag=0.2)
    rep.replicate((registration("a", "1"),), ["r2", "r3"])
    rep.replicate((registration("b", "2"),), ["r2", "r3"])
    assert applied == []
    assert rep.pending() == 4
    assert done.wait(5)
    assert applied == [("r2", "a"), ("r3", "a"), ("r2", "b"), ("r3", "b")]
    rep.close()


def test_replicator_without_lag_applies_before_returning() -> None:
    applied: list[str] = []
    Replicator(lambda target, regs: applied.append(target)).replicate((registration("a", "1"),), ["r2"])
    assert applied == ["r2"]


def test_replication_failures_are_kept_and_the_next_copies_go_on() -> None:
    later_copy_applied = threading.Event()

    def apply(target: str, regs: tuple[Registration, ...]) -> None:
        if target == "r2":
            raise RegistryError("disk full")
        later_copy_applied.set()

    failures = Failures()
    rep = Replicator(apply, lag=0.01, failures=failures)
    rep.replicate((registration("a", "1"), registration("b", "2")), ["r2", "r3"])  # applied in this order
    assert later_copy_applied.wait(10)
    assert rep.errors == ["replicating a, b to r2: disk full"]
    assert [str(f) for f in failures.kept()] == ["replicator to r2: replicating a, b to r2: disk full"]
    rep.close()


def test_without_lag_a_failed_copy_raises_to_the_caller() -> None:
    def apply(target: str, regs: tuple[Registration, ...]) -> None:
        raise RegistryError("disk full")

    failures = Failures()
    with pytest.raises(RegistryError, match="disk full"):
        Replicator(apply, failures=failures).replicate((registration("a", "1"),), ["r2"])
    assert failures.count == 0  # the caller has the error; nothing happened in the background
