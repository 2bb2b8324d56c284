"""The ingest pipeline over real MQTT: dedupe, schema rejects kept with the reason, hourly aggregates."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.cloud.services.ingest import IngestService
from iotfleet.config import Identity
from iotfleet.errors import CloudError
from iotfleet.sim.report import Report
from iotfleet.transport.base import ConnectOptions, InboundMessage
from iotfleet.transport.paho import PahoTransport
from tests.conftest import TEST_QUOTAS, wait_until

TOPIC = "dt/acme/hq/lamp-1/telemetry"
HOUR = 1_795_000_000 // 3600 * 3600  # the start of an hour


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", ingest=True, quotas=TEST_QUOTAS) as local:
        yield local


def telemetry(ts: float, power: float, dim: int = 50) -> bytes:
    body = {"ts": ts, "power_w": power, "dim": dim, "lux": 100.0, "occupancy": False, "temperature_c": 21.5}
    return json.dumps(body).encode()


def props(message_id: str, seq: int) -> list[tuple[str, str]]:
    return [
        ("iotfleet-msg-id", message_id),
        ("iotfleet-seq", str(seq)),
        ("iotfleet-sent-at", str(int(time.time() * 1000))),
    ]


def send_all(cloud: LocalCloud, lamp: Identity, messages: list[tuple[str, bytes, list[tuple[str, str]]]]) -> None:
    async def scenario() -> None:
        options = ConnectOptions(client_id="lamp-1", identity=lamp)
        session = await PahoTransport().connect(cloud.endpoints[0], options)
        for topic, payload, properties in messages:
            assert await session.publish(topic, payload, 1, properties) == 0
        await session.close()

    asyncio.run(scenario())


def test_dedupe_rejects_and_hourly_aggregates(cloud: LocalCloud) -> None:
    lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
    send_all(
        cloud,
        lamp,
        [
            (TOPIC, telemetry(HOUR + 1, 10.0), props("m1", 1)),
            (TOPIC, telemetry(HOUR + 2, 20.0), props("m2", 2)),
            (TOPIC, telemetry(HOUR + 2, 20.0), props("m2", 2)),  # a replay after a reconnect
            (TOPIC, telemetry(HOUR + 3600, 30.0), props("m3", 3)),  # the next hour
            (TOPIC, b"{not json", props("m4", 4)),
            (TOPIC, telemetry(HOUR + 5, 10.0, dim=140), props("m5", 5)),
            (TOPIC, telemetry(HOUR + 6, 10.0), []),  # no message id: cannot be deduped
            ("dt/acme/hq/lamp-1/weather", b"{}", props("m7", 7)),
        ],
    )
    assert wait_until(lambda: cloud.ingest_stats()[0]["received"] == 8)
    stats = cloud.ingest_stats()[0]
    assert (stats["ingested"], stats["duplicates"]) == (3, 1)
    assert stats["rejected"] == {
        "payload is not valid JSON": 1,
        "dim 140 is outside 0-100": 1,
        "no iotfleet-msg-id/iotfleet-seq user properties": 1,
        "unknown stream 'weather'": 1,
    }
    assert stats["by_device"]["lamp-1"].ranges() == [[1, 3]]
    assert stats["e2e"].count == 3
    ingest = cloud.region("eu-west-1").ingest
    assert ingest is not None
    rows = ingest.query("SELECT hour, count, min, max, avg FROM hourly_avg WHERE metric = 'power_w' ORDER BY hour")
    assert rows == [(HOUR // 3600, 2, 10.0, 20.0, 15.0), (HOUR // 3600 + 1, 1, 30.0, 30.0, 30.0)]
    kept = ingest.query("SELECT message_id, reason, payload FROM rejects ORDER BY id")
    assert kept[0] == ("m4", "payload is not valid JSON", b"{not json")  # the bad payload is kept as sent
    assert ingest.query("SELECT count(*) FROM raw") == [(3,)]


def test_a_cloud_without_ingest_says_how_to_get_one(local_cloud: LocalCloud) -> None:
    with pytest.raises(CloudError, match=r"LocalCloud\(ingest=True\)"):
        local_cloud.ingest_stats()


# ---------------------------------------------------------------- strict validation over MQTT


def test_nan_infinity_out_of_range_and_wrong_types_are_rejected_as_sent_and_the_rest_is_stored(
    cloud: LocalCloud,
) -> None:
    """One device's NaN once killed the flush task; now each bad payload is a reject and ingestion goes on."""
    lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
    good = json.loads(telemetry(HOUR + 1, 10.0))
    bad = {
        "m-nan": b'{"ts": 1795000001, "power_w": NaN, "dim": 5, "lux": 1, "occupancy": false, "temperature_c": 1}',
        "m-inf": b'{"ts": 1795000001, "power_w": Infinity, "dim": 5, "lux": 1, "occupancy": false, "temperature_c": 1}',
        "m-big": b'{"ts": 1795000001, "power_w": 1e400, "dim": 5, "lux": 1, "occupancy": false, "temperature_c": 1}',
        "m-range": json.dumps({**good, "power_w": 5e9}).encode(),
        "m-bool": json.dumps({**good, "dim": True}).encode(),
        "m-text": json.dumps({**good, "power_w": "10"}).encode(),
        "m-ts": json.dumps({**good, "ts": -1}).encode(),
    }
    messages = [(TOPIC, telemetry(HOUR + 1, 10.0), props("ok-1", 1))]
    messages += [(TOPIC, payload, props(mid, 2 + i)) for i, (mid, payload) in enumerate(bad.items())]
    messages += [(TOPIC, telemetry(HOUR + 2, 30.0), props("ok-2", 20))]  # after the bad ones: still stored
    send_all(cloud, lamp, messages)
    assert wait_until(lambda: cloud.ingest_stats()[0]["received"] == len(messages))
    stats = cloud.ingest_stats()[0]
    assert stats["ingested"] == 2
    assert stats["rejected"] == {
        "payload holds NaN, which is not JSON": 1,
        "payload holds Infinity, which is not JSON": 1,
        "number 1e400 is out of range (beyond a double)": 1,
        "power_w 5000000000.0 is outside 0-100000": 1,
        "field 'dim' has type bool": 1,
        "field 'power_w' has type str": 1,
        "ts -1 is outside 0-32503680000": 1,
    }
    ingest = cloud.region("eu-west-1").ingest
    assert ingest is not None
    kept = dict(ingest.query("SELECT message_id, payload FROM rejects"))
    assert kept == bad  # each payload as sent
    rows = ingest.query("SELECT count, min, max FROM hourly WHERE metric = 'power_w'")
    assert rows == [(2, 10.0, 30.0)]
    assert (stats["failures"], stats["cloud_failures"], stats["failed_batches"]) == ([], 0, 0)
    send_all(cloud, lamp, [(TOPIC, telemetry(HOUR + 3, 20.0), props("ok-3", 21))])  # the flush task lives on
    assert wait_until(lambda: cloud.ingest_stats()[0]["ingested"] == 3)


