"""The upstream client: OpenAI or any OpenAI-compatible server, with retries and a breaker.

Each model alias resolves to an upstream (base URL, key, upstream model name, price) and an
optional fallback list. A call has one deadline (OPENAI_TIMEOUT) shared by every attempt;
429 / 5xx / connection errors are retried (OPENAI_MAX_RETRIES) with exponential backoff and
full jitter, honouring Retry-After when it fits in the deadline. A stream is retried only
until its first byte. A per-upstream circuit breaker stops hammering a failing upstream.
Library errors never leave this module: they become UpstreamError and its subclasses.

An upstream's answer is untrusted input: redirects are never followed (a 3xx is a 502, and
our key never travels to another origin); answers, SSE events and whole streams have size
limits; a 200 whose body is malformed, of the wrong shape, oversize or echoes our key is an
UpstreamBadResponse, never retried (the upstream may have billed it); an error body is never
relayed: the client gets our own message with, at most, the upstream's error code or type when
it is one of SAFE_ERROR_TOKENS. The breaker counts only upstream-side failures (5xx, 3xx,
timeouts, connection errors, malformed 200s); a 4xx, a 429 or an oversize answer (which a
request can cause) never opens it for every tenant.

The request body is forwarded as bytes with aiohttp and only `usage` is read from the answer:
the openai SDK's per-call overhead (several ms of CPU) is too much for the broker's hot path.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from common.bounds import read_usage
from common.errors import (
    BadRequest,
    ServiceUnavailable,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from common.pricing import Price, PriceTable
from common.settings import Settings

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0
# Keys at least this long are looked for in answers (an answer echoing one is withheld).
ECHO_MIN_KEY_LENGTH = 16
# An error body is read only this far (only its code and type are ever used).
ERROR_BODY_LIMIT = 64 * 1024
# Upstream error codes and types that may be named to the client: short fixed tokens of the
# OpenAI API. Anything else an upstream writes (its message, an echo of our headers) is dropped.
SAFE_ERROR_TOKENS = frozenset(
    {
        "api_error",
        "authentication_error",
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
        "permission_error",
        "rate_limit_error",
        "rate_limit_exceeded",
        "server_error",
        "string_above_max_length",
        "tokens",
        "requests",
        "unknown_parameter",
        "unsupported_parameter",
        "unsupported_value",
    }
)
Clock = Callable[[], float]


@dataclass(frozen=True)
class Upstream:
    """Where one model alias is served and what it costs."""

    alias: str
    base_url: str
    api_key: str | None
    model: str
    price: Price
    fallbacks: tuple[str, ...] = ()
    key_header: str = "authorization"
    query: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        if self.query:
            return f"{self.base_url}/chat/completions?{urlencode(self.query)}"
        return f"{self.base_url}/chat/completions"


class ModelCatalog:
    """Every model alias the broker can serve, with its upstream and fallbacks."""

    def __init__(self, settings: Settings, prices: PriceTable) -> None:
        key_setting = settings.openai_api_key
        default_key = key_setting.get_secret_value() if key_setting else None
        self._upstreams: dict[str, Upstream] = {}
        aliases = set(prices.models) | set(settings.model_routes)
        for alias in aliases:
            route = settings.model_routes.get(alias)
            price = prices.get(alias)
            if price is None:
                continue  # a model without a price cannot be bounded: not served
            key = default_key
            if route is not None and route.api_key is not None:
                key = route.api_key.get_secret_value()
            self._upstreams[alias] = Upstream(
                alias=alias,
                base_url=(
                    route.base_url if route and route.base_url else settings.openai_base_url
                ).rstrip("/"),
                api_key=key,
                model=route.upstream_model if route and route.upstream_model else alias,
                price=price,
                fallbacks=route.fallbacks if route else (),
                key_header=route.key_header if route else "authorization",
                query=tuple(sorted(route.query.items())) if route else (),
            )

    def get(self, alias: str) -> Upstream | None:
        """The upstream serving `alias`, or None."""
        return self._upstreams.get(alias)

    def chain(self, alias: str) -> list[Upstream]:
        """The alias' upstream followed by its fallbacks (unknown fallbacks skipped)."""
        first = self._upstreams[alias]
        chain = [first]
        for name in first.fallbacks:
            extra = self._upstreams.get(name)
            if extra is not None and extra not in chain:
                chain.append(extra)
        return chain

    @property
    def models(self) -> list[str]:
        """Every servable alias, sorted."""
        return sorted(self._upstreams)


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


