"""The worker's pacer: one heap and one timer for every device, and the account-wide publish rate."""

from __future__ import annotations

import asyncio
from pathlib import Path

from iotfleet.config import Endpoint, Identity
from iotfleet.sim.runner.pacer import Pacer
from iotfleet.sim.simulate import AWS_ACCOUNT_PUBLISH_RATE, ProvisionMode, SimConfig, Target
from tests.conftest import until


class AlwaysDue:
    """A device whose next task is always due: only the rate limit holds it back."""

    def __init__(self) -> None:
        self.active = True
        self.fired = 0
        self.errors: list[Exception] = []

    def next_at(self) -> float:
        return 0.0

    def fire(self) -> None:
        self.fired += 1

    def failed(self, exc: Exception) -> None:
        self.errors.append(exc)


def test_the_account_rate_bounds_what_fires_and_late_tasks_still_fire() -> None:
    rate = 200.0
    plans = [AlwaysDue() for _ in range(3)]

    async def scenario() -> float:
        pacer = Pacer(rate)
        for plan in plans:
            pacer.add(plan)
        loop = asyncio.get_running_loop()
        started = loop.time()
        running = loop.create_task(pacer.run())
        await asyncio.sleep(0.5)
        pacer.stop()
        await running
        assert pacer.waits > 0
        return loop.time() - started

    elapsed = asyncio.run(scenario())
    fired = sum(p.fired for p in plans)
    assert fired <= rate * elapsed + rate / 10 + 1  # the rate plus 0.1 s of burst, however fast the machine
    assert min(p.fired for p in plans) > 0  # held back, never starved
    assert not any(p.errors for p in plans)


class Broken(AlwaysDue):
    """A device type with a bug: every task raises."""

    def fire(self) -> None:
        super().fire()
        raise RuntimeError("bug")


class StopsAfter(AlwaysDue):
    """A healthy device that stops the pacer after its ``n``-th task."""

    def __init__(self, pacer: Pacer, n: int) -> None:
        super().__init__()
        self.pacer, self.n = pacer, n

    def fire(self) -> None:
        super().fire()
        if self.fired == self.n:
            self.pacer.stop()


def test_a_task_that_raises_is_handed_to_its_plan_and_the_other_devices_go_on() -> None:
    pacer = Pacer(1000.0)
    broken, fine = Broken(), StopsAfter(pacer, 5)
    pacer.add(broken)
    pacer.add(fine)
    asyncio.run(pacer.run())
    assert broken.fired >= 4  # it stayed scheduled, its turn after each of the other's
    assert len(broken.errors) == broken.fired
    assert all(isinstance(e, RuntimeError) for e in broken.errors)
    assert (fine.fired, fine.errors) == (5, [])


def test_a_real_target_gets_iot_cores_account_quota_unless_told_otherwise(tmp_path: Path) -> None:
    identity = Identity(thing_name="claim", cert_file=tmp_path / "c", key_file=tmp_path / "k", ca_file=tmp_path / "a")
    target = Target([Endpoint(region="eu-west-1", host="example.invalid", port=8883)], tmp_path / "a", identity, "t")
    assert SimConfig().publish_rate() is None  # the local cloud: unlimited
    assert SimConfig(target=target, provision=ProvisionMode.CLAIM).publish_rate() == AWS_ACCOUNT_PUBLISH_RATE
    assert SimConfig(target=target, provision=ProvisionMode.CLAIM, account_publish_rate=2000).publish_rate() == 2000


class Once:
    """A device with one task, due ``after_s`` from ``start``: it records when it ran."""

    def __init__(self, start: float, after_s: float, fired: list[tuple[str, float]], name: str) -> None:
        self.active = True
        self.due = start + after_s
        self.fired, self.name = fired, name

    def next_at(self) -> float:
        return self.due

    def fire(self) -> None:
        self.fired.append((self.name, asyncio.get_running_loop().time()))
        self.active = False  # one task only: dropped when next due
        self.due += 3600

    def failed(self, exc: Exception) -> None:
        raise AssertionError(exc)


def test_tasks_due_within_the_batch_window_run_in_one_wakeup_and_none_runs_earlier_than_that() -> None:
    fired: list[tuple[str, float]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pacer = Pacer(batch_s=0.05)
        start = loop.time()
        plans = [Once(start, 0.1, fired, "a"), Once(start, 0.13, fired, "b"), Once(start, 0.4, fired, "c")]
        for plan in plans:
            pacer.add(plan)
        running = loop.create_task(pacer.run())
        assert await until(lambda: len(fired) == 3)  # each records itself; the pacer wakes by its own timer
        pacer.stop()
        await running
        due = {p.name: p.due - 3600 for p in plans}
        assert [name for name, _ in fired] == ["a", "b", "c"]
        at = dict(fired)
        assert at["b"] - at["a"] < 0.01  # b, due 30 ms after a, went with a: one wakeup for both
        assert at["c"] > at["b"]  # 300 ms later: a wakeup of its own
        assert all(at[name] >= due[name] - 0.05 for name in at)  # never more than the window early

    asyncio.run(scenario())
