"""When to retry, and how long to wait: exponential backoff with full jitter, Retry-After first.

Retried: 429 rate_limited / upstream_rate_limited, 502, 503, 504, and connection failures.
A call that is not idempotent (a stream: the broker refuses Idempotency-Key there) is retried
only when the broker certainly did not start it: a connect failure or one of those statuses.
An idempotent call (an invoke with its Idempotency-Key, a login) is also retried after a lost
answer, a 500, and 409 idempotency_in_progress. 400, 401, 402, 403, 404 and 422 never are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bradax.errors import APIConnectionError, BradaxError

__all__ = ["RetryPolicy"]

_RETRY_STATUSES = frozenset({502, 503, 504})
_RETRY_429 = frozenset({"rate_limited", "upstream_rate_limited"})
_RETRY_409 = frozenset({"idempotency_in_progress", "idempotency_retry"})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retries of one logical call.

    max_retries: retries after the first attempt (0 disables retrying).
    backoff_base / backoff_max: the backoff before retry n is uniform in
        [0, min(backoff_max, backoff_base * 2**n)] (full jitter).
    max_retry_after: a Retry-After longer than this is not waited for: the error is raised
        (an hourly rate limit can ask for an hour).
    total_timeout: no retry starts after this many seconds since the call began.
    """

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 30.0
    total_timeout: float = 120.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def retryable(self, error: BradaxError, *, idempotent: bool) -> bool:
        """True if a call that failed with `error` may be sent again."""
        if isinstance(error, APIConnectionError):
            return idempotent or not error.sent
        status = error.status
        if status == 429:
            return error.code in _RETRY_429
        if status in _RETRY_STATUSES:
            return True
        if not idempotent:
            return False
        return status == 500 or (status == 409 and error.code in _RETRY_409)

    def backoff(self, retry: int) -> float:
        """The jittered wait before retry number `retry` (0-based)."""
        cap = min(self.backoff_max, self.backoff_base * (2**retry))
        return self.rng.uniform(0, cap)

    def wait(
        self, error: BradaxError, retry: int, elapsed: float, *, idempotent: bool
    ) -> float | None:
        """Seconds to wait before retry number `retry`, or None to give up and raise `error`."""
        if retry >= self.max_retries or not self.retryable(error, idempotent=idempotent):
            return None
        delay = self.backoff(retry)
        asked = error.retry_after
        if asked is not None:
            if asked > self.max_retry_after:
                return None
            delay = max(delay, asked)
        if elapsed + delay > self.total_timeout:
            return None
        return delay