def backoff(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff for retry number `attempt` (1-based)."""
    return rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * (2 ** (attempt - 1))))


@dataclass
class Completion:
    """A successful non-streamed answer; token counts are the upstream's claim (None: the
    answer carried no usable usage, `usage_invalid` when it carried one that is not)."""

    upstream: Upstream
    body: bytes
    data: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int
    usage_invalid: bool = False


@dataclass
class Failure:
    """Why the last attempt failed (for the final error and the ledger); our words only."""

    status: int | None = None
    retry_after: float | None = None
    message: str = ""
    timeout: bool = False
    reached: bool = False
    # the upstream's error code / type, kept only when they are SAFE_ERROR_TOKENS
    code: str | None = None


@dataclass
class StreamCall:
    """An open upstream stream: iterate `events()`; usage and produced chunks are tracked.

    `finish` ends as completed, cut, timeout, oversize (an event over `max_event` bytes or the
    stream over `max_total` bytes) or unusable (an event echoing our key, never relayed).
    """

    upstream: Upstream
    response: aiohttp.ClientResponse
    attempts: int
    idle_timeout: float
    strip_usage: bool
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_invalid: bool = False
    produced: int = 0
    done: bool = False
    finish: str | None = field(default=None)
    max_event: int = 1024 * 1024
    max_total: int = 64 * 1024 * 1024

    async def events(self) -> AsyncIterator[bytes]:
        """SSE events as raw bytes (each ending in a blank line), as they arrive."""
        buffer: list[bytes] = []
        size = 0
        secret = _echo_probe(self.upstream)
        async for line in self._lines():
            if line in (b"\n", b"\r\n"):
                if buffer:
                    event = b"".join(buffer) + b"\n"
                    buffer.clear()
                    size = 0
                    if secret is not None and secret in event:
                        self.finish = "unusable"
                        return
                    try:
                        keep = self._inspect(event)
                    except (AttributeError, TypeError, ValueError):
                        keep = True  # an odd chunk is relayed as it came; it is not ours to read
                    if keep:
                        yield event
                continue
            size += len(line)
            if size > self.max_event:
                self.finish = "oversize"
                return
            buffer.append(line)

    async def _lines(self) -> AsyncIterator[bytes]:
        """Lines as they arrive (each ending in \\n but maybe the last), at most max_event long."""
        content = self.response.content
        pending = bytearray()
        total = 0
        while True:
            lost = False
            try:
                chunk = await asyncio.wait_for(content.readany(), self.idle_timeout)
            except TimeoutError:
                self.finish = "timeout"
                return
            except (aiohttp.ClientError, OSError):
                # A connection lost right after its last bytes: aiohttp refuses to hand out
                # what it already buffered, but those chunks were produced (and billed).
                chunk = _buffered(content)
                lost = True
            if not chunk and not lost:
                if pending:
                    yield bytes(pending)
                self.finish = "completed" if self.done else "cut"
                return
            total += len(chunk)
            if total > self.max_total:
                self.finish = "oversize"
                return
            scan = len(pending)
            pending += chunk
            start = 0
            while (end := pending.find(b"\n", scan)) != -1:
                yield bytes(pending[start : end + 1])
                start = scan = end + 1
            del pending[:start]
            if len(pending) > self.max_event:
                self.finish = "oversize"
                return
            if lost:
                if pending:
                    yield bytes(pending)
                self.finish = "cut"
                return

    def _inspect(self, event: bytes) -> bool:
        """Track usage/done/produced; False if the event is ours to swallow."""
        for raw in event.splitlines():
            if not raw.startswith(b"data:"):
                continue
            payload = raw[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                return True
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return True
            if not isinstance(chunk, dict):
                return True
            usage = chunk.get("usage")
            if usage is not None:
                counts = read_usage(usage)
                if counts is None:
                    self.usage_invalid = True
                elif any(counts) or self.prompt_tokens is None:
                    # The last non-zero usage wins: a trailing zero chunk cannot erase it.
                    self.prompt_tokens, self.completion_tokens = counts
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
                    self.produced += 1
            if self.strip_usage and usage and not chunk.get("choices"):
                return False
        return True

    def close(self) -> None:
        """Drop the upstream connection (stops generation we would pay for)."""
        self.response.close()


class UpstreamClient:
    """Calls upstreams over one aiohttp session (created lazily)."""

    def __init__(
        self,
        settings: Settings,
        catalog: ModelCatalog,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        on_retry: Callable[[str, str], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self._timeout = settings.openai_timeout
        self._retries = settings.openai_max_retries
        self._idle = settings.stream_idle
        self._max_response = settings.upstream_max_response_bytes
        self._max_event = settings.upstream_max_event_bytes
        self._max_stream = settings.upstream_max_stream_bytes
        self._threshold = settings.breaker_failure_threshold
        self._reset = settings.breaker_reset_seconds
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_retry = on_retry
        self._breakers: dict[str, Breaker] = {}
        self._session: aiohttp.ClientSession | None = None

    def breaker(self, upstream: Upstream) -> Breaker:
        """The breaker guarding an upstream base URL."""
        found = self._breakers.get(upstream.base_url)
        if found is None:
            found = Breaker(self._threshold, self._reset, self._clock)
            self._breakers[upstream.base_url] = found
        return found

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),  # upstream cookies are never wanted
            )
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def deadline(self) -> float:
        """A new call's deadline on the client clock."""
        return self._clock() + self._timeout

    async def complete(
        self,
        chain: list[Upstream],
        payload: Callable[[Upstream], bytes],
        request_id: str,
        deadline: float,
    ) -> Completion:
        """A non-streamed answer from the first upstream of `chain` that gives one."""

        async def attempt(upstream: Upstream, remaining: float) -> Completion | Failure:
            session = self._get_session()
            timeout = aiohttp.ClientTimeout(total=remaining)
            async with session.post(
                upstream.url,
                data=payload(upstream),
                headers=_headers(upstream, request_id),
                timeout=timeout,
                allow_redirects=False,
            ) as reply:
                if reply.status != 200:
                    body = await _read_at_most(reply, ERROR_BODY_LIMIT)
                    return _failure(reply.status, reply.headers, body or b"")
                body = await _read_at_most(reply, self._max_response)
                if body is None:
                    reply.close()  # stop the transfer; the rest is not wanted
                    raise UpstreamBadResponse(
                        f"upstream answer exceeds {self._max_response} bytes",
                        reason="oversize",
                        upstream_alias=upstream.alias,
                    )
            return _completion(upstream, body)

        result, attempts = await self._run(chain, attempt, deadline)
        assert isinstance(result, Completion)
        result.attempts = attempts
        return result

    async def open_stream(
        self,
        chain: list[Upstream],
        payload: Callable[[Upstream], bytes],
        request_id: str,
        deadline: float,
        *,
        strip_usage: bool,
    ) -> StreamCall:
        """An upstream stream whose first byte has arrived (retries happen only before it)."""

        async def attempt(upstream: Upstream, remaining: float) -> StreamCall | Failure:
            session = self._get_session()
            timeout = aiohttp.ClientTimeout(total=None, connect=remaining, sock_read=None)
            reply = await asyncio.wait_for(
                session.post(
                    upstream.url,
                    data=payload(upstream),
                    headers=_headers(upstream, request_id),
                    timeout=timeout,
                    allow_redirects=False,
                ),
                remaining,
            )
            if reply.status != 200:
                try:
                    body = await asyncio.wait_for(
                        _read_at_most(reply, ERROR_BODY_LIMIT), max(0.1, remaining)
                    )
                finally:
                    reply.close()
                return _failure(reply.status, reply.headers, body or b"")
            return StreamCall(
                upstream,
                reply,
                0,
                self._idle,
                strip_usage,
                max_event=self._max_event,
                max_total=self._max_stream,
            )

        result, attempts = await self._run(chain, attempt, deadline)
        assert isinstance(result, StreamCall)
        result.attempts = attempts
        return result

    async def _run(
        self,
        chain: list[Upstream],
        attempt: Callable[[Upstream, float], Awaitable[Any]],
        deadline: float,
    ) -> tuple[Any, int]:
        failure = Failure()
        attempts = 0
        breaker_wait: int | None = None
        for upstream in chain:
            breaker = self.breaker(upstream)
            for number in range(1, self._retries + 2):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise self._final(failure, attempts, timed_out=True)
                if not breaker.allow():
                    breaker_wait = breaker.retry_after()
                    break
                attempts += 1
                try:
                    outcome = await attempt(upstream, remaining)
                except UpstreamBadResponse as exc:
                    # Answered 200 but unusable: never retried nor sent to a fallback (it may
                    # be billed). Malformed answers count against the upstream; an oversize
                    # one does not (a request can ask for a long answer).
                    if exc.reason == "oversize":
                        breaker.release()
                    else:
                        breaker.failure()
                    raise
                except (TimeoutError, aiohttp.ServerTimeoutError):
                    breaker.failure()
                    failure = Failure(None, None, "upstream timed out", timeout=True, reached=True)
                    continue
                except (aiohttp.ClientError, OSError) as exc:
                    breaker.failure()
                    failure = Failure(None, None, f"upstream unreachable ({type(exc).__name__})")
                    outcome = failure
                if not isinstance(outcome, Failure):
                    breaker.success()
                    return outcome, attempts
                failure = outcome
                if failure.status is not None and (failure.status >= 500 or failure.status < 400):
                    breaker.failure()  # the upstream is failing, or redirects us elsewhere
                elif failure.status is not None:
                    # A 4xx (429 included) is the upstream answering about this request or its
                    # own capacity: it never counts towards opening the breaker for everyone.
                    breaker.success()
                if failure.status is not None and failure.status not in RETRY_STATUSES:
                    raise self._final(failure, attempts)
                if number > self._retries:
                    break
                wait = backoff(number, self._rng)
                if failure.retry_after is not None:
                    wait = max(wait, failure.retry_after)
                if self._clock() + wait >= deadline:
                    break  # the wait does not fit in the deadline: give the answer now
                if self._on_retry is not None:
                    self._on_retry(upstream.alias, str(failure.status or "error"))
                await asyncio.sleep(wait)
        if attempts == 0 and breaker_wait is not None:
            raise ServiceUnavailable(
                "upstream is failing; circuit breaker open",
                code="upstream_circuit_open",
                headers={"Retry-After": str(breaker_wait)},
            )
        raise self._final(failure, attempts)

    @staticmethod
    def _final(failure: Failure, attempts: int, timed_out: bool = False) -> Exception:
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
        if status is not None and 400 <= status < 500 and status not in (401, 403, 404):
            return BadRequest(
                f"upstream refused the request (status {status}){said}",
                code="upstream_bad_request",
                details=details,
            )
        if status in (401, 403):
            return UpstreamError(
                f"upstream rejected the broker's credentials (status {status})", details=details
            )
        if status is not None:
            return UpstreamError(f"upstream returned {status} ({tries}){said}", details=details)
        return UpstreamError(f"{failure.message or 'upstream failed'} ({tries})")


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """Bytes aiohttp received but had not handed out when the connection failed."""
    chunks = getattr(content, "_buffer", None) or ()
    offset = int(getattr(content, "_buffer_offset", 0) or 0)
    data = b"".join(bytes(chunk) for chunk in chunks)
    return data[offset:]


