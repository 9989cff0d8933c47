"""The one mapping from what an upstream did to our errors (common.upstream_errors)."""

from __future__ import annotations

import aiohttp
import pytest

from common.errors import (
    BadRequest,
    ServiceUnavailable,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from common.upstream_errors import (
    Failure,
    answered,
    circuit_open,
    final_error,
    transport_failure,
)


def test_answered_keeps_only_an_allow_listed_token() -> None:
    """An error body's code is kept only when it is a SAFE_ERROR_TOKEN; the first one wins."""
    kept = answered(400, {}, ("Bearer sk-secret-echo", "invalid_request_error", "tokens"))
    assert kept.code == "invalid_request_error"
    assert answered(400, {}, ("anything the upstream wrote", None, 42)).code is None


def test_answered_reads_retry_after() -> None:
    """A non-200's Retry-After (or retry-after-ms) is kept for the backoff."""
    assert answered(429, {"retry-after-ms": "1500"}, ()).retry_after == 1.5
    assert answered(503, {"retry-after": "7"}, ()).retry_after == 7.0


@pytest.mark.parametrize(
    ("exc", "timeout", "maybe_billed"),
    [
        (TimeoutError(), True, False),
        (aiohttp.ServerTimeoutError(), True, False),
        (ConnectionRefusedError(), False, False),
        (aiohttp.ServerDisconnectedError(), False, True),
        (aiohttp.ClientPayloadError(), False, True),
        (aiohttp.ClientConnectionError(), False, True),
    ],
)
def test_transport_failures_blame_the_upstream(
    exc: BaseException, timeout: bool, maybe_billed: bool
) -> None:
    """Timeouts and connection errors count against the breaker; a connection lost after the
    request went out may have been billed, so it is not retried (and is charged), while one
    that never connected is retried."""
    failure = transport_failure(exc)
    assert failure.timeout is timeout
    assert failure.blames_upstream
    assert failure.maybe_billed is maybe_billed
    assert failure.retryable is not maybe_billed
    assert failure.status is None


@pytest.mark.parametrize(
    ("status", "blames", "retryable"),
    [(500, True, True), (503, True, True), (302, True, False), (501, True, False),
     (429, False, True), (409, False, True), (400, False, False), (401, False, False)],
)  # fmt: skip
def test_which_statuses_blame_the_upstream_and_are_retried(
    status: int, blames: bool, retryable: bool
) -> None:
    """5xx and 3xx count against the breaker, 4xx never; only RETRY_STATUSES are retried."""
    failure = answered(status, {}, ())
    assert (failure.blames_upstream, failure.retryable) == (blames, retryable)


@pytest.mark.parametrize(
    ("failure", "error", "status"),
    [
        (Failure(timeout=True), UpstreamTimeout, 504),
        (Failure(429, retry_after=2.0), UpstreamRateLimited, 429),
        (Failure(302), UpstreamError, 502),
        (Failure(400, code="invalid_value"), BadRequest, 400),
        (Failure(401), UpstreamError, 502),
        (Failure(404), UpstreamError, 502),
        (Failure(503), UpstreamError, 502),
        (Failure(message="upstream unreachable (ClientConnectorError)"), UpstreamError, 502),
    ],
)
def test_final_error_by_last_failure(failure: Failure, error: type[Exception], status: int) -> None:
    """The last failure of a call picks the client's error class, hence its HTTP status."""
    raised = final_error(failure, 3)
    assert type(raised) is error
    assert raised.status == status


def test_a_refused_request_names_only_the_safe_code() -> None:
    """A 4xx the upstream refused says its status and allow-listed code, nothing else."""
    raised = final_error(Failure(400, code="context_length_exceeded"), 1)
    assert raised.code == "upstream_bad_request"
    assert raised.details == {"upstream_status": 400, "upstream_code": "context_length_exceeded"}


def test_deadline_spent_is_a_timeout_whatever_the_last_failure() -> None:
    """A call whose deadline ran out is a 504 even when its last attempt was a 503."""
    assert isinstance(final_error(Failure(503), 2, timed_out=True), UpstreamTimeout)


def test_circuit_open_says_when_to_retry() -> None:
    """Every breaker open: a 503 upstream_circuit_open with Retry-After."""
    raised = circuit_open(12)
    assert isinstance(raised, ServiceUnavailable)
    assert (raised.code, raised.headers) == ("upstream_circuit_open", {"Retry-After": "12"})
