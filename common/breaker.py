"""A per-upstream circuit breaker: stop hammering an upstream that keeps failing.

Closed -> open after `threshold` consecutive failures -> half-open after `reset` seconds,
when one probe at a time may go through; the probe's outcome closes or re-opens it. What
counts as a failure is decided by the caller (`common.upstream_errors.Failure.blames_upstream`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class Breaker:
    """Closed -> open after `threshold` consecutive failures -> half-open after `reset` s."""

    def __init__(self, threshold: int, reset: float, clock: Clock = time.monotonic) -> None:
        self._threshold = threshold
        self._reset = reset
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        """closed, open or half_open."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._reset:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go through now? (one probe at a time when half-open)"""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def retry_after(self) -> int:
        """Seconds until the breaker lets a probe through."""
        if self._opened_at is None:
            return 0
        return max(1, int(self._reset - (self._clock() - self._opened_at)) + 1)

    def success(self) -> None:
        """A call succeeded: close."""
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def release(self) -> None:
        """A call ended in a way that says nothing about the upstream's health: free the probe."""
        self._probing = False

    def failure(self) -> None:
        """A call failed: count, and open at the threshold (or re-open after a failed probe)."""
        self._failures += 1
        self._probing = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()