def _headers(upstream: Upstream, request_id: str) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-Request-ID": request_id,
        "User-Agent": "bradax/1.0",
    }
    if upstream.api_key:
        if upstream.key_header == "api-key":
            headers["api-key"] = upstream.api_key
        else:
            headers["Authorization"] = f"Bearer {upstream.api_key}"
    return headers


async def _read_at_most(reply: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None as soon as it (or its Content-Length) exceeds `limit` bytes."""
    declared = reply.content_length
    if declared is not None and declared > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in reply.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _completion(upstream: Upstream, body: bytes) -> Completion:
    """A 200's body as a Completion; UpstreamBadResponse when it is not a chat completion."""
    secret = _echo_probe(upstream)
    if secret is not None and secret in body:
        raise UpstreamBadResponse(
            "upstream answer echoes the broker's credentials; it was withheld",
            reason="malformed",
            upstream_alias=upstream.alias,
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse(
            "upstream answered malformed JSON", reason="malformed", upstream_alias=upstream.alias
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise UpstreamBadResponse(
            "upstream answer is not a chat completion",
            reason="shape",
            upstream_alias=upstream.alias,
        )
    # Usage is a claim: unreadable or implausible usage leaves the answer usable and the call
    # charged at its bound (common.bounds.verify), never free.
    usage = data.get("usage")
    counts = read_usage(usage)
    prompt, completion = counts if counts is not None else (None, None)
    return Completion(
        upstream, body, data, prompt, completion, 0, counts is None and usage is not None
    )


def _echo_probe(upstream: Upstream) -> bytes | None:
    """The key's bytes to look for in answers (too short a key would match ordinary text)."""
    key = upstream.api_key
    return key.encode() if key and len(key) >= ECHO_MIN_KEY_LENGTH else None


def _safe_token(value: object) -> str | None:
    return value if isinstance(value, str) and value in SAFE_ERROR_TOKENS else None


def _failure(status: int, headers: Any, body: bytes) -> Failure:
    """A non-200 answer, keeping only its status, Retry-After and an allow-listed code/type."""
    code = None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code = _safe_token(error.get("code")) or _safe_token(error.get("type"))
    return Failure(status, retry_after_seconds(headers), reached=True, code=code)
