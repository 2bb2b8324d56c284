"""The run's log-bucketed histograms as Prometheus histograms: cumulative, never optimistic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from iotfleet.metrics import Histogram
from iotfleet.sim.prometheus import BUCKETS_S, prometheus_buckets

latencies_ms = st.lists(st.floats(min_value=0.001, max_value=60_000, allow_nan=False), max_size=300)


@given(latencies_ms)
def test_each_bucket_counts_what_is_at_most_its_bound_give_or_take_one_3_percent_bucket(values: list[float]) -> None:
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    buckets = prometheus_buckets(histogram)
    assert [le for le, _ in buckets] == [*(f"{b:g}" for b in BUCKETS_S), "+Inf"]
    counts = [n for _, n in buckets]
    assert counts == sorted(counts)
    assert counts[-1] == len(values)
    for bound_s, (_, counted) in zip(BUCKETS_S, buckets, strict=False):
        bound_ms = bound_s * 1000
        assert counted <= sum(v <= bound_ms for v in values)  # never counts a slower sample as fast
        assert counted >= sum(v <= bound_ms / 1.03 for v in values)  # misses only those within a bucket
