"""Which endpoint to try next, and when: backoff with full jitter, failover and failback.

Pure logic with an injectable clock and random source, so its rules are tested without a broker.
The rules (DESIGN.md decision 8, :class:`~iotfleet.config.ReconnectPolicy`):

- per endpoint, attempt ``k`` (from 0) after a failure waits ``uniform(0, min(max, min * 2**k))``;
- a session counts as a connection only once it has lasted ``stable_after_s``: then the failures, the
  backoff and the time without a connection reset. A session that ends sooner (a revoked certificate,
  an eviction, a broker that accepts and then drops) is one more failed attempt;
- after ``failover_after_failures`` consecutive failures, or ``failover_after_s`` without a stable
  connection, move to the next endpoint (in order, wrapping), with a fresh backoff;
- connected anywhere but the first endpoint, failback is due every ``failback_probe_s``; that interval
  doubles (up to an hour) after each failback whose session ended before it proved stable;
- with ``standby``, a standby session goes to the endpoint a failover would choose, if it is in another
  region (:meth:`EndpointSelector.standby_target`); when it takes over it is current at once
  (:meth:`EndpointSelector.promoted`), with no backoff.
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
        self._probe_level = 0  # failbacks in a row whose session did not prove stable
        self._on_probation = False  # the current session came from a failback probe

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self.index]

    @property
    def preferred(self) -> Endpoint:
        return self.endpoints[0]

    def jitter(self) -> float:
        """A draw from the selector's random source, in [0, 1)."""
        return self._rng()

    def _jitter(self, level: int) -> float:
        ceiling: float = min(self.policy.max_backoff_s, self.policy.min_backoff_s * (2**level))
        return self._rng() * ceiling

    def connected(self) -> None:
        """A session to :attr:`current` started; it counts once it proves stable (see :meth:`disconnected`)."""
        now = self._clock()
        self._connected_at = now
        self._next_probe = now + self._probe_interval() if self.index != 0 and self.policy.failback else None

    def _probe_interval(self) -> float:
        """``failback_probe_s``, doubled for each failback in a row that did not last (capped at an hour)."""
        return float(min(self.policy.failback_probe_s * 2**self._probe_level, max(self.policy.failback_probe_s, 3600)))

    def stable(self) -> bool:
        """Whether the current session has lasted ``stable_after_s``."""
        return self._connected_at is not None and self._clock() - self._connected_at >= self.policy.stable_after_s

    def disconnected(self, *, silent: bool = False) -> NextAttempt:
        """The session ended: retry after a jittered delay, or count a failed attempt (see :meth:`failed`).

        One rule: a session that lasted ``stable_after_s`` resets the failures, the backoff and the time
        without a connection, and is retried at the first backoff level. One that ended sooner is a failed
        attempt, like one that never connected, so the backoff grows and failover applies. ``silent`` marks
        a session that died by liveness timeout (no PINGRESP or PUBACK): the endpoint stopped answering,
        which is a failed attempt however long the session lasted.
        """
        stable = self.stable()
        now = self._clock()
        self._connected_at = None
        self._next_probe = None
        if stable:
            self._failures = 0
            self._level = 0
            self._down_since = now
            self._probe_level = 0
        elif self._on_probation:  # the preferred endpoint accepts but does not keep us: probe it less often
            self._probe_level += 1
        self._on_probation = False
        if silent or not stable:
            return self.failed()
        return NextAttempt(self.current, self._jitter(0))

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

    def restart(self) -> Endpoint:
        """Start over as a device that just booted: the preferred endpoint, no failures, a fresh backoff."""
        self.index = 0
        self._failures = 0
        self._level = 0
        self._down_since = self._clock()
        self._connected_at = None
        self._next_probe = None
        self._probe_level = 0
        self._on_probation = False
        return self.current

    def failback_due(self) -> bool:
        """Whether the preferred endpoint should be probed now."""
        return self._next_probe is not None and self._clock() >= self._next_probe

    def probe_failed(self) -> None:
        """The preferred endpoint is still down: probe again after another interval."""
        self._next_probe = self._clock() + self._probe_interval()

    def standby_target(self) -> Endpoint | None:
        """Where a standby session goes (``policy.standby``): the endpoint a failover would move to, if it
        is in another region than the current one (one region's broker would take the client id from one
        session to give it to the other, back and forth)."""
        if not self.policy.standby or len(self.endpoints) < 2:
            return None
        target = self.endpoints[(self.index + 1) % len(self.endpoints)]
        return target if target.region != self.current.region else None

    def promoted(self, endpoint: Endpoint) -> Endpoint:
        """The standby session to ``endpoint`` took over and is current, with a fresh backoff. On the
        preferred endpoint this is a failback, on probation as a probe's. Returns the endpoint left."""
        previous = self.current
        self.index = self.endpoints.index(endpoint)
        self._failures = 0
        self._level = 0
        self._down_since = self._clock()
        self.connected()
        self._on_probation = self.index == 0 and previous != endpoint
        return previous

    def failed_back(self) -> Endpoint:
        """A probe connected: the preferred endpoint is current again. Returns the endpoint left."""
        previous = self.current
        self.index = 0
        self._failures = 0
        self._level = 0
        self._down_since = self._clock()
        self.connected()
        self._on_probation = True
        return previous