# ---------------------------------------------------------------- the store: transactions, dedupe, a full disk


def message(i: int, *, pad: int = 0, message_id: str | None = None) -> InboundMessage:
    body = json.loads(telemetry(HOUR + i, 10.0 + i % 7))
    if pad:
        body["note"] = "x" * pad  # extra fields are allowed; this one makes the message big
    user_properties = (("iotfleet-msg-id", message_id or f"m{i}"), ("iotfleet-seq", str(i)))
    return InboundMessage(TOPIC, json.dumps(body).encode(), 1, False, user_properties)


def test_a_batch_that_fails_rolls_back_and_its_messages_are_retried_one_by_one(tmp_path: Path) -> None:
    """A store capped at 64 KiB: a batch with one 60 KB message fails whole; the others are then stored."""
    ingest = IngestService(region="eu-west-1", path=tmp_path / "ingest.sqlite", max_store_bytes=64 * 1024)
    try:
        for i in range(1, 41):
            ingest.on_message(message(i))
        ingest.on_message(message(41, pad=60_000))
        ingest.flush()
        stats = ingest.stats()
        assert (stats["ingested"], stats["failed_batches"], stats["not_stored"]) == (40, 1, 1)
        assert stats["rejected"] == {"could not be stored: OperationalError: database or disk is full": 1}
        assert str(tmp_path / "ingest.sqlite") in stats["store_error"]
        assert "free disk space" in stats["store_error"]
        [failure] = ingest.failures.kept()
        assert failure.source == "ingest eu-west-1 store"
        assert ingest.query("SELECT count(*) FROM raw") == [(40,)]
        assert ingest.query("SELECT sum(count) FROM hourly WHERE metric = 'power_w'") == [(40,)]
        for i in range(42, 52):  # the service goes on: the transaction was rolled back, not left open
            ingest.on_message(message(i))
        ingest.flush()
        assert ingest.stats()["ingested"] == 50
        assert ingest.query("SELECT count(*) FROM raw") == [(50,)]
    finally:
        ingest.close()


def test_a_replay_after_a_restart_is_a_duplicate_found_in_the_store(tmp_path: Path) -> None:
    """Dedupe asks the store, not a set in memory: a replay is caught across batches and restarts."""
    first = IngestService(region="eu-west-1", path=tmp_path / "ingest.sqlite")
    for i in (1, 2, 3):
        first.on_message(message(i))
    first.flush()
    first.on_message(message(2))  # a replay in a later batch
    first.close()
    assert (first.stats()["ingested"], first.stats()["duplicates"]) == (3, 1)
    second = IngestService(region="eu-west-1", path=tmp_path / "ingest.sqlite")
    try:
        for i in (3, 4, 4):  # 3 was stored before the restart; 4 comes twice in one batch
            second.on_message(message(i))
        second.flush()
        assert (second.stats()["ingested"], second.stats()["duplicates"]) == (1, 2)
        assert second.query("SELECT sum(count) FROM hourly WHERE metric = 'dim'") == [(4,)]
    finally:
        second.close()


