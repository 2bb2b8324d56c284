"""The one token bucket: a burst, then the rate; an exact wait; never more than the rate allows."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet._rate import TokenBucket


def test_a_full_bucket_lets_its_burst_through_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(10, now=100.0)  # one second of burst by default
    assert [bucket.acquire(100.0) for _ in range(10)] == [0.0] * 10
    assert bucket.acquire(100.0) == pytest.approx(0.1)  # nothing taken: still empty
    assert bucket.acquire(100.05) == pytest.approx(0.05)
    assert bucket.acquire(100.1) == 0.0
    assert bucket.wait(200.0, 15) == pytest.approx(0.5)  # refilled to the capacity only


def test_a_clock_that_goes_back_refills_nothing_and_a_zero_rate_never_lets_through() -> None:
    bucket = TokenBucket(1, capacity=1, now=50.0)
    assert bucket.acquire(50.0) == 0.0
    assert bucket.acquire(40.0) == pytest.approx(1.0)  # wall time stepped back: still empty
    closed = TokenBucket(0)
    assert closed.acquire(1e9) == math.inf


def test_taking_into_debt_is_paid_by_later_refills() -> None:
    bucket = TokenBucket(100, capacity=100)
    bucket.take(250)  # e.g. a payload larger than the per-second byte budget
    assert bucket.wait(0.0, 1) == pytest.approx(1.51)
    assert bucket.acquire(1.51) == 0.0


def test_refused_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match="rate and a capacity of 0 or more"):
        TokenBucket(-1)
    with pytest.raises(ValueError, match="rate and a capacity"):
        TokenBucket(1, capacity=math.nan)


@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    capacity=st.floats(min_value=1, max_value=100),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_what_gets_through_never_exceeds_the_burst_plus_the_rate(
    rate: float, capacity: float, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, capacity=capacity)
    now, granted = 0.0, 0
    for gap in gaps:
        now += gap
        if bucket.acquire(now) == 0.0:
            granted += 1
    assert granted <= capacity + rate * now + 1e-6


@given(rate=st.floats(min_value=0.5, max_value=1000), start=st.floats(min_value=0, max_value=1e6))
def test_waiting_the_time_it_says_is_enough(rate: float, start: float) -> None:
    bucket = TokenBucket(rate, capacity=1, now=start)
    assert bucket.acquire(start) == 0.0
    wait = bucket.acquire(start)
    assert wait > 0
    assert bucket.acquire(start + wait) == 0.0
