"""The upstream client: OpenAI or any OpenAI-compatible server, with retries and a breaker.

Each model alias resolves to an upstream (`common.catalog`). A call has one deadline
(OPENAI_TIMEOUT) shared by every attempt; 429 / 5xx / connection errors are retried
(OPENAI_MAX_RETRIES) with exponential backoff and full jitter, honouring Retry-After when
it fits in the deadline, then the alias' fallbacks are tried. A stream is retried only
until its first byte. A per-upstream circuit breaker (`common.breaker`) stops hammering a
failing upstream. Library errors never leave this module: `common.upstream_errors` is the
one place that turns what an upstream did into our errors.

An upstream's answer is untrusted input: redirects are never followed (a 3xx is a 502, and
our key never travels to another origin); answers, SSE events and whole streams have size
limits (`common.sse`); a 200 whose body is malformed, of the wrong shape, oversize or
echoes our key is an UpstreamBadResponse, never retried (the upstream may have billed it);
an error body is never relayed. The breaker counts only upstream-side failures (5xx, 3xx,
timeouts, connection errors, malformed 200s); a 4xx, a 429 or an oversize answer (which a
request can cause) never opens it for every tenant.

What is specific to a wire protocol (endpoint, key header, answer, error body and event
formats) is a `common.dialect.Dialect`; DIALECTS maps an upstream's `dialect` to it.

The request body is forwarded as bytes with aiohttp and only `usage` is read from the answer:
the openai SDK's per-call overhead (several ms of CPU) is too much for the broker's hot path.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from common.anthropic_dialect import ANTHROPIC, ANTHROPIC_COUNT
from common.bedrock_dialect import BEDROCK
from common.breaker import Breaker, Clock
from common.catalog import ModelCatalog, Upstream
from common.dialect import Dialect, WireRequest
from common.errors import BadRequest, UpstreamBadResponse
from common.gemini_dialect import GEMINI
from common.openai_dialect import OPENAI, OPENAI_EMBEDDINGS
from common.settings import Settings
from common.sse import read_at_most
from common.tracing import outgoing_headers
from common.upstream_errors import (
    ERROR_BODY_LIMIT,
    RETRY_STATUSES,
    SAFE_ERROR_TOKENS,
    TRANSPORT_ERRORS,
    Failure,
    answered,
    circuit_open,
    echo_probe,
    echoed,
    echoes,
    final_error,
    oversize,
    retry_after_seconds,
    transport_failure,
)
from common.upstream_results import Completion, StreamCall

# Names other modules import from here (they moved to the modules named above).
__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "DIALECTS",
    "RETRY_STATUSES",
    "SAFE_ERROR_TOKENS",
    "Breaker",
    "Completion",
    "Failure",
    "ModelCatalog",
    "StreamCall",
    "Upstream",
    "UpstreamClient",
    "backoff",
    "retry_after_seconds",
]

BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0
# The wire protocols upstreams may speak, by the name an Upstream gives (`Upstream.dialect`).
# An operation other than chat is spoken by `<dialect>:<operation>`.
DIALECTS: Mapping[str, Dialect] = {
    "openai": OPENAI,
    "openai:embeddings": OPENAI_EMBEDDINGS,
    "anthropic": ANTHROPIC,
    "anthropic:count_tokens": ANTHROPIC_COUNT,
    "bedrock": BEDROCK,
    "gemini": GEMINI,
}


async def _wire(
    dialect: Dialect,
    upstream: Upstream,
    body: dict[str, Any],
    request_id: str,
    forward: Mapping[str, str],
) -> WireRequest:
    """The dialect's request (built in a worker thread when it may block), plus the trace's
    `traceparent` when the call is traced."""
    if dialect.blocking:
        wire = await asyncio.to_thread(dialect.request, upstream, body, request_id, forward)
    else:
        wire = dialect.request(upstream, body, request_id, forward)
    trace = outgoing_headers()
    if trace:
        wire.headers.update(trace)
    return wire


def _refusal(dialect: Dialect, reply: aiohttp.ClientResponse, body: bytes) -> Failure:
    """A non-200 answer as a Failure: Retry-After from its headers, else the wait its body
    asks for (Google's RetryInfo)."""
    failure = answered(reply.status, reply.headers, dialect.error_tokens(body))
    if failure.retry_after is None:
        failure.retry_after = dialect.retry_delay(body)
    return failure


def backoff(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff for retry number `attempt` (1-based)."""
    return rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * (2 ** (attempt - 1))))


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
        dialects: Mapping[str, Dialect] = DIALECTS,
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
        self._dialects = dialects
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
            # Idle connections close before common servers' own idle timeouts (15 s and up),
            # so a pooled connection is not reused just as the server drops it: a connection
            # lost after the request went out is not retried (it may have been billed).
            connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, keepalive_timeout=10, enable_cleanup_closed=True
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

    def dialect(self, upstream: Upstream, operation: str = "chat") -> Dialect:
        """The dialect speaking `operation` to `upstream` (BadRequest when it has none)."""
        name = upstream.dialect if operation == "chat" else f"{upstream.dialect}:{operation}"
        found = self._dialects.get(name)
        if found is None:
            raise BadRequest(
                f"model '{upstream.alias}' is served by an upstream speaking "
                f"{upstream.dialect}, which does not serve {operation}",
                code="model_not_supported",
                param="model",
            )
        return found

    def check(self, chain: list[Upstream], body: dict[str, Any], operation: str) -> None:
        """BadRequest, before admission, for a feature of `body` an upstream of the chain
        cannot carry (its dialect names it)."""
        for upstream in chain:
            self.dialect(upstream, operation).check(upstream, body)

    def prompt_overhead(self, upstream: Upstream, body: dict[str, Any], operation: str) -> int:
        """Prompt tokens `upstream` bills for `body` beyond the body's own."""
        return self.dialect(upstream, operation).prompt_overhead(body)

    def deadline(self) -> float:
        """A new call's deadline on the client clock."""
        return self._clock() + self._timeout

    async def complete(
        self,
        chain: list[Upstream],
        payload: Callable[[Upstream], dict[str, Any]],
        request_id: str,
        deadline: float,
        *,
        operation: str = "chat",
        forward: Mapping[str, str] | None = None,
    ) -> Completion:
        """A non-streamed answer from the first upstream of `chain` that gives one
        (`operation`: chat, or embeddings: the dialect `<dialect>:<operation>` speaks it)."""

        async def attempt(upstream: Upstream, remaining: float) -> Completion | Failure:
            dialect = self.dialect(upstream, operation)
            wire = await _wire(dialect, upstream, payload(upstream), request_id, forward or {})
            session = self._get_session()
            timeout = aiohttp.ClientTimeout(total=remaining)
            async with session.post(
                wire.url,
                data=wire.data,
                headers=wire.headers,
                timeout=timeout,
                allow_redirects=False,
            ) as reply:
                if reply.status != 200:
                    body = await read_at_most(reply, ERROR_BODY_LIMIT)
                    return _refusal(dialect, reply, body or b"")
                body = await read_at_most(reply, self._max_response)
                if body is None:
                    reply.close()  # stop the transfer; the rest is not wanted
                    raise oversize(upstream, self._max_response)
            secret = echo_probe(upstream)
            if secret is not None and echoes(secret, body):
                raise echoed(upstream)
            answer = dialect.answer(upstream, body)
            return Completion(
                upstream,
                body if answer.body is None else answer.body,
                answer.data,
                answer.prompt_tokens,
                answer.completion_tokens,
                0,
                answer.usage_invalid,
                answer.cache_read,
                answer.cache_write,
            )

        result, attempts = await self._run(chain, attempt, deadline)
        assert isinstance(result, Completion)
        result.attempts = attempts
        return result

    async def open_stream(
        self,
        chain: list[Upstream],
        payload: Callable[[Upstream], dict[str, Any]],
        request_id: str,
        deadline: float,
        *,
        strip_usage: bool,
        forward: Mapping[str, str] | None = None,
    ) -> StreamCall:
        """An upstream stream whose first byte has arrived (retries happen only before it)."""

        async def attempt(upstream: Upstream, remaining: float) -> StreamCall | Failure:
            dialect = self.dialect(upstream)
            wire = await _wire(dialect, upstream, payload(upstream), request_id, forward or {})
            session = self._get_session()
            timeout = aiohttp.ClientTimeout(total=None, connect=remaining, sock_read=None)
            reply = await asyncio.wait_for(
                session.post(
                    wire.url,
                    data=wire.data,
                    headers=wire.headers,
                    timeout=timeout,
                    allow_redirects=False,
                ),
                remaining,
            )
            if reply.status != 200:
                try:
                    body = await asyncio.wait_for(
                        read_at_most(reply, ERROR_BODY_LIMIT), max(0.1, remaining)
                    )
                finally:
                    reply.close()
                return _refusal(dialect, reply, body or b"")
            return StreamCall(
                upstream,
                reply,
                0,
                self._idle,
                strip_usage,
                dialect,
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
        """The first success of `attempt` along `chain`, with retries; else the final error."""
        failure = Failure()
        attempts = 0
        breaker_wait: int | None = None
        for upstream in chain:
            breaker = self.breaker(upstream)
            for number in range(1, self._retries + 2):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise final_error(failure, attempts, timed_out=True)
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
                except TRANSPORT_ERRORS as exc:
                    outcome = transport_failure(exc)
                if not isinstance(outcome, Failure):
                    breaker.success()
                    return outcome, attempts
                failure = outcome
                if failure.blames_upstream:
                    breaker.failure()
                else:
                    breaker.success()
                if failure.timeout:
                    continue  # the time is gone already: no backoff on top of it
                if not failure.retryable:
                    raise final_error(failure, attempts)
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
            raise circuit_open(breaker_wait)
        raise final_error(failure, attempts)
