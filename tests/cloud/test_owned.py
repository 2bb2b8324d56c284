"""Owned background work: a task or thread that fails is logged, counted, kept and summarised; never silent."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from iotfleet.cloud.local import LocalCloud
from iotfleet.cloud.owned import KEEP, Failures
from iotfleet.cloud.registry import Change, Replicator
from iotfleet.cloud.services.base import ServiceHost
from iotfleet.errors import RegistryError
from tests.conftest import wait_until


async def _fail(message: str) -> None:
    raise RuntimeError(message)


async def _idle() -> None:
    await asyncio.Event().wait()


def test_a_task_that_raises_is_recorded_and_a_cancelled_one_is_not(caplog: pytest.LogCaptureFixture) -> None:
    failures = Failures()

    async def scenario() -> None:
        failing = failures.spawn(_fail("flush broke"), "ingest eu-west-1 flush_loop")
        waiting = failures.spawn(_idle(), "idle")
        await asyncio.gather(failing, return_exceptions=True)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

    asyncio.run(scenario())
    assert failures.counts() == {"ingest eu-west-1 flush_loop": 1}
    [failure] = failures.kept()
    assert str(failure) == "ingest eu-west-1 flush_loop: RuntimeError: flush broke"
    assert failures.summary() == ["ingest eu-west-1 flush_loop: failed 1 time; first: RuntimeError: flush broke"]
    assert "flush broke" in caplog.text  # logged with its traceback


def test_a_thread_that_raises_is_recorded() -> None:
    failures = Failures()

    def work() -> None:
        raise OSError("disk gone")

    failures.thread(work, "replicator").join(timeout=5)
    assert failures.counts("repl") == {"replicator": 1}
    assert failures.kept()[0].error == "OSError: disk gone"


def test_a_failure_repeating_forever_costs_no_memory() -> None:
    failures = Failures()
    for i in range(KEEP * 10):
        failures.record("ingest eu-west-1 store", f"full {i}")
    assert failures.count == KEEP * 10
    assert len(failures.kept()) == KEEP
    assert failures.summary() == [f"ingest eu-west-1 store: failed {KEEP * 10} times; first: full 0"]


def test_the_service_host_records_what_its_loop_cannot_hand_to_anyone() -> None:
    host = ServiceHost()
    try:
        done = threading.Event()

        def broken_callback() -> None:
            done.set()
            raise ValueError("callback broke")

        host.loop.call_soon_threadsafe(broken_callback)
        assert done.wait(5)
        host.call(asyncio.sleep(0))  # the loop has run the callback's exception handler by now
        assert host.failures.counts() == {"service host loop": 1}
        assert "ValueError: callback broke" in host.failures.summary()[0]
    finally:
        host.stop()


def test_replication_errors_are_recorded_as_failures() -> None:
    failures = Failures()
    applied = threading.Event()

    def apply(target: str, regs: tuple[Change, ...]) -> None:
        applied.set()
        raise RegistryError("disk full")

    replicator = Replicator(apply, lag=0.001, failures=failures)
    replicator.replicate((), ["us-east-1"])
    assert applied.wait(5)
    replicator.close()  # joins the thread, after it recorded the failure
    assert failures.counts() == {"replicator to us-east-1": 1}
    assert replicator.errors == ["replicating  to us-east-1: disk full"]


def test_a_cloud_reports_a_replication_that_failed_at_stop(tmp_path: Path) -> None:
    """Replication errors were kept in a list nothing read; now stop() returns and logs them."""
    cloud = LocalCloud(["eu-west-1", "us-east-1"], workdir=tmp_path / "cloud", replication_lag=0.5)
    with cloud:
        # two regions register lamp-1 before either copy arrives: each copy then meets another lamp-1 identity
        cloud.register_thing("lamp-1", tenant="acme", site="hq", region="us-east-1")
        cloud.register_thing("lamp-1", tenant="acme", site="hq", region="eu-west-1")
        assert wait_until(lambda: len(cloud.failures.counts("replicator")) == 2)
    assert len(cloud.problems) == 2
    for line, target in zip(cloud.problems, ("eu-west-1", "us-east-1"), strict=True):
        assert line.startswith(f"replicator to {target}: failed 1 time; first: replicating thing lamp-1 to {target}: ")
        assert "another certificate already uses the identity 'lamp-1'" in line
