"""Typed errors: every failure the broker reports, as an exception carrying its request id.

BradaxError
├── APIConnectionError (no answer: connection refused, reset, timed out)
│   └── APITimeoutError
├── BadRequest (400, 413, 415)
│   └── PIIBlocked (422 pii_detected: `kinds`)
├── AuthenticationError (401)
├── BudgetExceeded (402: `remaining_usd`, `budget_usd`)
├── PermissionDenied (403)
│   ├── ModelNotAllowed (403 model_not_allowed)
│   └── ProjectSuspended (403 project_suspended)
├── NotFound (404, e.g. model_not_found)
├── Conflict (409, e.g. idempotency_in_progress)
├── RateLimited (429: `retry_after`, `limit`, `remaining`, `reset`)
│   └── UpstreamRateLimited (429 upstream_rate_limited; also an UpstreamError)
├── InternalServerError (500 and anything unexpected)
├── ServiceUnavailable (503: `retry_after`)
└── UpstreamError (502, and an error event that ends a stream)
    └── UpstreamTimeout (504)
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequest",
    "BradaxError",
    "BudgetExceeded",
    "Conflict",
    "InternalServerError",
    "ModelNotAllowed",
    "NotFound",
    "PIIBlocked",
    "PermissionDenied",
    "ProjectSuspended",
    "RateLimited",
    "ServiceUnavailable",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "error_from_body",
]


class BradaxError(Exception):
    """Base of every SDK error: HTTP status (None without an answer), code, message, request id.

    `details` holds the extra fields of the broker's error body; `headers` the answer's headers.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.details: dict[str, Any] = dict(details or {})
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}

    def __str__(self) -> str:
        where = f" (request_id={self.request_id})" if self.request_id else ""
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )

    @property
    def retry_after(self) -> float | None:
        """Seconds the broker asked to wait (Retry-After), if it said."""
        return parse_retry_after(self.headers.get("retry-after"))


class APIConnectionError(BradaxError):
    """No answer from the broker: connection refused or lost, or a protocol error.

    `sent` is False when the request certainly never reached the broker (connect failure).
    """

    def __init__(self, message: str, *, sent: bool = True, code: str = "connection_error") -> None:
        super().__init__(message, code=code)
        self.sent = sent


class APITimeoutError(APIConnectionError):
    """The broker did not answer within the client's timeout."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message, sent=sent, code="timeout")


class BadRequest(BradaxError):
    """The request is invalid (400 invalid_request, max_tokens_exceeded, 413, 415...)."""


class PIIBlocked(BadRequest):
    """The prompt (or answer) holds personal data the project forbids; `kinds` names them."""

    @property
    def kinds(self) -> list[str]:
        """The kinds of personal data found (cpf, email, ...)."""
        return [str(kind) for kind in self.details.get("pii_kinds") or ()]


class AuthenticationError(BradaxError):
    """Invalid, expired or revoked credentials (401)."""


class BudgetExceeded(BradaxError):
    """The project's monthly budget cannot cover this call (402)."""

    @property
    def remaining_usd(self) -> Decimal | None:
        """What is left of this month's budget, in USD."""
        return _decimal(self.details.get("remaining_usd"))

    @property
    def budget_usd(self) -> Decimal | None:
        """The project's monthly budget, in USD."""
        return _decimal(self.details.get("budget_usd"))


class PermissionDenied(BradaxError):
    """Authenticated but not allowed (403 insufficient_scope, ...)."""


class ModelNotAllowed(PermissionDenied):
    """The model is not in the project's allowed models (403 model_not_allowed)."""


class ProjectSuspended(PermissionDenied):
    """The project is suspended (403 project_suspended)."""


class NotFound(BradaxError):
    """No such model or route (404)."""


class Conflict(BradaxError):
    """The request conflicts with another (409, e.g. the same Idempotency-Key in flight)."""


class RateLimited(BradaxError):
    """A rate limit is exhausted (429); `retry_after` says when to come back."""

    @property
    def limit(self) -> int | None:
        """X-RateLimit-Limit, if sent."""
        return _int(self.headers.get("x-ratelimit-limit"))

    @property
    def remaining(self) -> int | None:
        """X-RateLimit-Remaining, if sent."""
        return _int(self.headers.get("x-ratelimit-remaining"))

    @property
    def reset(self) -> int | None:
        """X-RateLimit-Reset (seconds until the window resets), if sent."""
        return _int(self.headers.get("x-ratelimit-reset"))


class InternalServerError(BradaxError):
    """The broker failed unexpectedly (500); quote the request id to support."""


class ServiceUnavailable(BradaxError):
    """The broker or its upstream cannot serve now (503; upstream_circuit_open too)."""


class UpstreamError(BradaxError):
    """The model provider failed (502), or a stream ended with an error event."""


class UpstreamTimeout(UpstreamError):
    """The model provider did not answer in time (504)."""


class UpstreamRateLimited(RateLimited, UpstreamError):
    """The model provider kept answering 429 (429 upstream_rate_limited)."""


_BY_CODE: dict[str, type[BradaxError]] = {
    "pii_detected": PIIBlocked,
    "pii_check_failed": PIIBlocked,
    "output_pii_detected": PIIBlocked,
    "pii_unscannable_attachment": PIIBlocked,
    "model_not_allowed": ModelNotAllowed,
    "project_suspended": ProjectSuspended,
    "upstream_rate_limited": UpstreamRateLimited,
    "upstream_timeout": UpstreamTimeout,
    "upstream_stream_timeout": UpstreamTimeout,
    "upstream_error": UpstreamError,
    "budget_exceeded": BudgetExceeded,
}

_BY_STATUS: dict[int, type[BradaxError]] = {
    400: BadRequest,
    401: AuthenticationError,
    402: BudgetExceeded,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    415: BadRequest,
    422: BadRequest,
    429: RateLimited,
    500: InternalServerError,
    502: UpstreamError,
    503: ServiceUnavailable,
    504: UpstreamTimeout,
}


def error_class(status: int | None, code: str) -> type[BradaxError]:
    """The exception class for a status and error code (the code wins when it is known)."""
    found = _BY_CODE.get(code)
    if found is not None:
        return found
    if status is None:
        return UpstreamError
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return InternalServerError
    return BadRequest


def error_from_body(
    status: int | None,
    body: Any,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> BradaxError:
    """Build the typed error from an answer: the broker's `{"error": {...}}` or anything else."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or error.get("type") or _default_code(status))
    message = str(error.get("message") or f"HTTP {status}")
    rid = error.get("request_id") or request_id
    details = {k: v for k, v in error.items() if k not in ("code", "message", "request_id", "type")}
    cls = error_class(status, code)
    return cls(
        message,
        status=status,
        code=code,
        request_id=str(rid) if rid else None,
        details=details,
        headers=headers,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After value (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _default_code(status: int | None) -> str:
    if status is None:
        return "error"
    return {429: "rate_limited", 401: "invalid_token"}.get(status, f"http_{status}")


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
