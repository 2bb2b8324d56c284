"""Endpoint selection: backoff with full jitter, failover after N failures or T seconds, failback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.config import Endpoint, ReconnectPolicy
from iotfleet.device.failover import EndpointSelector
from iotfleet.errors import ConfigError

EPS = [Endpoint(region=f"r{i}", host="localhost", port=8000 + i) for i in range(3)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def selector(
    policy: ReconnectPolicy, rng: float = 1.0, endpoints: list[Endpoint] = EPS
) -> tuple[EndpointSelector, Clock]:
    clock = Clock()
    return EndpointSelector(endpoints, policy, rng=lambda: rng, clock=clock), clock


@given(min_b=st.floats(0.01, 5), factor=st.floats(1, 100), failures=st.integers(1, 30), rng=st.floats(0, 0.999999))
def test_backoff_is_full_jitter_below_a_capped_exponential(
    min_b: float, factor: float, failures: int, rng: float
) -> None:
    policy = ReconnectPolicy(
        min_backoff_s=min_b, max_backoff_s=min_b * factor, failover_after_failures=1000, failover_after_s=1e9
    )
    sel, _ = selector(policy, rng, EPS[:1])
    for k in range(1, failures + 1):
        step = sel.failed()
        ceiling = min(policy.max_backoff_s, min_b * 2**k)
        assert 0 <= step.delay_s <= ceiling
        assert step.delay_s == pytest.approx(rng * ceiling)
        assert step.failover_from is None


def test_fails_over_after_n_consecutive_failures_in_order_and_wraps() -> None:
    sel, _ = selector(ReconnectPolicy(failover_after_failures=3, failover_after_s=1e9))
    assert [sel.failed().failover_from for _ in range(3)] == [None, None, EPS[0]]
    assert sel.current == EPS[1]
    for _ in range(3):
        step = sel.failed()
    assert (step.failover_from, sel.current) == (EPS[1], EPS[2])
    for _ in range(3):
        step = sel.failed()
    assert sel.current == EPS[0]


def test_fails_over_after_t_seconds_without_a_connection() -> None:
    sel, clock = selector(ReconnectPolicy(failover_after_failures=100, failover_after_s=10))
    sel.connected()
    clock.now = 100
    sel.disconnected()
    clock.now = 105
    assert sel.failed().failover_from is None
    clock.now = 110
    assert sel.failed().failover_from == EPS[0]


def test_a_silent_session_counts_as_a_failure() -> None:
    sel, _ = selector(ReconnectPolicy(failover_after_failures=2, failover_after_s=1e9))
    sel.connected()
    assert sel.disconnected(silent=True).failover_from is None
    assert sel.failed().failover_from == EPS[0]


def test_a_stable_session_that_resets_does_not_count_as_a_failure() -> None:
    sel, clock = selector(ReconnectPolicy(failover_after_failures=2, failover_after_s=1e9, stable_after_s=5))
    sel.failed()
    sel.connected()
    clock.now += 5
    assert sel.disconnected().failover_from is None  # the earlier failure is forgotten too
    assert sel.failed().failover_from is None
    assert sel.failed().failover_from == EPS[0]


def test_a_session_that_ends_within_seconds_is_a_failed_attempt() -> None:
    """A revoked certificate or an eviction: connect, dropped at once, again and again, must fail over."""
    policy = ReconnectPolicy(
        min_backoff_s=1, max_backoff_s=100, stable_after_s=5, failover_after_failures=3, failover_after_s=1e9
    )
    sel, clock = selector(policy)
    delays = []
    for _ in range(2):
        sel.connected()
        clock.now += 0.3
        step = sel.disconnected()
        assert step.failover_from is None
        delays.append(step.delay_s)
    assert delays == [2, 4]  # the backoff grows
    sel.connected()
    clock.now += 0.3
    assert sel.disconnected().failover_from == EPS[0]
    assert sel.current == EPS[1]


def test_short_sessions_do_not_reset_the_time_without_a_connection() -> None:
    sel, clock = selector(ReconnectPolicy(failover_after_failures=100, failover_after_s=10, stable_after_s=5))
    for _ in range(4):
        sel.connected()
        clock.now += 2.9
        step = sel.disconnected()
    assert step.failover_from == EPS[0]
    assert clock.now == pytest.approx(11.6)


def test_the_default_stable_session_threshold_is_a_few_seconds() -> None:
    assert 1 <= ReconnectPolicy().stable_after_s <= 10


def test_backoff_resets_only_after_a_stable_connection() -> None:
    policy = ReconnectPolicy(
        min_backoff_s=1, max_backoff_s=100, stable_after_s=30, failover_after_failures=100, failover_after_s=1e9
    )
    sel, clock = selector(policy, endpoints=EPS[:1])
    for _ in range(4):
        sel.failed()
    sel.connected()
    clock.now += 5
    assert sel.disconnected().delay_s == 32  # short-lived: a failed attempt, the backoff grows
    sel.connected()
    clock.now += 31
    assert sel.disconnected().delay_s == 1  # stable: back to the first level


def test_failback_is_probed_periodically_only_away_from_the_preferred_endpoint() -> None:
    sel, clock = selector(ReconnectPolicy(failover_after_failures=1, failback_probe_s=30))
    sel.connected()
    clock.now = 1000
    assert not sel.failback_due()
    sel.failed()
    sel.connected()
    assert sel.current == EPS[1]
    clock.now += 29
    assert not sel.failback_due()
    clock.now += 1
    assert sel.failback_due()
    sel.probe_failed()
    assert not sel.failback_due()
    clock.now += 30
    assert sel.failed_back() == EPS[1]
    assert sel.current == EPS[0]
    assert not sel.failback_due()


def test_failback_can_be_turned_off() -> None:
    sel, clock = selector(ReconnectPolicy(failover_after_failures=1, failback=False))
    sel.failed()
    sel.connected()
    clock.now += 1e6
    assert not sel.failback_due()


def test_needs_an_endpoint_and_sane_backoff() -> None:
    with pytest.raises(ConfigError, match="at least one endpoint"):
        EndpointSelector([], ReconnectPolicy())
    with pytest.raises(ValueError, match="max_backoff_s"):
        ReconnectPolicy(min_backoff_s=10, max_backoff_s=1)


def test_a_failback_that_does_not_last_makes_the_next_probe_wait_longer() -> None:
    """The preferred endpoint accepts and then drops us (a revoked certificate there): no flapping."""
    policy = ReconnectPolicy(failover_after_failures=1, failover_after_s=1e9, failback_probe_s=10, stable_after_s=5)
    sel, clock = selector(policy, endpoints=EPS[:2])
    sel.failed()
    sel.connected()  # on EPS[1]
    intervals = []
    for _ in range(3):
        start = clock.now
        while not sel.failback_due():
            clock.now += 1
        intervals.append(clock.now - start)
        sel.failed_back()
        clock.now += 0.5
        assert sel.disconnected().failover_from == EPS[0]  # dropped at once: back to EPS[1]
        sel.connected()
    assert intervals == [10, 20, 40]
    clock.now += 100
    sel.failed_back()
    clock.now += 5
    sel.disconnected()  # a failback that lasted: probing is back to its normal pace
    sel.failed()
    sel.connected()
    start = clock.now
    while not sel.failback_due():
        clock.now += 1
    assert clock.now - start == 10


STANDBY = ReconnectPolicy(
    failover_after_failures=1, failover_after_s=1e9, failback_probe_s=10, stable_after_s=5, standby=True
)


def test_a_standby_goes_where_a_failover_would_but_only_to_another_region() -> None:
    sel, _ = selector(STANDBY)
    assert sel.standby_target() == EPS[1]
    assert sel.promoted(EPS[1]) == EPS[0]
    assert sel.current == EPS[1]
    assert sel.standby_target() == EPS[2]
    assert selector(ReconnectPolicy())[0].standby_target() is None  # not asked for
    assert selector(STANDBY, endpoints=EPS[:1])[0].standby_target() is None
    same_region = Endpoint(region="r0", host="127.0.0.9", port=9)  # one broker: one client id, two sessions
    assert selector(STANDBY, endpoints=[EPS[0], same_region])[0].standby_target() is None


def test_a_standby_that_takes_over_resets_the_backoff_and_on_the_preferred_endpoint_is_on_probation() -> None:
    sel, clock = selector(STANDBY, endpoints=EPS[:2])
    sel.failed()  # the preferred endpoint is down: on to the other
    sel.connected()
    clock.now += 100
    assert sel.failback_due()
    sel.promoted(EPS[0])  # the standby, open on the preferred endpoint, takes over: a failback
    assert sel.current == EPS[0]
    assert not sel.failback_due()
    clock.now += 1
    sel.disconnected()  # it did not last: like a failed probe, the next failback waits twice as long
    sel.promoted(EPS[1])
    assert sel.current == EPS[1]
    clock.now += 10
    assert not sel.failback_due()
    clock.now += 10
    assert sel.failback_due()
    sel.promoted(EPS[0])
    clock.now += 6
    sel.disconnected()  # this one lasted: a stable session, the plain probe interval again
    sel.promoted(EPS[1])
    clock.now += 10
    assert sel.failback_due()
