"""Mergeable measurements: log-bucketed latency histograms, per-device sequence sets, and per-second timelines.

All serialise to plain JSON and merge exactly, so worker processes, shards on other machines and the
ingest side can each measure alone and the parent adds them up (DESIGN.md decision 11).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Histogram", "SeqSet", "Timeline"]


class Histogram:
    """Latencies in milliseconds in log buckets: ``precision`` buckets per doubling (~3% wide at 24).

    Quantiles are reported as the bucket's upper edge (never optimistic); ``max`` and ``count`` are exact.
    Values below 1 µs share the first bucket.
    """

    __slots__ = ("buckets", "count", "max", "precision", "total")

    def __init__(self, precision: int = 24) -> None:
        self.precision = precision
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def _index(self, value: float) -> int:
        return (
            max(-20 * self.precision, math.ceil(math.log2(value) * self.precision))
            if value > 0
            else -20 * self.precision
        )

    def add(self, value_ms: float, n: int = 1) -> None:
        index = self._index(value_ms)
        self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += n
        self.total += value_ms * n
        self.max = max(self.max, value_ms)

    def merge(self, other: Histogram) -> Histogram:
        if other.precision != self.precision:
            raise ValueError("histograms of different precision cannot be merged")
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        return self

    def quantile(self, q: float) -> float:
        """The value at or below which a fraction ``q`` of samples lie (0 when empty)."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(2 ** (index / self.precision), self.max)
        return self.max

    def summary(self) -> dict[str, float | int]:
        """``count``, ``p50``, ``p95``, ``p99``, ``p999``, ``max`` and ``mean`` in ms, rounded to µs."""
        values = {
            f"p{label}": self.quantile(q) for label, q in (("50", 0.5), ("95", 0.95), ("99", 0.99), ("999", 0.999))
        }
        values["max"] = self.max
        values["mean"] = self.total / self.count if self.count else 0.0
        return {"count": self.count, **{k: round(v, 3) for k, v in values.items()}}

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "count": self.count,
            "total": self.total,
            "max": self.max,
            "buckets": {str(k): v for k, v in self.buckets.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        histogram = cls(int(data["precision"]))
        histogram.buckets = {int(k): int(v) for k, v in data["buckets"].items()}
        histogram.count = int(data["count"])
        histogram.total = float(data["total"])
        histogram.max = float(data["max"])
        return histogram


class SeqSet:
    """A set of positive integers kept as sorted, disjoint, non-adjacent ``[start, end]`` ranges.

    A device's sequence numbers mostly arrive in order, so a day of acknowledgements is a few ranges.
    ``added_before`` counts additions that were already present (duplicates), ``out_of_order`` those
    smaller than the largest seen so far.
    """

    __slots__ = ("_ends", "_starts", "duplicates", "highest", "out_of_order")

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.duplicates = 0
        self.out_of_order = 0
        self.highest = 0
        for value in values:
            self.add(value)

    def __len__(self) -> int:
        return sum(e - s + 1 for s, e in zip(self._starts, self._ends, strict=True))

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and self._ends[i] >= value

    def ranges(self) -> list[list[int]]:
        return [[s, e] for s, e in zip(self._starts, self._ends, strict=True)]

    def add(self, value: int) -> bool:
        """Add ``value``; False (and a duplicate counted) when it was already there."""
        if value < self.highest:
            self.out_of_order += 1
        self.highest = max(self.highest, value)
        i = bisect.bisect_right(self._starts, value) - 1
        if i >= 0 and self._ends[i] >= value:
            self.duplicates += 1
            return False
        joins_left = i >= 0 and self._ends[i] == value - 1
        joins_right = i + 1 < len(self._starts) and self._starts[i + 1] == value + 1
        if joins_left and joins_right:
            self._ends[i] = self._ends[i + 1]
            del self._starts[i + 1], self._ends[i + 1]
        elif joins_left:
            self._ends[i] = value
        elif joins_right:
            self._starts[i + 1] = value
        else:
            self._starts.insert(i + 1, value)
            self._ends.insert(i + 1, value)
        return True

    def count_between(self, low: int, high: int) -> int:
        """How many members lie in ``[low, high]``."""
        i = max(0, bisect.bisect_right(self._starts, low) - 1)
        total = 0
        while i < len(self._starts) and self._starts[i] <= high:
            total += max(0, min(high, self._ends[i]) - max(low, self._starts[i]) + 1)
            i += 1
        return total

    def missing_from(self, other: SeqSet) -> int:
        """How many members of ``self`` are not in ``other`` (e.g. acked but never ingested)."""
        return len(self) - sum(other.count_between(s, e) for s, e in zip(self._starts, self._ends, strict=True))

    def update(self, other: SeqSet) -> SeqSet:
        """Union in place (merging shards or regions), range by range.

        Members in both count as duplicates (the same message stored twice). Order is only meaningful
        within one stream of arrivals, so the union adds ``other``'s out-of-order count and none of its own.
        """
        for low, high in zip(other._starts, other._ends, strict=True):
            self.duplicates += self.count_between(low, high)
            first = bisect.bisect_left(self._ends, low - 1)  # the first range touching [low - 1, ...]
            last = bisect.bisect_right(self._starts, high + 1)  # past the last range touching [..., high + 1]
            start, end = low, high
            if first < last:
                start, end = min(low, self._starts[first]), max(high, self._ends[last - 1])
            self._starts[first:last] = [start]
            self._ends[first:last] = [end]
        self.highest = max(self.highest, other.highest)
        self.out_of_order += other.out_of_order
        self.duplicates += other.duplicates
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"ranges": self.ranges(), "duplicates": self.duplicates, "out_of_order": self.out_of_order}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeqSet:
        seqs = cls()
        for s, e in data["ranges"]:
            seqs._starts.append(int(s))
            seqs._ends.append(int(e))
        seqs.highest = seqs._ends[-1] if seqs._ends else 0
        seqs.duplicates = int(data.get("duplicates", 0))
        seqs.out_of_order = int(data.get("out_of_order", 0))
        return seqs


