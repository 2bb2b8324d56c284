"""Which endpoint to try next, and when: backoff with full jitter, failover and failback.

Pure logic with an injectable clock and random source, so its rules are tested without a broker.
The rules (DESIGN.md decision 8, :class:`~iotfleet.config.ReconnectPolicy`):

- per endpoint, attempt ``k`` (from 0) after a failure waits ``uniform(0, min(max, min * 2**k))``;
- the backoff resets once a connection has lasted ``stable_after_s``;
- after ``failover_after_failures`` consecutive failures, or ``failover_after_s`` without a connection,
  move to the next endpoint (in order, wrapping), with a fresh backoff;
- connected anywhere but the first endpoint, failback is due every ``failback_probe_s``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from iotfleet.config import Endpoint, ReconnectPolicy
from iotfleet.errors import ConfigError

__all__ = ["EndpointSelector", "NextAttempt"]


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """Wait ``delay_s``, then try ``endpoint``; ``failover_from`` is set when the endpoint changed."""

    endpoint: Endpoint
    delay_s: float
    failover_from: Endpoint | None = None


class EndpointSelector:
    """Tracks failures and chooses the next connection attempt over an ordered endpoint list."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        policy: ReconnectPolicy,
        *,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ConfigError("a device needs at least one endpoint (host:port)")
        self.endpoints = list(endpoints)
        self.policy = policy
        self._rng = rng
        self._clock = clock
        self.index = 0
        self._failures = 0
        self._level = 0
        self._down_since: float | None = clock()
        self._connected_at: float | None = None
        self._next_probe: float | None = None

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self.index]

    @property
    def preferred(self) -> Endpoint:
        return self.endpoints[0]

    def _jitter(self, level: int) -> float:
        ceiling: float = min(self.policy.max_backoff_s, self.policy.min_backoff_s * (2**level))
        return self._rng() * ceiling

    def connected(self) -> None:
        """A session to :attr:`current` started."""
        now = self._clock()
        self._failures = 0
        self._down_since = None
        self._connected_at = now
        self._next_probe = now + self.policy.failback_probe_s if self.index != 0 and self.policy.failback else None

    def disconnected(self, *, silent: bool = False) -> NextAttempt:
        """The session ended: retry after a jittered delay (or fail over, see :meth:`failed`).

        ``silent`` marks a session that died by liveness timeout (no PINGRESP or PUBACK): the endpoint
        stopped answering, which counts as one failed attempt towards failover.
        """
        now = self._clock()
        if self._connected_at is not None and now - self._connected_at >= self.policy.stable_after_s:
            self._level = 0
        self._connected_at = None
        self._next_probe = None
        self._down_since = now
        if silent:
            return self.failed()
        return NextAttempt(self.current, self._jitter(self._level))

    def failed(self) -> NextAttempt:
        """An attempt on :attr:`current` failed: back off, or fail over to the next endpoint."""
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
        self._failures += 1
        too_many = self._failures >= self.policy.failover_after_failures
        too_long = now - self._down_since >= self.policy.failover_after_s
        if len(self.endpoints) > 1 and (too_many or too_long):
            previous = self.current
            self.index = (self.index + 1) % len(self.endpoints)
            self._failures = 0
            self._level = 0
            self._down_since = now
            return NextAttempt(self.current, self._jitter(0), failover_from=previous)
        delay = self._jitter(self._level + 1)
        self._level += 1
        return NextAttempt(self.current, delay)

    def failback_due(self) -> bool:
        """Whether the preferred endpoint should be probed now."""
        return self._next_probe is not None and self._clock() >= self._next_probe

    def probe_failed(self) -> None:
        """The preferred endpoint is still down: probe again after another interval."""
        self._next_probe = self._clock() + self.policy.failback_probe_s

    def failed_back(self) -> Endpoint:
        """A probe connected: the preferred endpoint is current again. Returns the endpoint left."""
        previous = self.current
        self.index = 0
        self._level = 0
        self.connected()
        return previous
