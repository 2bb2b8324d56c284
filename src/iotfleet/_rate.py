"""The one token bucket: a rate with a burst, for every limiter in iotfleet.

The simulator's account-wide publish rate, a device's per-connection publish limits and the local
cloud's provisioning and shadow throttling all ask one question: may this go now, and if not, how long
until it may? The caller passes the time (``time.monotonic()``, an event loop's ``time()``, or a test's
number), so the bucket reads no clock and a test drives it step by step. A clock that goes back (wall
time) refills nothing.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket", "over_rate"]

# A shortfall shorter than this is the float residue of refilling, not a real one.
_RESIDUE_S = 1e-9


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved (the burst; ``rate``, one second's worth, by
    default); it starts full at ``now``.

    :meth:`wait` says how many seconds until ``n`` tokens are there (0: they are now), :meth:`take`
    spends them (the level may go below zero: a debt later refills pay), and :meth:`acquire` does both:
    0 with the tokens taken, or the wait with nothing taken. A bucket with rate 0 and nothing saved never
    lets anything through (the wait is infinite).
    """

    __slots__ = ("_at", "capacity", "rate", "tokens")

    def __init__(self, rate: float, capacity: float | None = None, *, now: float = 0.0) -> None:
        if not rate >= 0 or (capacity is not None and not capacity >= 0):
            raise ValueError(f"a token bucket needs a rate and a capacity of 0 or more, not {rate} and {capacity}")
        self.rate = float(rate)
        self.capacity = self.rate if capacity is None else float(capacity)
        self.tokens = self.capacity
        self._at = now

    def wait(self, now: float, n: float = 1.0) -> float:
        """Seconds from ``now`` until ``n`` tokens are there; 0 when they are there now."""
        if now > self._at:
            self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
            self._at = now
        short = n - self.tokens
        if short <= 0:
            return 0.0
        if self.rate <= 0:
            return math.inf
        need = short / self.rate
        return 0.0 if need < _RESIDUE_S else need

    def take(self, n: float = 1.0) -> None:
        """Spend ``n`` tokens (after :meth:`wait` said 0, or on purpose into debt)."""
        self.tokens -= n

    def acquire(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` tokens and return 0 when they are there; else return the wait and take nothing."""
        need = self.wait(now, n)
        if need == 0.0:
            self.take(n)
        return need


def over_rate(buckets: dict[str, TokenBucket], key: str, rate: float, now: float) -> bool:
    """Whether ``key`` (a thing, ...) is over ``rate`` requests a second, with one second's burst: one
    bucket per key in ``buckets``, started afresh when the rate in force changed (a test's)."""
    bucket = buckets.get(key)
    if bucket is None or bucket.rate != rate:
        bucket = buckets[key] = TokenBucket(rate, now=now)
    return bucket.acquire(now) > 0
