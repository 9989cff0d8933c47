"""The one place where what an upstream did becomes our error.

An upstream's answer is untrusted input. Everything it can do wrong passes through here:

- a non-200 answer becomes a `Failure` (`answered`) keeping only its status, its Retry-After
  and, at most, an error code or type that is one of SAFE_ERROR_TOKENS; its body is never
  relayed nor logged (it may echo our headers, our key among them);
- a transport exception (timeout, refused or lost connection) becomes a `Failure`
  (`transport_failure`); TRANSPORT_ERRORS lists what is caught, anything else is a bug;
- a 200 that is oversize, malformed, of the wrong shape or echoes our key is an
  `UpstreamBadResponse` (`oversize`, `malformed`, `echoed`), never retried;
- the last `Failure` of a call becomes the client's error (`final_error`): 504, 429, 400,
  502, or 503 while every breaker is open (`circuit_open`).

Error tree of what leaves `common.llm` (all in `common.errors`)::

    UpstreamError (502)
    ├── UpstreamTimeout (504)
    ├── UpstreamRateLimited (429)
    └── UpstreamBadResponse (502; reason: malformed, shape, oversize)
    BadRequest (400, code upstream_bad_request)
    ServiceUnavailable (503, code upstream_circuit_open)
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from common.catalog import Upstream
from common.errors import (
    BadRequest,
    BrokerError,
    ServiceUnavailable,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)

# 529: Anthropic's "overloaded" (its API is busy, not this request at fault).
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
# What an attempt may raise that says the upstream could not be reached or did not answer.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, aiohttp.ClientError, OSError)
# Keys at least this long are looked for in answers (an answer echoing one is withheld).
ECHO_MIN_KEY_LENGTH = 16
# An error body is read only this far (only its code and type are ever used).
ERROR_BODY_LIMIT = 64 * 1024
# Upstream error codes and types that may be named to the client: short fixed tokens of the
# OpenAI API and of the native providers' APIs (Anthropic's error types, Bedrock's
# exception names, Google's canonical status names and the ErrorInfo reason of a refused
# key). Anything else an upstream writes (its message, an echo of our headers) is dropped.
SAFE_ERROR_TOKENS = frozenset(
    {
        "API_KEY_INVALID",
        "DEADLINE_EXCEEDED",
        "FAILED_PRECONDITION",
        "INTERNAL",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "UNAUTHENTICATED",
        "UNAVAILABLE",
        "api_error",
        "authentication_error",
        "billing_error",
        "context_length_exceeded",
        "content_filter",
        "content_policy_violation",
        "conflict_error",
        "insufficient_quota",
        "invalid_api_key",
        "invalid_image",
        "invalid_image_format",
        "invalid_prompt",
        "invalid_request_error",
        "invalid_type",
        "invalid_value",
        "missing_required_parameter",
        "model_not_found",
        "not_found_error",
        "overloaded_error",
        "permission_error",
        "rate_limit_error",
        "rate_limit_exceeded",
        "request_too_large",
        "server_error",
        "string_above_max_length",
        "timeout_error",
        "tokens",
        "requests",
        "unknown_parameter",
        "unsupported_parameter",
        "unsupported_value",
        # Amazon Bedrock's error types (AWS JSON `__type`)
        "AccessDeniedException",
        "InternalServerException",
        "ModelErrorException",
        "ModelNotReadyException",
        "ModelStreamErrorException",
        "ModelTimeoutException",
        "ResourceNotFoundException",
        "ServiceQuotaExceededException",
        "ServiceUnavailableException",
        "ThrottlingException",
        "ValidationException",
    }
)


@dataclass
class Failure:
    """Why the last attempt failed (for the final error and the ledger); our words only."""

    status: int | None = None
    retry_after: float | None = None
    message: str = ""
    timeout: bool = False
    reached: bool = False
    # The connection broke after the request went out: the upstream may have run (and
    # billed) it, so it is not retried (one reservation covers one billed call) and the
    # call is charged at its bound.
    maybe_billed: bool = False
    # the upstream's error code / type, kept only when they are SAFE_ERROR_TOKENS
    code: str | None = None

    @property
    def blames_upstream(self) -> bool:
        """Does this failure count towards opening the upstream's breaker?

        5xx, 3xx (a redirect elsewhere), timeouts and connection errors do. A 4xx (429
        included) is the upstream answering about this request or its own capacity: it
        never opens the breaker for every tenant.
        """
        return self.status is None or self.status >= 500 or self.status < 400

    @property
    def retryable(self) -> bool:
        """May the call try again (the same upstream after a backoff, or a fallback)?"""
        if self.maybe_billed:
            return False
        return self.status is None or self.status in RETRY_STATUSES


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """Seconds from a Retry-After / retry-after-ms header, or None."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (now if now is not None else time.time()))


def safe_token(value: object) -> str | None:
    """`value` if it is one of SAFE_ERROR_TOKENS, else None."""
    return value if isinstance(value, str) and value in SAFE_ERROR_TOKENS else None


