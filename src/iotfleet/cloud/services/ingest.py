"""The ingestion pipeline of one region: validate, dedupe, store raw messages, hourly aggregates, events.

It subscribes to every device data topic through a shared subscription (``$share/iotfleet-ingest/...``,
so several ingest workers could split the load), reads the message id, sequence number and send time
the device SDK puts in MQTT5 user properties, and:

- **dedupes** by message id (a replay after a reconnect or failover is counted, not stored twice);
- **validates** the payload against the stream's schema (:data:`iotfleet.sim.workload.SCHEMAS`); a bad
  one goes to ``rejects`` with the reason, never silently dropped;
- **stores** raw messages, hourly aggregates per device and metric (count, min, max, avg) and domain
  events in SQLite (WAL), committing in batches on a writer thread (SQLite releases the GIL, so
  messages keep being handled while a batch is written); the hourly cells are kept in memory and
  upserted every ``HOURLY_EVERY_S`` (each is touched by many messages), and by :meth:`flush`;
- **measures** per-device sequence sets and the end-to-end latency (send → ingested) for the report.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from iotfleet.cloud.services.base import RegionService
from iotfleet.metrics import Histogram, SeqSet
from iotfleet.sim.workload import EVENTS, METRICS, validate
from iotfleet.topics import TopicScheme
from iotfleet.transport.base import InboundMessage

__all__ = ["IngestService"]

SHARE_GROUP: Final = "iotfleet-ingest"
MESSAGE_ID, SEQ, SENT_AT = "iotfleet-msg-id", "iotfleet-seq", "iotfleet-sent-at"
FLUSH_EVERY_S: Final = 0.2
HOURLY_EVERY_S: Final = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw (
    message_id TEXT PRIMARY KEY, thing TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    sent_at REAL NOT NULL, ingested_at REAL NOT NULL, payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hourly (
    thing TEXT NOT NULL, metric TEXT NOT NULL, hour INTEGER NOT NULL,
    count INTEGER NOT NULL, min REAL NOT NULL, max REAL NOT NULL, sum REAL NOT NULL,
    PRIMARY KEY (thing, metric, hour)
);
CREATE TABLE IF NOT EXISTS events (
    message_id TEXT PRIMARY KEY, thing TEXT NOT NULL, kind TEXT NOT NULL, ts REAL NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, message_id TEXT, reason TEXT NOT NULL,
    payload BLOB NOT NULL, at REAL NOT NULL
);
CREATE VIEW IF NOT EXISTS hourly_avg AS
    SELECT thing, metric, hour, count, min, max, sum / count AS avg FROM hourly;
"""


def _topic_pattern(scheme: TopicScheme) -> re.Pattern[str]:
    pattern = re.escape(scheme.data)
    for name in ("tenant", "site", "thing", "stream"):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/]+)")
    return re.compile(pattern)


@dataclass(slots=True)
class _Batch:
    raw: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    rejects: list[tuple[Any, ...]]
    hourly: dict[tuple[str, str, int], list[float]]


