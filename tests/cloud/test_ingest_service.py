"""The ingest pipeline over real MQTT: dedupe, schema rejects kept with the reason, hourly aggregates."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.config import Identity
from iotfleet.errors import CloudError
from iotfleet.transport.base import ConnectOptions
from iotfleet.transport.paho import PahoTransport
from tests.conftest import wait_until

TOPIC = "dt/acme/hq/lamp-1/telemetry"
HOUR = 1_795_000_000 // 3600 * 3600  # the start of an hour


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", ingest=True) as local:
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