# Error tokens that say the broker's own key was refused, whatever the status (Google
# answers an invalid key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID): a 502 of ours,
# never a client error.
CREDENTIAL_TOKENS = frozenset({"API_KEY_INVALID", "invalid_api_key", "authentication_error"})


def answered(status: int, headers: Any, tokens: Iterable[object]) -> Failure:
    """A non-200 answer: its status, Retry-After and the first allow-listed of `tokens`.

    `tokens` are the error code and type the upstream's dialect read from the body, in
    order of preference; none of them is kept unless it is a SAFE_ERROR_TOKEN.
    """
    code = next((found for token in tokens if (found := safe_token(token))), None)
    return Failure(status, retry_after_seconds(headers), reached=True, code=code)


def transport_failure(exc: BaseException) -> Failure:
    """One of TRANSPORT_ERRORS as a Failure; a timeout is marked as one."""
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return Failure(None, None, "upstream timed out", timeout=True, reached=True)
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):  # nothing sent
        return Failure(None, None, f"upstream unreachable ({type(exc).__name__})")
    return Failure(
        None,
        None,
        f"upstream connection lost ({type(exc).__name__})",
        reached=True,
        maybe_billed=True,
    )


def echo_probe(upstream: Upstream) -> bytes | None:
    """The key's bytes to look for in answers (too short a key would match ordinary text)."""
    key = upstream.api_key
    return key.encode() if key and len(key) >= ECHO_MIN_KEY_LENGTH else None


def oversize(upstream: Upstream, limit: int) -> UpstreamBadResponse:
    """A 200 whose body exceeds `limit` bytes (a request can cause it: not the upstream's fault)."""
    return UpstreamBadResponse(
        f"upstream answer exceeds {limit} bytes", reason="oversize", upstream_alias=upstream.alias
    )


def malformed(upstream: Upstream, message: str, reason: str = "malformed") -> UpstreamBadResponse:
    """A 200 that cannot be used (`reason`: malformed, shape)."""
    return UpstreamBadResponse(message, reason=reason, upstream_alias=upstream.alias)


def answer_object(upstream: Upstream, body: bytes, what: str) -> dict[str, Any]:
    """A 200's body as a JSON object; UpstreamBadResponse when it is not JSON (malformed) or
    not an object (`what` it should have been: shape)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed(upstream, "upstream answered malformed JSON") from None
    if not isinstance(data, dict):
        raise malformed(upstream, f"upstream answer is not {what}", "shape")
    return data


_ASCII_ESCAPE = re.compile(rb"\\u00([0-7][0-9a-fA-F])")


def echoes(secret: bytes, raw: bytes) -> bool:
    """Does `raw` (an answer, an event) hold the key, as sent or spelled with JSON escapes
    (`\u0073k-...`: a client decoding the JSON would read the key all the same)?"""
    if secret in raw:
        return True
    if b"\\u00" not in raw:
        return False
    return secret in _ASCII_ESCAPE.sub(lambda found: bytes([int(found[1], 16)]), raw)


def echoed(upstream: Upstream) -> UpstreamBadResponse:
    """A 200 that repeats the broker's key: withheld, never relayed."""
    return malformed(upstream, "upstream answer echoes the broker's credentials; it was withheld")


def circuit_open(wait: int) -> ServiceUnavailable:
    """Every upstream of a call had its breaker open: retry in `wait` seconds."""
    return ServiceUnavailable(
        "upstream is failing; circuit breaker open",
        code="upstream_circuit_open",
        headers={"Retry-After": str(wait)},
    )


def final_error(failure: Failure, attempts: int, timed_out: bool = False) -> BrokerError:
    """The client's error for a call whose last attempt ended in `failure`."""
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    if timed_out or failure.timeout:
        return UpstreamTimeout(f"upstream did not answer in time ({tries})")
    status = failure.status
    said = f"; upstream code: {failure.code}" if failure.code else ""
    details = {"upstream_status": status, "upstream_code": failure.code} if status else {}
    if status == 429:
        return UpstreamRateLimited(
            f"upstream rate limit ({tries}){said}",
            retry_after=int(failure.retry_after or 1) + (1 if failure.retry_after else 0),
        )
    if status is not None and 300 <= status < 400:
        return UpstreamError(
            f"upstream answered a redirect ({status}); redirects are not followed",
            details=details,
        )
    credentials = status in (401, 403) or failure.code in CREDENTIAL_TOKENS
    if status is not None and 400 <= status < 500 and status != 404 and not credentials:
        return BadRequest(
            f"upstream refused the request (status {status}){said}",
            code="upstream_bad_request",
            details=details,
        )
    if credentials:
        return UpstreamError(
            f"upstream rejected the broker's credentials (status {status})", details=details
        )
    if status is not None:
        return UpstreamError(f"upstream returned {status} ({tries}){said}", details=details)
    error = UpstreamError(f"{failure.message or 'upstream failed'} ({tries})")
    if failure.maybe_billed:
        error.upstream_billed = True  # charged at its bound
    return error