def test_memory_does_not_grow_with_the_number_of_message_ids(tmp_path: Path) -> None:
    """The old dedupe set grew by about 105 bytes per message id, forever."""
    ingest = IngestService(region="eu-west-1", path=tmp_path / "ingest.sqlite")
    try:

        def feed(start: int) -> None:
            for i in range(start, start + 20_000):
                ingest.on_message(message(i % 3000, message_id=f"{i:032x}"))
                if i % 2000 == 0:
                    ingest.flush()
            ingest.flush()

        feed(0)  # warm up: caches, histogram buckets, the seq set
        tracemalloc.start()
        try:
            feed(20_000)  # what stays allocated after this (the last batch, say) is replaced, not added to
            before = tracemalloc.get_traced_memory()[0]
            feed(40_000)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert ingest.stats()["ingested"] == 60_000
        assert grown < 500_000  # the set grew by about 2.4 MB per 20,000 ids of 32 characters
    finally:
        ingest.close()


def test_a_store_that_cannot_be_opened_is_an_error_naming_its_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(CloudError, match=rf"cannot open the ingest store {re.escape(str(blocker))}/ingest.sqlite"):
        IngestService(region="eu-west-1", path=blocker / "ingest.sqlite")


def test_a_full_store_ends_the_run_with_what_was_stored_and_a_count_of_what_was_not(tmp_path: Path) -> None:
    cloud = LocalCloud(
        ["eu-west-1"], workdir=tmp_path / "cloud", ingest=True, ingest_max_bytes=64 * 1024, quotas=TEST_QUOTAS
    )
    with cloud:
        lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
        sent = [(TOPIC, telemetry(HOUR + i, 10.0), props(f"m{i}", i)) for i in range(1, 601)]
        send_all(cloud, lamp, sent)
        assert wait_until(lambda: cloud.ingest_stats()[0]["received"] == len(sent))
        path = cloud.region("eu-west-1").directory / "ingest.sqlite"
        live = cloud.ingest_stats()[0]  # shown while the cloud runs, too
        assert live["not_stored"] > 0
        assert live["failures"][0].startswith(f"ingest eu-west-1 store: ingest store {path}: a batch of")
    problems = cloud.stop()  # already stopped by the with block: the summary is kept
    assert problems == cloud.problems
    [final] = cloud.final_ingest_stats
    assert final["ingested"] > 0
    assert final["not_stored"] > 0
    assert final["ingested"] + sum(final["rejected"].values()) == len(sent)
    assert any(f"{final['not_stored']} messages were not stored (ingest store {path}" in p for p in problems)
    assert any(p.startswith("ingest eu-west-1 store: failed") for p in problems)
    with sqlite3.connect(path) as db:  # what was stored is there
        assert db.execute("SELECT count(*) FROM raw").fetchone() == (final["ingested"],)
    report = Report.of_run(workers=[], ingest=cloud.final_ingest_stats, duration_s=1.0, config={}).to_dict()
    counts = report["regions"]["eu-west-1"]  # the simulator's report shows it too
    assert (counts["not_stored"], counts["failures"]) == (final["not_stored"], len(final["failures"]))


def test_the_figures_of_any_partition_of_the_sites_add_up_to_the_whole(tmp_path: Path) -> None:
    """What shards of a fleet read from one shared cloud, each for its own sites: together, the whole."""
    ingest = IngestService(region="eu-west-1", path=tmp_path / "ingest.sqlite")
    try:
        for i in range(1, 61):
            site, thing = ("hq", "lamp-1") if i % 3 else ("annex", "lamp-2")
            topic = f"dt/acme/{site}/{thing}/telemetry"
            body = json.loads(telemetry(HOUR + i, 10.0))
            properties = (("iotfleet-msg-id", f"m{i}"), ("iotfleet-seq", str(i)), ("iotfleet-sent-at", "1"))
            ingest.on_message(InboundMessage(topic, json.dumps(body).encode(), 1, False, properties))
            if i % 10 == 0:
                ingest.on_message(InboundMessage(topic, json.dumps(body).encode(), 1, False, properties))  # again
        ingest.on_message(InboundMessage("dt/acme/hq/lamp-1/telemetry", b"{not json", 1, False, properties))
        ingest.flush()
        whole = ingest.stats()
        hq = ingest.stats({"acme/hq"})
        annex = ingest.stats({"acme/annex"}, cloud=False)
        assert (hq["ingested"], annex["ingested"], whole["ingested"]) == (40, 20, 60)
        assert hq["duplicates"] + annex["duplicates"] == whole["duplicates"] == 6
        assert set(hq["by_device"]) == {"lamp-1"}
        assert set(annex["by_device"]) == {"lamp-2"}
        assert hq["e2e"].count + annex["e2e"].count == whole["e2e"].count == 60
        together = Counter(hq["per_second"]) + Counter(annex["per_second"])
        assert together == Counter(whole["per_second"])
        # what belongs to no site comes with cloud=True only, so the shards count it once
        assert hq["rejected"] == whole["rejected"] == {"payload is not valid JSON": 1}
        assert (annex["rejected"], annex["received"]) == ({}, 0)
        assert ingest.stats(set())["ingested"] == 0
    finally:
        ingest.close()
