"""The broker's error tree. Each class fixes its HTTP status and error code.

    BrokerError
    ├── BadRequest (400 invalid_request)
    │   ├── PayloadTooLarge (413 payload_too_large)
    │   ├── UnsupportedMediaType (415 unsupported_media_type)
    │   └── PIIDetected (422 pii_detected)
    ├── Unauthorized (401 invalid_token / invalid_credentials)
    ├── Forbidden (403 forbidden)
    │   ├── InsufficientScope (403 insufficient_scope)
    │   ├── ModelNotAllowed (403 model_not_allowed)
    │   └── ProjectSuspended (403 project_suspended)
    ├── NotFound (404 not_found), MethodNotAllowed (405 method_not_allowed)
    ├── Conflict (409 conflict)
    ├── RateLimited (429 rate_limited, with Retry-After and X-RateLimit-*)
    ├── BudgetExceeded (402 budget_exceeded, with the remaining budget)
    ├── ServiceUnavailable (503 service_unavailable: Redis/PostgreSQL down, fail closed)
    │   └── StoreUnsupported (503: Redis below 7.0 or with an evicting maxmemory-policy)
    ├── StoreError (500 internal_error: Redis refused a command; logged, never shown)
    └── UpstreamError (502 upstream_error)
        ├── UpstreamBadResponse (502 upstream_error: a 200 that is malformed or oversize)
        ├── UpstreamTimeout (504 upstream_timeout)
        └── UpstreamRateLimited (429 upstream_rate_limited)

Foreign exceptions are translated at the adapters (`raise ServiceUnavailable(...) from exc`);
anything else that escapes a handler becomes a generic 500 whose text never reaches the client.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class BrokerError(Exception):
    """Base of every error the broker turns into an HTTP answer."""

    status: int = 500
    code: str = "internal_error"
    openai_type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.details: dict[str, Any] = dict(details or {})
        self.param = param


class BadRequest(BrokerError):
    """The request is malformed or violates a documented limit."""

    status = 400
    code = "invalid_request"
    openai_type = "invalid_request_error"


class PayloadTooLarge(BadRequest):
    """The body is larger than MAX_BODY_BYTES."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(BadRequest):
    """The body is not JSON."""

    status = 415
    code = "unsupported_media_type"


class PIIDetected(BadRequest):
    """The prompt holds personal data the project's rules forbid; names kinds, never values."""

    status = 422
    code = "pii_detected"


class Unauthorized(BrokerError):
    """Missing, malformed, expired or revoked credentials."""

    status = 401
    code = "invalid_token"
    openai_type = "authentication_error"

    def __init__(self, message: str, **kwargs: Any) -> None:
        headers = kwargs.pop("headers", None) or {}
        headers.setdefault("WWW-Authenticate", 'Bearer realm="bradax"')
        super().__init__(message, headers=headers, **kwargs)


class Forbidden(BrokerError):
    """Authenticated, but not allowed to do this."""

    status = 403
    code = "forbidden"
    openai_type = "permission_error"


class InsufficientScope(Forbidden):
    """The token lacks the scope the endpoint requires."""

    code = "insufficient_scope"


class ModelNotAllowed(Forbidden):
    """The model is not in the project's allowed_models."""

    code = "model_not_allowed"


class ProjectSuspended(Forbidden):
    """The project is suspended."""

    code = "project_suspended"


class NotFound(BrokerError):
    """No such resource or route."""

    status = 404
    code = "not_found"
    openai_type = "invalid_request_error"


class MethodNotAllowed(BrokerError):
    """The route exists but not for this HTTP method."""

    status = 405
    code = "method_not_allowed"
    openai_type = "invalid_request_error"


class Conflict(BrokerError):
    """The request conflicts with the state (for example an idempotent call in progress)."""

    status = 409
    code = "conflict"
    openai_type = "invalid_request_error"


class RateLimited(BrokerError):
    """A rate limit is exhausted; Retry-After says when to come back."""

    status = 429
    code = "rate_limited"
    openai_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        limit: int | None = None,
        reset: int | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        headers = {"Retry-After": str(max(1, retry_after))}
        if limit is not None:
            headers["X-RateLimit-Limit"] = str(limit)
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset"] = str(reset if reset is not None else retry_after)
        super().__init__(message, code=code, headers=headers, details=details)
        self.retry_after = max(1, retry_after)


class BudgetExceeded(BrokerError):
    """The call's worst-case cost does not fit in what is left of the monthly budget."""

    status = 402
    code = "budget_exceeded"
    openai_type = "insufficient_quota"

    def __init__(self, message: str, *, remaining_usd: Decimal, budget_usd: Decimal) -> None:
        super().__init__(
            message,
            details={"remaining_usd": str(remaining_usd), "budget_usd": str(budget_usd)},
        )
        self.remaining_usd = remaining_usd


class ServiceUnavailable(BrokerError):
    """A dependency (Redis, PostgreSQL) cannot answer; nothing is granted (fail closed)."""

    status = 503
    code = "service_unavailable"
    openai_type = "server_error"

    def __init__(self, message: str, **kwargs: Any) -> None:
        headers = kwargs.pop("headers", None) or {}
        headers.setdefault("Retry-After", "1")
        super().__init__(message, headers=headers, **kwargs)


class StoreUnsupported(ServiceUnavailable):
    """The Redis server is older than bradax supports or may evict keys (money state)."""


class StoreError(BrokerError):
    """Redis refused a command for a reason that retrying will not fix (`reply` says which).

    The reply is logged where the error is raised; the client sees a generic 500.
    """

    def __init__(self, reply: str) -> None:
        super().__init__("internal error in the governance store; quote the request id")
        self.reply = reply


class UpstreamError(BrokerError):
    """The upstream failed or answered something unusable."""

    status = 502
    code = "upstream_error"
    openai_type = "api_error"
    # True when the upstream may have run (and billed) the call: charged at its bound.
    upstream_billed = False


class UpstreamBadResponse(UpstreamError):
    """The upstream accepted the call (200) but its answer is unusable: malformed, wrong shape
    or over UPSTREAM_MAX_RESPONSE_BYTES. Never retried: the upstream may have billed it.

    `accepted` says the upstream answered 200 (the call may have been billed), `reason` is
    malformed | shape | oversize, `upstream_alias` names the model alias that answered.
    """

    upstream_billed = True  # charged at the call's bound, never at $0

    def __init__(
        self, message: str, *, reason: str, upstream_alias: str, accepted: bool = True
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.upstream_alias = upstream_alias
        self.accepted = accepted


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within OPENAI_TIMEOUT."""

    status = 504
    code = "upstream_timeout"
    openai_type = "timeout"


class UpstreamRateLimited(UpstreamError):
    """The upstream kept answering 429 after our retries."""

    status = 429
    code = "upstream_rate_limited"
    openai_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)