class Timeline:
    """Figures per epoch second that merge exactly: counts by key (``sent``, ``acked``, ``errors``,
    ``connects:<region>``, ``disconnects:<region>``, ``ingested:<region>``, ...) and a latency histogram.

    Seconds are epoch seconds, so the timelines of workers and shards (on one clock, or NTP-close ones)
    line up; :meth:`rows` turns them into one row per second of a run. A gauge such as the devices
    connected in a region is kept as its changes (``connects:`` and ``disconnects:``), which add up
    exactly where samples of a gauge would not.
    """

    def __init__(self) -> None:
        self.counts: dict[int, Counter[str]] = {}
        self.latency: dict[int, Histogram] = {}

    def __bool__(self) -> bool:
        return bool(self.counts or self.latency)

    def count(self, key: str, n: int = 1, *, at: float | None = None) -> None:
        second = int(time.time() if at is None else at)
        counts = self.counts.get(second)
        if counts is None:
            counts = self.counts[second] = Counter()
        counts[key] += n

    def latency_ms(self, value_ms: float, *, at: float | None = None) -> None:
        second = int(time.time() if at is None else at)
        histogram = self.latency.get(second)
        if histogram is None:
            histogram = self.latency[second] = Histogram()
        histogram.add(value_ms)

    def latency_between(self, first: int, end: int) -> Histogram:
        """The ack latencies of the epoch seconds from ``first`` up to, not including, ``end``, in one
        histogram."""
        total = Histogram()
        for at, histogram in self.latency.items():
            if first <= at < end:
                total.merge(histogram)
        return total

    def merge(self, other: Timeline) -> Timeline:
        for second, counts in other.counts.items():
            self.counts.setdefault(second, Counter()).update(counts)
        for second, histogram in other.latency.items():
            self.latency.setdefault(second, Histogram(histogram.precision)).merge(histogram)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": {str(s): dict(c) for s, c in sorted(self.counts.items())},
            "latency": {str(s): h.to_dict() for s, h in sorted(self.latency.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timeline:
        timeline = cls()
        timeline.counts = {int(s): Counter(c) for s, c in data.get("counts", {}).items()}
        timeline.latency = {int(s): Histogram.from_dict(h) for s, h in data.get("latency", {}).items()}
        return timeline

    def rows(self, regions: Sequence[str] = ()) -> list[dict[str, Any]]:
        """One row per second from the first to the last: ``t`` (seconds from the first), ``sent``,
        ``acked``, ``ingested``, ``errors``, ``ack_p99_ms`` (None in a second with no ack) and, by region,
        ``connected`` (at the end of that second), ``acked`` and ``ingested``."""
        seconds = [*self.counts, *self.latency]
        if not seconds:
            return []
        first, last = min(seconds), max(seconds)
        names = sorted({*regions, *(k.split(":", 1)[1] for c in self.counts.values() for k in c if ":" in k)})
        connected = dict.fromkeys(names, 0)
        rows = []
        for second in range(first, last + 1):
            counts = self.counts.get(second, Counter())
            histogram = self.latency.get(second)
            for region in names:
                connected[region] += counts[f"connects:{region}"] - counts[f"disconnects:{region}"]
            rows.append(
                {
                    "t": second - first,
                    "epoch": second,
                    "sent": counts["sent"],
                    "acked": counts["acked"],
                    "ingested": sum(counts[f"ingested:{r}"] for r in names),
                    "errors": counts["errors"],
                    "ack_p99_ms": round(histogram.quantile(0.99), 3) if histogram and histogram.count else None,
                    "regions": {
                        r: {
                            "connected": connected[r],
                            "acked": counts[f"acked:{r}"],
                            "ingested": counts[f"ingested:{r}"],
                        }
                        for r in names
                    },
                }
            )
        return rows
