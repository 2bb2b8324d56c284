"""The store-and-forward outbox: every QoS 1 publish is kept here until its PUBACK.

Entries are ordered by a per-device sequence number and carry a message id, both sent as MQTT5 user
properties so that the cloud can dedupe and count loss. The memory outbox serves the simulator; the
SQLite outbox writes every entry through to a WAL file before the publish is sent, so a device process
killed with SIGKILL resends everything unacknowledged when it starts again.

Durability (``OutboxPolicy.durability``): ``process`` commits with ``synchronous=NORMAL`` (the WAL is
written at each commit, fsynced at checkpoints), which survives a killed process but not a power cut;
``power`` uses ``synchronous=FULL`` (an fsync per commit). Figures: bench/BENCHMARKS.md.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from iotfleet.config import Durability, OutboxPolicy, OverflowPolicy
from iotfleet.errors import ConfigError, OutboxFull

__all__ = ["MemoryOutbox", "Outbox", "OutboxEntry", "OutboxStats", "SqliteOutbox", "open_outbox"]


@dataclass(slots=True)
class OutboxEntry:
    """One queued publish."""

    seq: int
    message_id: str
    topic: str
    payload: bytes
    qos: int
    created: float  # epoch seconds when it entered the outbox
    properties: tuple[tuple[str, str], ...] = ()  # MQTT5 user properties, built once by the device client


@dataclass(slots=True)
class OutboxStats:
    """Overflow counters: nothing leaves the outbox unnoticed."""

    dropped_oldest: int = 0
    dropped_newest: int = 0
    rejected: int = 0
    restored: int = 0  # entries found on disk when the outbox was opened


@dataclass(slots=True)
class Admission:
    """What adding one message did: the entry (None if it was dropped) and any older entries evicted."""

    entry: OutboxEntry | None
    evicted: Sequence[OutboxEntry] = ()


class Outbox:
    """An ordered, bounded outbox in memory; subclasses persist it."""

    def __init__(self, policy: OutboxPolicy) -> None:
        self.policy = policy
        self.stats = OutboxStats()
        self._entries: collections.OrderedDict[int, OutboxEntry] = collections.OrderedDict()
        self._bytes = 0
        self._next_seq = 1
        # message ids are this outbox's random token and the sequence number: unique without a uuid each
        self._id_prefix = uuid.uuid4().hex[:16]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Payload and topic bytes held."""
        return self._bytes

    def add(
        self, topic: str, payload: bytes, qos: int, *, wrap: Callable[[str, int], bytes] | None = None
    ) -> Admission:
        """Queue a message, applying the bound and the overflow policy; raise :class:`OutboxFull` on reject.

        ``wrap(message_id, seq)``, if given, builds the payload to store and send once the message's id and
        sequence number are known (the JSON envelope); ``payload`` is then only used to apply the bound.
        """
        size = len(payload) + len(topic)
        evicted: list[OutboxEntry] | None = None  # made only when something is evicted: this runs per message
        while self._entries and (
            len(self._entries) >= self.policy.max_messages or self._bytes + size > self.policy.max_bytes
        ):
            if self.policy.overflow is OverflowPolicy.REJECT:
                self.stats.rejected += 1
                raise OutboxFull(
                    f"the outbox holds {len(self._entries)} messages / {self._bytes} bytes, its bound "
                    f"({self.policy.max_messages} / {self.policy.max_bytes}); wait for the connection to drain it, "
                    "raise OutboxPolicy.max_messages/max_bytes, or choose overflow='drop-oldest'"
                )
            if self.policy.overflow is OverflowPolicy.DROP_NEWEST:
                self.stats.dropped_newest += 1
                return Admission(None)
            _, oldest = self._entries.popitem(last=False)
            self._bytes -= len(oldest.payload) + len(oldest.topic)
            self.stats.dropped_oldest += 1
            if evicted is None:
                evicted = []
            evicted.append(oldest)
        if evicted:
            self._forget([e.seq for e in evicted])
        seq = self._take_seq()
        message_id = f"{self._id_prefix}-{seq}"
        if wrap is not None:  # before storing, so a durable outbox keeps (and replays) what is sent
            payload = wrap(message_id, seq)
        entry = OutboxEntry(seq, message_id, topic, payload, qos, time.time())
        self._store(entry)
        self._entries[entry.seq] = entry
        self._bytes += len(payload) + len(topic)
        return Admission(entry, evicted or ())

    def remove(self, seq: int) -> None:
        """Forget an entry (PUBACK received, or rejected for good); unknown seqs are ignored."""
        entry = self._entries.pop(seq, None)
        if entry is not None:
            self._bytes -= len(entry.payload) + len(entry.topic)
            self._forget((seq,))

    def pending(self) -> Iterator[OutboxEntry]:
        """Entries in sequence order (a snapshot: safe while entries are added or removed)."""
        return iter(list(self._entries.values()))

    def get(self, seq: int) -> OutboxEntry | None:
        return self._entries.get(seq)

    def oldest_seq(self) -> int | None:
        """The sequence number of the oldest entry, or None when empty (O(1))."""
        return next(iter(self._entries), None)

    @property
    def newest_seq(self) -> int:
        """The last sequence number handed out (0 before the first)."""
        return self._next_seq - 1

    def close(self) -> None:
        """Release resources; a durable outbox keeps its file."""

    # ---- persistence hooks

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _store(self, entry: OutboxEntry) -> None:
        """Persist a new entry before it is sent."""

    def _forget(self, seqs: Sequence[int]) -> None:
        """Persist the removal of entries."""


class MemoryOutbox(Outbox):
    """The outbox in memory: at-least-once while the process lives."""


class SqliteOutbox(Outbox):
    """The outbox in a SQLite WAL file: survives a kill -9 of the device process."""

    def __init__(self, policy: OutboxPolicy, path: Path) -> None:
        super().__init__(policy)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if policy.durability is Durability.POWER else "NORMAL"
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, "
                "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, created REAL NOT NULL)"
            )
            rows = self._db.execute("SELECT seq, message_id, topic, payload, qos, created FROM outbox ORDER BY seq")
            for seq, message_id, topic, payload, qos, created in rows:
                self._entries[seq] = OutboxEntry(seq, message_id, topic, bytes(payload), qos, created)
                self._bytes += len(payload) + len(topic)
            seq_row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                self._db.close()
            raise ConfigError(
                f"the outbox file {path} is unreadable ({exc}); move it aside to start with an empty outbox"
            ) from exc
        self._next_seq = (seq_row[0] if seq_row else 0) + 1
        self.stats.restored = len(self._entries)

    def _take_seq(self) -> int:
        return self._next_seq  # AUTOINCREMENT assigns it in _store; the counter follows

    def _store(self, entry: OutboxEntry) -> None:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox(seq, message_id, topic, payload, qos, created) VALUES (?, ?, ?, ?, ?, ?)",
                (entry.seq, entry.message_id, entry.topic, entry.payload, entry.qos, entry.created),
            )
        self._next_seq = (cur.lastrowid or entry.seq) + 1

    def _forget(self, seqs: Sequence[int]) -> None:
        with self._lock:
            if len(seqs) == 1:
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seqs[0],))
            else:
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_outbox(policy: OutboxPolicy) -> Outbox:
    """The outbox ``policy`` describes: in memory, or in the SQLite file at ``policy.path``."""
    return SqliteOutbox(policy, policy.path) if policy.path is not None else MemoryOutbox(policy)
