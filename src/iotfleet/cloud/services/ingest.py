"""The ingestion pipeline of one region: validate, dedupe, store raw messages, hourly aggregates, events.

It subscribes to every device data topic through a shared subscription (``$share/iotfleet-ingest/...``,
so several ingest workers could split the load), reads the message id, sequence number and send time
the device SDK puts in MQTT5 user properties, and:

- **validates** strictly (:mod:`iotfleet.cloud.schemas`): NaN, Infinity, numbers out of range and wrong
  types go to ``rejects`` with the reason and the payload as sent, and are counted, never dropped;
- **dedupes** against the store's key (``raw.message_id``): a replay after a reconnect or failover is
  counted, not stored twice, and the memory used does not grow with the number of messages;
- **stores** raw messages, hourly aggregates per device and metric (count, min, max, avg) and domain
  events in SQLite (WAL), one transaction per batch on a writer thread (SQLite releases the GIL, so
  messages keep being handled while a batch is written); the hourly cells of stored messages are kept
  in memory and upserted every ``HOURLY_EVERY_S`` (each is touched by many messages), and by :meth:`flush`;
- **survives its store**: a batch that fails rolls back, is counted and is retried one message at a
  time; a message that still cannot be stored becomes a reject with the reason, and one whose reject
  cannot be stored either (a full or read-only disk) is counted in ``not_stored``, the error naming
  the store's path. Every failure is recorded in the cloud's :class:`~iotfleet.cloud.owned.Failures`;
- **measures** per-device sequence sets and the end-to-end latency (send -> stored) for the report.

Threads: :meth:`on_message` runs on the services' loop and only parses and queues; everything the
store decides (stored, duplicate, not stored) is counted on the writer thread, and :meth:`settle`
reads the figures there, after every earlier batch is written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from iotfleet.cloud.presence import PRESENCE_FILTER, PRESENCE_PREFIX
from iotfleet.cloud.rules import INGEST, Rule, default_rules
from iotfleet.cloud.schemas import EVENTS, METRICS, NotJson, loads_strict, rejection_reason
from iotfleet.cloud.services.base import RegionService
from iotfleet.errors import CloudError
from iotfleet.metrics import Histogram, SeqSet
from iotfleet.topics import (
    BASIC_INGEST_PREFIX,
    MESSAGE_ID_PROPERTY,
    SENT_AT_PROPERTY,
    SEQUENCE_PROPERTY,
    TopicScheme,
    split_basic_ingest,
)
from iotfleet.transport.base import InboundMessage

__all__ = ["IngestService", "merge_stats"]

SHARE_GROUP: Final = "iotfleet-ingest"
FLUSH_EVERY_S: Final = 0.2
HOURLY_EVERY_S: Final = 2.0
MAX_REASONS: Final = 200  # distinct reject reasons counted; the rest are counted together
OTHER_REASONS: Final = "other reasons"
_MAX_SEQ_DIGITS: Final = 18  # SQLite's INTEGER is 64-bit
_LOOKUP_CHUNK: Final = 500  # message ids looked up per query (SQLite's default limit is 32,766 variables)

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


Cell = list[float]  # count, min, max, sum


class SiteFigures:
    """What one site's devices got stored: the figures a shard of a fleet reads for its own sites
    (:meth:`IngestService.stats`), which add up to the whole over any partition of the sites."""

    __slots__ = ("duplicates", "e2e", "ingested", "per_second")

    def __init__(self) -> None:
        self.ingested = 0
        self.duplicates = 0  # by message id: already stored
        self.e2e = Histogram()  # ms, from the device's send to the store
        self.per_second: Counter[int] = Counter()  # messages stored, by the epoch second they arrived


@dataclass(frozen=True, slots=True)
class _Row:
    """A valid message, waiting for the writer: the ``raw`` row, its event row and metric values."""

    raw: tuple[Any, ...]  # message_id, thing, stream, seq, sent_at, ingested_at, payload
    event: tuple[Any, ...] | None
    hour: int
    metrics: tuple[tuple[str, float], ...]
    site: str  # "<tenant>/<site>" of its topic: the figures are kept per site (SiteFigures)

    @property
    def message_id(self) -> str:
        return str(self.raw[0])


@dataclass(slots=True)
class _Batch:
    rows: list[_Row] = field(default_factory=list)
    rejects: list[tuple[Any, ...]] = field(default_factory=list)  # topic, message_id, reason, payload, at
    hourly: bool = False  # upsert the hourly cells with this batch


def _add_cell(cells: dict[tuple[str, str, int], Cell], key: tuple[str, str, int], cell: Cell) -> None:
    have = cells.get(key)
    if have is None:
        cells[key] = list(cell)
    else:
        have[0] += cell[0]
        have[1] = min(have[1], cell[1])
        have[2] = max(have[2], cell[2])
        have[3] += cell[3]


def _cells_of(rows: list[_Row]) -> dict[tuple[str, str, int], Cell]:
    cells: dict[tuple[str, str, int], Cell] = {}
    for row in rows:
        for metric, value in row.metrics:
            _add_cell(cells, (row.raw[1], metric, row.hour), [1, value, value, value])
    return cells


# Several ingest workers (processes) may write one store: each transaction takes the write lock before
# it reads which message ids are stored, so two workers handed the same message (a replay after a
# failover goes to any worker of the shared subscription) cannot both store it; the other waits.
_BEGIN: Final = "BEGIN IMMEDIATE"
_BUSY_TIMEOUT_MS: Final = 60_000
_INSERT_RAW: Final = "INSERT OR IGNORE INTO raw VALUES (?, ?, ?, ?, ?, ?, ?)"
_INSERT_EVENT: Final = "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)"
_INSERT_REJECT: Final = "INSERT INTO rejects(topic, message_id, reason, payload, at) VALUES (?, ?, ?, ?, ?)"
_UPSERT_HOURLY: Final = (
    "INSERT INTO hourly VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(thing, metric, hour) DO UPDATE SET "
    "count = count + excluded.count, min = MIN(min, excluded.min), max = MAX(max, excluded.max), "
    "sum = sum + excluded.sum"
)


class IngestService(RegionService):
    """One region's ingest: :meth:`settle` gives what the simulator's report needs.

    ``max_store_bytes`` caps the store's size (SQLite's ``max_page_count``): beyond it writes fail as on
    a full disk, and the messages are counted as not stored.
    """

    kind = "ingest"

    def __init__(
        self,
        *,
        region: str,
        path: Path,
        scheme: TopicScheme | None = None,
        max_store_bytes: int | None = None,
        rules: Sequence[Rule] | None = None,
        unshared: bool = True,
    ) -> None:
        super().__init__(region)
        self.path = path
        self.scheme = scheme or TopicScheme()
        self.rules = [r for r in (default_rules(self.scheme) if rules is None else rules) if r.action == INGEST]
        self.filters = (
            # what each ingest rule's FROM clause selects, shared by every ingest worker of the region
            *(f"$share/{SHARE_GROUP}/{r.topic_filter}" for r in self.rules if r.topic_filter is not None),
            # Basic Ingest to each ingest rule, and lifecycle events (counted, as a fleet dashboard would).
            # Not shared: mosquitto 2.0.11 delivers no $-topic to a shared subscription (tried:
            # "$share/g/$aws/events/presence/+/+" is granted and gets nothing), so of several workers of
            # a region only one (``unshared``) subscribes to them, or each would get every such message
            *((*(f"{BASIC_INGEST_PREFIX}{r.name}/#" for r in self.rules), PRESENCE_FILTER) if unshared else ()),
        )
        self._lock = threading.Lock()  # the connection is shared by the writer thread and query()
        self._db = _open_store(path, max_store_bytes)
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"iotfleet-ingest-{region}")
        self._pending = _Batch()
        self._hourly_at = time.monotonic()
        self.received = 0  # on the services' loop
        self.last_message_at = 0.0
        # lifecycle events received, "connected" and "disconnected:<reason>" (the loop's; settle() copies it)
        self.presence: Counter[str] = Counter()
        self.basic_ingest = 0  # messages that came by Basic Ingest ($aws/rules/<rule>/...), on the loop
        # everything below is the writer thread's
        self._hourly: dict[tuple[str, str, int], Cell] = {}  # cells of stored messages, not yet upserted
        self.rejected: Counter[str] = Counter()
        self.failed_batches = 0  # batches that rolled back and were retried one message at a time
        self.not_stored = 0  # messages neither stored nor kept as rejects (the store could not be written)
        self.hourly_not_stored = 0  # messages whose hourly cell could not be upserted
        self.store_error: str | None = None  # the last error of the store, naming its path
        self.by_device: dict[str, SeqSet] = {}
        self.sites: dict[str, SiteFigures] = {}  # "<tenant>/<site>" -> what its devices got stored
        self._site_of: dict[str, str] = {}  # thing -> its site

    def start(self) -> None:
        self._spawn(self._flush_loop())

    # ---------------------------------------------------------------- the MQTT path (services' loop)

    def on_message(self, message: InboundMessage) -> None:
        topic = message.topic
        if topic.startswith(PRESENCE_PREFIX):
            self._count_presence(message)
            return
        basic = split_basic_ingest(topic)
        if basic is not None:  # the rule sees the topic without the prefix
            self.basic_ingest += 1
            topic = basic[1]
        self._ingest(message, topic)

    def _ingest(self, message: InboundMessage, topic: str) -> None:
        now = time.time()
        self.received += 1
        self.last_message_at = now
        parsed = self.scheme.parse_data_topic(topic)
        props = dict(message.user_properties)
        message_id = props.get(MESSAGE_ID_PROPERTY)
        seq_text = props.get(SEQUENCE_PROPERTY, "")
        if parsed is None:
            self._reject(message, message_id, "topic does not follow the data scheme", now)
            return
        if message_id is None or not seq_text.isdigit():
            self._reject(message, message_id, "no iotfleet-msg-id/iotfleet-seq user properties", now)
            return
        if len(seq_text) > _MAX_SEQ_DIGITS:
            self._reject(message, message_id, f"iotfleet-seq has more than {_MAX_SEQ_DIGITS} digits", now)
            return
        scope, stream = parsed
        thing = scope.thing
        try:
            text = message.payload.decode()
            body = loads_strict(text)
        except NotJson as exc:
            self._reject(message, message_id, str(exc), now)
            return
        except ValueError:
            self._reject(message, message_id, "payload is not valid JSON", now)
            return
        reason = rejection_reason(stream, body)
        if reason is not None:
            self._reject(message, message_id, reason, now)
            return
        sent_text = props.get(SENT_AT_PROPERTY, "")
        sent_at = int(sent_text) / 1000 if sent_text.isdigit() and len(sent_text) <= _MAX_SEQ_DIGITS else 0.0
        ts = body["ts"]
        self._pending.rows.append(
            _Row(
                (message_id, thing, stream, int(seq_text), sent_at, now, text),
                (message_id, thing, stream, ts, text) if stream in EVENTS else None,
                int(ts // 3600),
                tuple((metric, float(body[metric])) for metric in METRICS.get(stream, ())),
                f"{scope.tenant}/{scope.site}",
            )
        )

    def _count_presence(self, message: InboundMessage) -> None:
        try:
            event = json.loads(message.payload)
            kind = event["eventType"]
            self.presence[kind if kind == "connected" else f"{kind}:{event.get('disconnectReason')}"] += 1
        except (ValueError, KeyError, TypeError):
            self.presence["malformed"] += 1

    def _reject(self, message: InboundMessage, message_id: str | None, reason: str, now: float) -> None:
        self._pending.rejects.append((message.topic, message_id, reason, message.payload, now))

    # ---------------------------------------------------------------- handing batches to the writer

    def _take(self, *, hourly: bool) -> _Batch:
        """Hand over what arrived since the last batch (on the services' loop, or after it stopped)."""
        batch, self._pending = self._pending, _Batch()
        if hourly or time.monotonic() - self._hourly_at >= HOURLY_EVERY_S:
            batch.hourly, self._hourly_at = True, time.monotonic()
        return batch

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            batch = self._take(hourly=False)
            if batch.rows or batch.rejects or batch.hourly:
                try:
                    await loop.run_in_executor(self._writer, self._write, batch)
                except Exception as exc:  # noqa: BLE001 - a bug (_write records store errors): recorded, go on
                    self.failures.record(f"ingest {self.region} flush", exc)

    async def settle(self, sites: Collection[str] | None = None, *, cloud: bool = True) -> dict[str, Any]:
        """Write everything that arrived (hourly cells too) and return :meth:`stats` (of ``sites``, with
        the pipeline's own figures if ``cloud``), taken on the writer, and the lifecycle events counted.

        Call on the services' loop. Batches are written in order, so the figures include every message
        received before the call.
        """
        batch = self._take(hourly=True)
        # the loop's, copied here
        loop_figures = {
            "presence": dict(self.presence) if cloud else {},
            "basic_ingest": self.basic_ingest if cloud else 0,
        }
        stats = await asyncio.get_running_loop().run_in_executor(
            self._writer, self._write_and_count, batch, sites, cloud
        )
        return {**stats, **loop_figures}

    def flush(self) -> None:
        """Write everything that arrived, hourly aggregates included, now and in order.

        Call on the services' loop or after it stopped (:meth:`close` does).
        """
        self._writer.submit(self._write, self._take(hourly=True)).result()

    # ---------------------------------------------------------------- the writer thread

    def _write_and_count(self, batch: _Batch, sites: Collection[str] | None, cloud: bool) -> dict[str, Any]:
        self._write(batch)
        return self.stats(sites, cloud=cloud)

    def _write(self, batch: _Batch) -> None:
        """Store one batch in one transaction; on any error roll back and store it one message at a time."""
        for reject in batch.rejects:
            self._count_reject(reject[2])
        with self._lock:
            try:
                stored = self._store_batch(batch)
            except Exception as exc:  # noqa: BLE001 - any error: roll back, record, retry the messages one by one
                self._rollback()
                self.failed_batches += 1
                self._store_failed(exc, f"a batch of {len(batch.rows) + len(batch.rejects)} messages")
                stored = self._store_one_by_one(batch)
        self._account(stored)

    def _store_batch(self, batch: _Batch) -> list[_Row]:
        db = self._db
        db.execute(_BEGIN)
        fresh = self._fresh(batch.rows)
        db.executemany(_INSERT_RAW, [row.raw for row in fresh])
        db.executemany(_INSERT_EVENT, [row.event for row in fresh if row.event is not None])
        db.executemany(_INSERT_REJECT, batch.rejects)
        cells = _cells_of(fresh)
        if batch.hourly:
            for key, cell in self._hourly.items():
                _add_cell(cells, key, cell)
            db.executemany(_UPSERT_HOURLY, [(*key, int(c[0]), c[1], c[2], c[3]) for key, c in cells.items()])
        db.execute("COMMIT")
        if batch.hourly:
            self._hourly = {}
        else:
            for key, cell in cells.items():
                _add_cell(self._hourly, key, cell)
        return fresh

    def _fresh(self, rows: list[_Row]) -> list[_Row]:
        """The rows whose message id is neither in the store nor earlier in ``rows``; the rest are duplicates."""
        stored: set[str] = set()
        ids = [row.message_id for row in rows]
        for i in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[i : i + _LOOKUP_CHUNK]
            sql = "SELECT message_id FROM raw WHERE message_id IN (" + ",".join("?" * len(chunk)) + ")"  # noqa: S608 - placeholders only
            stored.update(r[0] for r in self._db.execute(sql, chunk))
        fresh: list[_Row] = []
        for row in rows:
            if row.message_id in stored:
                self._site(row.site).duplicates += 1
            else:
                stored.add(row.message_id)
                fresh.append(row)
        return fresh

    def _store_one_by_one(self, batch: _Batch) -> list[_Row]:
        """Retry a failed batch: each message in its own transaction; one that fails becomes a reject."""
        stored: list[_Row] = []
        for row in batch.rows:
            try:
                with self._transaction():
                    fresh = self._fresh([row])
                    if fresh:
                        self._db.execute(_INSERT_RAW, row.raw)
                        if row.event is not None:
                            self._db.execute(_INSERT_EVENT, row.event)
            except sqlite3.Error as exc:  # this message cannot be stored: keep it as a reject, with the reason
                reason = f"could not be stored: {type(exc).__name__}: {exc}"
                self._count_reject(reason)
                self._keep_reject((row.raw[0], row.raw[1], row.raw[2], row.raw[6], row.raw[5]), reason)
                continue
            stored.extend(fresh)
        for reject in batch.rejects:
            self._keep_reject(reject, None)
        cells = _cells_of(stored)
        if batch.hourly:
            for key, cell in self._hourly.items():
                _add_cell(cells, key, cell)
            self._hourly = {}
            for key, cell in cells.items():
                try:
                    with self._transaction():
                        self._db.execute(_UPSERT_HOURLY, (*key, int(cell[0]), cell[1], cell[2], cell[3]))
                except sqlite3.Error as exc:  # counted: these messages are stored but missing from the hourly table
                    self.hourly_not_stored += int(cell[0])
                    self._store_failed(exc, f"the hourly cell {key}")
        else:
            for key, cell in cells.items():
                _add_cell(self._hourly, key, cell)
        return stored

    def _count_reject(self, reason: str) -> None:
        """Count a reject by its reason; past :data:`MAX_REASONS` distinct reasons, under one key."""
        self.rejected[reason if reason in self.rejected or len(self.rejected) < MAX_REASONS else OTHER_REASONS] += 1

    def _keep_reject(self, reject: tuple[Any, ...], reason: str | None) -> None:
        """Store one reject (``reason`` replaces the one it has); if even that fails, count it as not stored."""
        row = reject if reason is None else (*reject[:2], reason, *reject[3:])
        try:
            with self._transaction():
                self._db.execute(_INSERT_REJECT, row)
        except sqlite3.Error:  # the store cannot be written at all; the failure is already recorded
            self.not_stored += 1

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:  # SQLite may have rolled back already (a full disk does)
                self.failures.record(f"ingest {self.region} store", exc)

    def _store_failed(self, exc: Exception, what: str) -> None:
        self.store_error = f"ingest store {self.path}: {what} could not be written ({type(exc).__name__}: {exc})"
        if isinstance(exc, sqlite3.OperationalError) and ("full" in str(exc) or "readonly" in str(exc)):
            self.store_error += ": free disk space or make the store writable"
        self.failures.record(f"ingest {self.region} store", self.store_error)

    def _site(self, site: str) -> SiteFigures:
        figures = self.sites.get(site)
        if figures is None:
            figures = self.sites[site] = SiteFigures()
        return figures

    def _account(self, stored: list[_Row]) -> None:
        for row in stored:
            thing, seq, sent_at, now = row.raw[1], row.raw[3], row.raw[4], row.raw[5]
            figures = self._site(row.site)
            figures.ingested += 1
            figures.per_second[int(now)] += 1
            seqs = self.by_device.get(thing)
            if seqs is None:
                seqs = self.by_device[thing] = SeqSet()
                self._site_of[thing] = row.site
            seqs.add(seq)
            if sent_at:
                figures.e2e.add(max(0.0, (now - sent_at) * 1000))

    @property
    def ingested(self) -> int:
        """Messages stored so far; safe to read from another thread (a live dashboard's), as the writer
        thread adds sites: the sites are taken in one step before they are summed."""
        return sum(figures.ingested for figures in tuple(self.sites.values()))

    @property
    def duplicates(self) -> int:
        return sum(figures.duplicates for figures in tuple(self.sites.values()))

    # ---------------------------------------------------------------- reading

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the store (after a :meth:`flush`), e.g. ``SELECT * FROM hourly_avg``."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def stats(self, sites: Collection[str] | None = None, *, cloud: bool = True) -> dict[str, Any]:
        """The figures, as copies (call on the writer thread, as :meth:`settle` does, or after :meth:`close`).

        ``sites`` ("<tenant>/<site>", None for all) limits what was stored to those sites' devices:
        ``ingested``, ``duplicates``, ``e2e``, ``by_device`` and ``per_second``, which add up exactly
        over any partition of the sites (the shards of a fleet). The pipeline's own figures, which belong
        to no site (``received``, ``rejected``, ``not_stored``, ...), are there only with ``cloud``: one
        shard of a fleet reads them.
        """
        chosen = [f for site, f in self.sites.items() if sites is None or site in sites]
        e2e, per_second = Histogram(), Counter[int]()
        for figures in chosen:
            e2e.merge(figures.e2e)
            per_second.update(figures.per_second)
        by_device = {
            thing: SeqSet.from_dict(seqs.to_dict())
            for thing, seqs in self.by_device.items()
            if sites is None or self._site_of[thing] in sites
        }
        stored = {
            "region": self.region,
            "ingested": sum(f.ingested for f in chosen),
            "duplicates": sum(f.duplicates for f in chosen),
            "e2e": e2e,
            "by_device": by_device,
            "per_second": dict(per_second),
        }
        pipeline = {
            "received": self.received if cloud else 0,
            "rejected": dict(self.rejected) if cloud else {},
            "failed_batches": self.failed_batches if cloud else 0,
            "not_stored": self.not_stored if cloud else 0,
            "hourly_not_stored": self.hourly_not_stored if cloud else 0,
            "store_error": self.store_error if cloud else None,
        }
        return {**stored, **pipeline}

    def close(self) -> None:
        """Write what is left and close the store; a store that cannot be written is counted, not raised."""
        try:
            self.flush()
        finally:
            self._writer.shutdown(wait=True)
            with self._lock:
                self._db.close()


def merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several ingest workers of one region (:meth:`IngestService.stats` each, one store)
    as one region's: counts add up, sequence sets and histograms are united, the last store error stays."""
    merged = dict(parts[0])
    merged["e2e"] = Histogram()
    merged["by_device"] = {}
    per_second: Counter[int] = Counter()
    rejected: Counter[str] = Counter()
    presence: Counter[str] = Counter()
    for key in _SUMMED:
        merged[key] = 0
    for part in parts:
        for key in _SUMMED:
            merged[key] += part.get(key, 0)
        merged["e2e"].merge(part["e2e"])
        for thing, seqs in part["by_device"].items():
            merged["by_device"].setdefault(thing, SeqSet()).update(seqs)
        per_second.update(part["per_second"])
        rejected.update(part["rejected"])
        presence.update(part.get("presence", {}))
        merged["store_error"] = part["store_error"] or merged["store_error"]
    merged.update(per_second=dict(per_second), rejected=dict(rejected))
    if "presence" in merged:
        merged["presence"] = dict(presence)
    return merged


_SUMMED: Final = (
    "ingested",
    "duplicates",
    "received",
    "failed_batches",
    "not_stored",
    "hourly_not_stored",
    "basic_ingest",
)


class _Transaction:
    """``BEGIN`` ... ``COMMIT``, rolled back on any error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute(_BEGIN)
        return self._db

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")


def create_store(path: Path) -> None:
    """Create the store (its tables, in WAL mode) before several processes open it: switching to WAL and
    creating the tables take the write lock in ways SQLite's busy timeout does not always wait for, and two
    ingest workers opening a new store at once failed with "database is locked" (seen on a loaded machine)."""
    _open_store(path, None).close()


def _open_store(path: Path, max_store_bytes: int | None) -> sqlite3.Connection:
    """Open (or create) the store; an error names the path and what to do."""
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")  # first: workers open the store together
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        if max_store_bytes is not None:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {max(1, max_store_bytes // page_size)}")
    except sqlite3.Error as exc:
        raise CloudError(
            f"cannot open the ingest store {path}: {exc}; check that its directory exists, is writable "
            "and has free space"
        ) from exc
    return db