class IngestService(RegionService):
    """One region's ingest: ``stats()`` gives what the simulator's report needs."""

    kind = "ingest"

    def __init__(self, *, region: str, path: Path, scheme: TopicScheme | None = None) -> None:
        super().__init__(region)
        self.scheme = scheme or TopicScheme()
        self.filters = (f"$share/{SHARE_GROUP}/{self.scheme.data_filter()}",)
        self._topic = _topic_pattern(self.scheme)
        self._lock = threading.Lock()  # the connection is shared by the writer thread and query()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"iotfleet-ingest-{region}")
        self._hourly_at = time.monotonic()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._seen: set[str] = set()
        self._raw: list[tuple[Any, ...]] = []
        self._events: list[tuple[Any, ...]] = []
        self._rejects: list[tuple[Any, ...]] = []
        self._hourly: dict[tuple[str, str, int], list[float]] = {}
        self.received = 0
        self.ingested = 0
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.by_device: dict[str, SeqSet] = {}
        self.e2e = Histogram()
        self.last_message_at = 0.0

    def start(self) -> None:
        self._spawn(self._flush_loop())

    # ---------------------------------------------------------------- the MQTT path

    def on_message(self, message: InboundMessage) -> None:
        now = time.time()
        self.received += 1
        self.last_message_at = now
        match = self._topic.fullmatch(message.topic)
        props = dict(message.user_properties)
        message_id = props.get(MESSAGE_ID)
        seq_text = props.get(SEQ, "")
        if match is None:
            self._reject(message, message_id, "topic does not follow the data scheme", now)
            return
        if message_id is None or not seq_text.isdigit():
            self._reject(message, message_id, "no iotfleet-msg-id/iotfleet-seq user properties", now)
            return
        if message_id in self._seen:
            self.duplicates += 1
            return
        thing, stream = match.group("thing"), match.group("stream")
        try:
            text = message.payload.decode()
            body = json.loads(text)
        except ValueError:
            self._reject(message, message_id, "payload is not valid JSON", now)
            return
        reason = validate(stream, body)
        if reason is not None:
            self._reject(message, message_id, reason, now)
            return
        self._seen.add(message_id)
        self.ingested += 1
        seq = int(seq_text)
        seqs = self.by_device.get(thing)
        if seqs is None:
            seqs = self.by_device[thing] = SeqSet()
        seqs.add(seq)
        sent_at = int(props.get(SENT_AT, "0")) / 1000
        if sent_at:
            self.e2e.add(max(0.0, (now - sent_at) * 1000))
        self._raw.append((message_id, thing, stream, seq, sent_at, now, text))
        if stream in EVENTS:
            self._events.append((message_id, thing, stream, body["ts"], text))
        hour = int(body["ts"] // 3600)
        for metric in METRICS.get(stream, ()):
            value = float(body[metric])
            cell = self._hourly.get((thing, metric, hour))
            if cell is None:
                self._hourly[(thing, metric, hour)] = [1, value, value, value]
            else:
                cell[0] += 1
                cell[1] = min(cell[1], value)
                cell[2] = max(cell[2], value)
                cell[3] += value

    def _reject(self, message: InboundMessage, message_id: str | None, reason: str, now: float) -> None:
        self.rejected[reason] += 1
        self._rejects.append((message.topic, message_id, reason, message.payload, now))

    # ---------------------------------------------------------------- storage

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            batch = self._take(hourly=time.monotonic() - self._hourly_at >= HOURLY_EVERY_S)
            if batch is not None:
                await loop.run_in_executor(self._writer, self._write, batch)

    def flush(self) -> None:
        """Write everything that arrived, hourly aggregates included, now (one transaction)."""
        batch = self._take(hourly=True)
        if batch is not None:
            self._write(batch)

    def _take(self, *, hourly: bool) -> _Batch | None:
        """Hand over what arrived since the last batch (on the services' loop)."""
        if not (self._raw or self._rejects or (hourly and self._hourly)):
            return None
        batch = _Batch(self._raw, self._events, self._rejects, self._hourly if hourly else {})
        self._raw, self._events, self._rejects = [], [], []
        if hourly:
            self._hourly, self._hourly_at = {}, time.monotonic()
        return batch

    def _write(self, batch: _Batch) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO raw VALUES (?, ?, ?, ?, ?, ?, ?)", batch.raw)
            db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", batch.events)
            db.executemany(
                "INSERT INTO rejects(topic, message_id, reason, payload, at) VALUES (?, ?, ?, ?, ?)", batch.rejects
            )
            db.executemany(
                "INSERT INTO hourly VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(thing, metric, hour) DO UPDATE SET "
                "count = count + excluded.count, min = MIN(min, excluded.min), max = MAX(max, excluded.max), "
                "sum = sum + excluded.sum",
                [(t, m, h, int(c[0]), c[1], c[2], c[3]) for (t, m, h), c in batch.hourly.items()],
            )
            db.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the store (after a :meth:`flush`), e.g. ``SELECT * FROM hourly_avg``."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def stats(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "received": self.received,
            "ingested": self.ingested,
            "duplicates": self.duplicates,
            "rejected": dict(self.rejected),
            "e2e": self.e2e,
            "by_device": self.by_device,
        }

    def close(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)
        with self._lock:
            self._db.close()
