"""The upstream client: OpenAI or any OpenAI-compatible server, with retries and a breaker.

Each model alias resolves to an upstream (base URL, key, upstream model name, price) and an
optional fallback list. A call has one deadline (OPENAI_TIMEOUT) shared by every attempt;
429 / 5xx / connection errors are retried (OPENAI_MAX_RETRIES) with exponential backoff and
full jitter, honouring Retry-After when it fits in the deadline. A stream is retried only
until its first byte. A per-upstream circuit breaker stops hammering a failing upstream.
Library errors never leave this module: they become UpstreamError and its subclasses.

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
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from common.pricing import Price, PriceTable
from common.settings import Settings

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0
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
    """Why the last attempt failed (for the final error and the ledger)."""

    status: int | None = None
    retry_after: float | None = None
    message: str = ""
    timeout: bool = False
    reached: bool = False


@dataclass
class StreamCall:
    """An open upstream stream: iterate `events()`; usage and produced chunks are tracked."""

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

    async def events(self) -> AsyncIterator[bytes]:
        """SSE events as raw bytes (each ending in a blank line), as they arrive."""
        buffer: list[bytes] = []
        async for line in self._lines():
            if line in (b"\n", b"\r\n"):
                if buffer:
                    event = b"".join(buffer) + b"\n"
                    buffer.clear()
                    if self._inspect(event):
                        yield event
                continue
            buffer.append(line)

    async def _lines(self) -> AsyncIterator[bytes]:
        content = self.response.content
        while True:
            try:
                line = await asyncio.wait_for(content.readline(), self.idle_timeout)
            except TimeoutError:
                self.finish = "timeout"
                return
            except (aiohttp.ClientError, OSError):
                # A connection lost right after its last bytes: aiohttp refuses to hand out
                # what it already buffered, but those chunks were produced (and billed).
                for rest in _buffered(content).splitlines(keepends=True):
                    yield rest
                self.finish = "cut"
                return
            if not line:
                self.finish = "completed" if self.done else "cut"
                return
            yield line

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
            ) as reply:
                body = await reply.read()
                if reply.status != 200:
                    return _failure(reply.status, reply.headers, body)
            try:
                data = orjson.loads(body)
                usage = data.get("usage")
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                return Failure(502, None, "upstream answered malformed JSON", reached=True)
            counts = read_usage(usage)
            prompt, completion = counts if counts is not None else (None, None)
            invalid = counts is None and usage is not None
            return Completion(upstream, body, data, prompt, completion, 0, invalid)

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
                ),
                remaining,
            )
            if reply.status != 200:
                try:
                    body = await asyncio.wait_for(reply.read(), max(0.1, remaining))
                finally:
                    reply.release()
                return _failure(reply.status, reply.headers, body)
            return StreamCall(upstream, reply, 0, self._idle, strip_usage)

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
                if failure.status is not None and failure.status >= 500:
                    breaker.failure()
                elif failure.status is not None and failure.status < 500:
                    breaker.success()  # the upstream is alive, it just refused
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
        if status == 429:
            return UpstreamRateLimited(
                f"upstream rate limit ({tries})",
                retry_after=int(failure.retry_after or 1) + (1 if failure.retry_after else 0),
            )
        if status is not None and 400 <= status < 500 and status not in (401, 403, 404):
            return BadRequest(
                f"upstream refused the request: {failure.message}", code="upstream_bad_request"
            )
        if status in (401, 403):
            return UpstreamError(f"upstream rejected the broker's credentials (status {status})")
        if status is not None:
            return UpstreamError(f"upstream returned {status} ({tries}): {failure.message}")
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


def _failure(status: int, headers: Any, body: bytes) -> Failure:
    message = ""
    try:
        data = orjson.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message", ""))[:300]
    except orjson.JSONDecodeError:
        message = body[:200].decode(errors="replace")
    return Failure(status, retry_after_seconds(headers), message, reached=True)
