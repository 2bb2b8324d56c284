"""Histograms, sequence sets and timelines: exact merges, honest quantiles."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.metrics import Histogram, SeqSet, Timeline

latencies = st.lists(st.floats(min_value=0.001, max_value=60_000, allow_nan=False), min_size=1, max_size=300)


@given(latencies)
def test_quantiles_are_within_one_bucket_above_the_exact_value(values: list[float]) -> None:
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
        got = histogram.quantile(q)
        assert exact <= got * (1 + 1e-9)
        assert got <= exact * 2 ** (1 / histogram.precision) * (1 + 1e-9)
    assert histogram.max == max(values)
    assert histogram.count == len(values)


@given(latencies, latencies)
def test_merging_equals_adding_everything_to_one(a: list[float], b: list[float]) -> None:
    left, right, both = Histogram(), Histogram(), Histogram()
    for value in a:
        left.add(value)
        both.add(value)
    for value in b:
        right.add(value)
        both.add(value)
    merged = Histogram.from_dict(left.to_dict()).merge(Histogram.from_dict(right.to_dict()))
    assert merged.buckets == both.buckets
    assert merged.summary() == both.summary()


seqs = st.lists(st.integers(min_value=1, max_value=200), max_size=200)


@given(seqs, seqs)
def test_seqset_behaves_like_a_set(a: list[int], b: list[int]) -> None:
    left, right = SeqSet(a), SeqSet(b)
    assert len(left) == len(set(a))
    assert left.duplicates == len(a) - len(set(a))
    assert all(v in left for v in a)
    assert left.missing_from(right) == len(set(a) - set(b))
    assert SeqSet.from_dict(left.to_dict()).ranges() == left.ranges()
    union = SeqSet.from_dict(left.to_dict()).update(right)
    assert len(union) == len(set(a) | set(b))
    starts = [s for s, _ in union.ranges()]
    assert starts == sorted(starts)
    assert all(e + 1 < s2 for (_, e), (s2, _) in zip(union.ranges(), union.ranges()[1:], strict=False))


def test_in_order_sequences_are_one_range_and_late_ones_are_counted() -> None:
    seqs = SeqSet(range(1, 10_001))
    assert seqs.ranges() == [[1, 10_000]]
    seqs.add(5)
    seqs.add(10_002)
    seqs.add(10_001)
    assert (seqs.duplicates, seqs.out_of_order, seqs.ranges()) == (1, 2, [[1, 10_002]])


def test_a_union_counts_the_overlap_and_invents_no_disorder() -> None:
    """Region 1 stored 1-50 and 120-150, region 2 stored 51-119 and 140: one message twice, nothing late."""
    region_1 = SeqSet([*range(1, 51), *range(120, 151)])
    region_2 = SeqSet([*range(51, 120), 140])
    union = SeqSet.from_dict(region_1.to_dict()).update(region_2)
    assert (union.ranges(), union.duplicates, union.out_of_order) == ([[1, 150]], 1, 0)


# ---------------------------------------------------------------- Timeline

EVENTS = st.lists(
    st.tuples(
        st.integers(0, 30),  # second
        st.sampled_from(["sent", "acked", "errors", "connects:eu", "disconnects:eu", "acked:us", "ingested:us"]),
        st.integers(1, 3),
        st.floats(0.1, 500.0),  # an ack latency in that second
    ),
    max_size=60,
)


@given(EVENTS, st.integers(1, 4))
def test_a_timeline_split_over_workers_merges_to_the_whole(
    events: list[tuple[int, str, int, float]], parts: int
) -> None:
    whole, pieces = Timeline(), [Timeline() for _ in range(parts)]
    for i, (second, key, n, latency) in enumerate(events):
        at = 1_800_000_000 + second + 0.5
        for timeline in (whole, pieces[i % parts]):
            timeline.count(key, n, at=at)
            timeline.latency_ms(latency, at=at)
    merged = Timeline()
    for piece in pieces:
        merged.merge(Timeline.from_dict(json.loads(json.dumps(piece.to_dict()))))
    assert merged.rows(["eu", "us"]) == whole.rows(["eu", "us"])
    assert bool(whole) is bool(events)


def test_rows_fill_every_second_and_keep_a_gauge_as_its_changes() -> None:
    timeline = Timeline()
    timeline.count("connects:eu", 3, at=100.2)
    timeline.count("acked", 2, at=100.7)
    timeline.count("acked:eu", 2, at=100.7)
    timeline.latency_ms(5.0, at=100.7)
    timeline.count("disconnects:eu", 1, at=102.1)
    timeline.count("ingested:eu", 2, at=102.9)
    rows = timeline.rows(["eu", "us"])
    assert [r["t"] for r in rows] == [0, 1, 2]  # second 101 had nothing, and still has its row
    assert [r["regions"]["eu"]["connected"] for r in rows] == [3, 3, 2]
    assert [r["regions"]["us"]["connected"] for r in rows] == [0, 0, 0]
    assert [(r["acked"], r["ingested"]) for r in rows] == [(2, 0), (0, 0), (0, 2)]
    assert [r["ack_p99_ms"] for r in rows][1:] == [None, None]
    assert rows[0]["ack_p99_ms"] == pytest.approx(5.0, rel=0.02)
    assert Timeline().rows() == []


@given(EVENTS, st.integers(-2, 33), st.integers(-2, 33))
def test_the_latency_between_two_seconds_is_exactly_the_latencies_of_the_seconds_between(
    events: list[tuple[int, str, int, float]], first: int, end: int
) -> None:
    timeline, expected = Timeline(), Histogram()
    base = 1_800_000_000
    for second, _key, _n, latency in events:
        timeline.latency_ms(latency, at=base + second + 0.25)
        if first <= second < end:
            expected.add(latency)
    got = timeline.latency_between(base + first, base + end)
    assert (got.count, got.buckets, got.max) == (expected.count, expected.buckets, expected.max)
    assert got.total == pytest.approx(expected.total)  # the same values, summed in another order
