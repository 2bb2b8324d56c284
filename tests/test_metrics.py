"""Histograms and sequence sets: exact merges, honest quantiles."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from iotfleet.metrics import Histogram, SeqSet

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
