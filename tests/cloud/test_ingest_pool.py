"""A region's ingest in several processes (``LocalCloud(ingest_workers=N)``) over real brokers: the
shared subscription splits the messages, one store dedupes across the workers, and a worker that dies
is recorded while the others go on."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iotfleet.cloud.broker import BrokerState
from iotfleet.cloud.local import LocalCloud
from iotfleet.cloud.services.ingest import IngestService
from iotfleet.cloud.services.ingest_pool import IngestPool
from iotfleet.errors import ConfigError
from tests.cloud.test_ingest_service import HOUR, TOPIC, message, props, send_all, telemetry
from tests.conftest import TEST_QUOTAS, Probe, identity_context, process_alive, wait_until


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(
        ["eu-west-1"], workdir=tmp_path / "cloud", ingest=True, ingest_workers=2, quotas=TEST_QUOTAS
    ) as local:
        yield local


def pool_of(cloud: LocalCloud) -> IngestPool:
    pool = cloud.region("eu-west-1").ingest
    assert isinstance(pool, IngestPool)
    return pool


def test_two_workers_split_the_messages_and_store_each_once(cloud: LocalCloud) -> None:
    lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
    fresh = [(TOPIC, telemetry(HOUR + i, float(i % 50)), props(f"m{i}", i)) for i in range(1, 301)]
    replays = fresh[::3]  # sent again after the rest: any worker may get a replay
    send_all(cloud, lamp, fresh + replays)
    sent = len(fresh) + len(replays)
    assert wait_until(lambda: cloud.ingest_stats()[0]["received"] == sent, timeout=20)
    stats = cloud.ingest_stats()[0]
    assert (stats["ingested"], stats["duplicates"]) == (300, 100)
    assert stats["by_device"]["lamp-1"].ranges() == [[1, 300]]
    assert stats["e2e"].count == 300
    assert sum(stats["per_second"].values()) == 300
    assert stats["workers"] == 2
    split = stats["received_by_worker"]
    assert sum(split) == sent
    assert min(split) > 0, split  # both workers took a share
    assert stats["cpu_s"] > 0
    assert stats["presence"]["connected"] == 1  # worker 0 alone takes the lifecycle events: counted once
    pool = pool_of(cloud)
    assert pool.ingested == 300
    assert pool.query("SELECT count(*), count(DISTINCT message_id) FROM raw") == [(300, 300)]
    assert pool.query("SELECT sum(count) FROM hourly WHERE metric = 'power_w'") == [(300,)]


def test_basic_ingest_is_counted_once_with_two_workers(cloud: LocalCloud) -> None:
    lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
    send_all(cloud, lamp, [(f"$aws/rules/iotfleet_ingest/{TOPIC}", telemetry(HOUR, 5.0), props("b1", 1))])
    assert wait_until(lambda: cloud.ingest_stats()[0]["ingested"] == 1, timeout=10)
    stats = cloud.ingest_stats()[0]
    assert (stats["basic_ingest"], stats["received"], stats["duplicates"]) == (1, 1, 0)


def test_a_worker_that_dies_is_recorded_and_the_other_goes_on(cloud: LocalCloud) -> None:
    lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
    pool = pool_of(cloud)
    victim = pool.pids[1]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: cloud.failures.count == 1, timeout=10)
    [failure] = cloud.failures.kept()
    assert failure.source == "ingest eu-west-1 worker 1"
    assert "was killed by SIGKILL" in failure.error
    assert "not stored are lost" in failure.error
    # the broker drops the dead worker from the shared subscription: everything reaches worker 0
    send_all(cloud, lamp, [(TOPIC, telemetry(HOUR + i, 1.0), props(f"after-{i}", i)) for i in range(1, 21)])
    assert wait_until(lambda: cloud.ingest_stats()[0]["ingested"] == 20, timeout=20)
    stats = cloud.ingest_stats()[0]
    assert stats["received_by_worker"] == [20]
    assert "ingest eu-west-1 worker 1" in " ".join(stats["failures"])
    problems = cloud.stop()
    assert any("worker 1" in line for line in problems)
    assert cloud.final_ingest_stats[0]["ingested"] == 20
    assert not process_alive(victim)
    assert not any(process_alive(pid) for pid in pool.pids)


@pytest.mark.parametrize("faults", [("kill",), ("blackhole", "kill")])
def test_a_killed_region_lets_devices_in_again_only_once_its_ingest_serves_it(
    cloud: LocalCloud, probes: Callable[..., Probe], faults: tuple[str, ...]
) -> None:
    """A restarted broker that let devices in before the ingest had subscribed again dropped their
    messages (no subscriber): a rollout test lost one that way. Here an ingest worker is held stopped
    while its region restarts: no device gets in until the worker is back, then nothing is lost."""
    lamp = cloud.register_thing("lamp-1", tenant="acme", site="hq")
    region = cloud.region("eu-west-1")
    stopped = pool_of(cloud).pids[1]
    for fault in faults:  # however the broker came to be killed
        getattr(region, fault)()
    os.kill(stopped, signal.SIGSTOP)
    restoring = threading.Thread(target=region.restore)
    try:
        restoring.start()
        assert wait_until(lambda: region.state is BrokerState.RUNNING, timeout=10)
        early = probes(region.endpoint, "lamp-1", identity_context(lamp))
        assert not early.connect(), "a device got in before the ingest was back"
        assert early.connack is None  # hung up on before its CONNACK, as a region still coming up
    finally:
        os.kill(stopped, signal.SIGCONT)
        restoring.join(timeout=60)
    assert not restoring.is_alive()
    send_all(cloud, lamp, [(TOPIC, telemetry(HOUR, 1.0), props("after-restart", 1))])
    assert wait_until(lambda: cloud.ingest_stats()[0]["ingested"] == 1, timeout=10)
    assert cloud.failures.count == 0


def test_workers_stop_with_the_cloud(tmp_path: Path) -> None:
    with LocalCloud(["eu-west-1"], workdir=tmp_path / "cloud", ingest=True, ingest_workers=1) as local:
        pids = pool_of(local).pids
        assert len(pids) == 1
        assert process_alive(pids[0])
    assert not process_alive(pids[0])
    assert local.problems == []


def test_negative_workers_are_refused_with_what_to_give() -> None:
    with pytest.raises(ConfigError, match=r"0 \(in the cloud's process\) or more"):
        LocalCloud(["eu-west-1"], ingest=True, ingest_workers=-1)


def test_two_stores_writing_the_same_messages_at_once_store_each_once(tmp_path: Path) -> None:
    """The store's transactions take the write lock before looking ids up: two writers handed the same
    messages (as two workers may be, after a failover's replay) store each once, the other counts it."""
    path = tmp_path / "ingest.sqlite"
    writers = [IngestService(region="eu-west-1", path=path) for _ in range(2)]
    try:
        for writer in writers:
            for i in range(1, 2001):
                writer.on_message(message(i))
        start = threading.Barrier(2)

        def flush(writer: IngestService) -> None:
            start.wait()
            writer.flush()

        threads = [threading.Thread(target=flush, args=(w,)) for w in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        figures = [w.stats() for w in writers]
        assert sum(f["ingested"] for f in figures) == 2000
        assert sum(f["duplicates"] for f in figures) == 2000
        assert writers[0].query("SELECT count(*) FROM raw") == [(2000,)]
        assert writers[0].query("SELECT sum(count) FROM hourly WHERE metric = 'dim'") == [(2000,)]
    finally:
        for writer in writers:
            writer.close()
