"""The outbox: order, bounds and overflow policies, and durability of the SQLite file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.config import Durability, OutboxPolicy, OverflowPolicy
from iotfleet.device.outbox import MemoryOutbox, Outbox, SqliteOutbox, open_outbox
from iotfleet.errors import ConfigError, OutboxFull


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Outbox]:
    def factory(**kw: object) -> Outbox:
        path = tmp_path / "outbox.sqlite" if request.param == "sqlite" else None
        return open_outbox(OutboxPolicy(path=path, **kw))

    return factory


def test_entries_keep_order_and_unique_ids(make: Callable[..., Outbox]) -> None:
    box = make()
    entries = [entry for i in range(5) if (entry := box.add("t", f"m{i}".encode(), 1).entry) is not None]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]  # all five added
    assert len({e.message_id for e in entries}) == 5
    box.remove(2)
    box.remove(99)  # unknown: ignored
    assert [e.payload for e in box.pending()] == [b"m0", b"m2", b"m3", b"m4"]


def test_reject_raises_and_counts(make: Callable[..., Outbox]) -> None:
    box = make(max_messages=2, overflow=OverflowPolicy.REJECT)
    box.add("t", b"1", 1)
    box.add("t", b"2", 1)
    with pytest.raises(OutboxFull, match="drop-oldest"):
        box.add("t", b"3", 1)
    assert box.stats.rejected == 1
    assert len(box) == 2


def test_drop_oldest_evicts_and_reports_what_it_evicted(make: Callable[..., Outbox]) -> None:
    box = make(max_messages=2, overflow=OverflowPolicy.DROP_OLDEST)
    first = box.add("t", b"1", 1).entry
    box.add("t", b"2", 1)
    admission = box.add("t", b"3", 1)
    assert admission.evicted == [first]
    assert [e.payload for e in box.pending()] == [b"2", b"3"]
    assert box.stats.dropped_oldest == 1


def test_drop_newest_keeps_the_queue_and_counts(make: Callable[..., Outbox]) -> None:
    box = make(max_messages=2, overflow=OverflowPolicy.DROP_NEWEST)
    box.add("t", b"1", 1)
    box.add("t", b"2", 1)
    assert box.add("t", b"3", 1).entry is None
    assert [e.payload for e in box.pending()] == [b"1", b"2"]
    assert box.stats.dropped_newest == 1


@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=40), bound=st.integers(60, 300))
def test_byte_bound_holds_under_drop_oldest(sizes: list[int], bound: int) -> None:
    box = MemoryOutbox(OutboxPolicy(max_bytes=bound, overflow=OverflowPolicy.DROP_OLDEST))
    for size in sizes:
        box.add("t", b"x" * size, 1)
        assert box.size_bytes <= bound
        assert box.size_bytes == sum(len(e.payload) + 1 for e in box.pending())
    assert box.stats.dropped_oldest + len(box) == len(sizes)


def test_sqlite_outbox_survives_reopen_and_keeps_counting(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = SqliteOutbox(OutboxPolicy(path=path), path)
    for i in range(3):
        box.add("t", f"m{i}".encode(), 1)
    box.remove(1)
    ids = [e.message_id for e in box.pending()]
    box.close()
    again = SqliteOutbox(OutboxPolicy(path=path), path)
    assert [e.message_id for e in again.pending()] == ids
    assert again.stats.restored == 2
    assert again.add("t", b"new", 1).entry.seq == 4  # type: ignore[union-attr]  # never reuses a sequence number
    again.close()


def test_sqlite_outbox_durability_modes(tmp_path: Path) -> None:
    for mode, expected in ((Durability.PROCESS, 1), (Durability.POWER, 2)):  # NORMAL=1, FULL=2
        path = tmp_path / f"{mode}.sqlite"
        box = SqliteOutbox(OutboxPolicy(path=path, durability=mode), path)
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == expected
        assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        box.close()


def test_unreadable_outbox_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="move it aside"):
        SqliteOutbox(OutboxPolicy(path=path), path)


def test_wrapped_payload_is_what_is_stored_and_replayed(tmp_path: Path) -> None:
    """The JSON envelope is built before storing, so a restarted device resends it enveloped."""
    path = tmp_path / "o.sqlite"
    box = SqliteOutbox(OutboxPolicy(path=path), path)
    entry = box.add(
        "t", b"{}", 1, wrap=lambda message_id, seq: f'{{"id": "{message_id}", "seq": {seq}}}'.encode()
    ).entry
    assert entry is not None
    box.close()
    [restored] = SqliteOutbox(OutboxPolicy(path=path), path).pending()
    assert restored.payload == f'{{"id": "{entry.message_id}", "seq": 1}}'.encode()
    assert restored.payload == entry.payload
