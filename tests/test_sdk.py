"""The Python SDK (sdk/, `import bradax`) against the running broker.

One broker process (`bradax serve`) for the module, over the test PostgreSQL and Redis and the
mock OpenAI upstream; each test makes its tenant (the `settings` fixture empties the tables
and Redis first). Token lifetimes are driven by an injected clock, and wrapper transports
count (or drop) what the SDK sends, so refreshes and retries are counted exactly.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from bradax import (
    APIConnectionError,
    AsyncBroker,
    AuthenticationError,
    BadRequest,
    Broker,
    BudgetExceeded,
    InvokeResponse,
    ModelNotAllowed,
    PermissionDenied,
    PIIBlocked,
    RateLimited,
    RetryPolicy,
    ServiceUnavailable,
    StreamDelta,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)

from common.settings import Settings
from tests.conftest import (
    MockUpstream,
    Tenant,
    create_tenant,
    ledger_rows,
    make_settings,
    serve_broker,
)

MODEL = "gpt-4.1-mini"
REPLY = " ".join(f"w{i}" for i in range(12))  # the mock's default 12-word reply
CPF = "529.982.247-25"
INVOKE = "/api/v1/llm/invoke"
TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/refresh"
FAST = RetryPolicy(max_retries=3, backoff_base=0.02, backoff_max=0.1, max_retry_after=2)


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker_url(
    database_url: str,
    redis_url: str,
    mock_server: MockUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """One broker process for the module: mock upstream, no upstream retries, 2 s timeout."""
    settings = make_settings(
        database_url,
        redis_url,
        openai_api_key="mock-key",
        openai_base_url=mock_server.url,
        openai_timeout=2.0,
        openai_max_retries=0,
    )
    proc = serve_broker(
        settings,
        tmp=tmp_path_factory.mktemp("sdk-broker"),
        BREAKER_FAILURE_THRESHOLD="1000",  # failures injected by one test never open it
    )
    yield proc.url
    proc.stop()


@pytest.fixture
async def tenant(settings: Settings, mock: MockUpstream) -> Tenant:
    """A fresh project with generous limits (and a reset mock upstream)."""
    return await create_tenant(settings, "proj_sdk")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Recorder(httpx.HTTPTransport):
    """A real transport that records each request (path, Idempotency-Key) and its status."""

    def __init__(self, drop_first_invoke: bool = False) -> None:
        super().__init__()
        self.calls: list[tuple[str, str | None, int]] = []
        self.drop_first_invoke = drop_first_invoke
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        with self._lock:
            path = request.url.path
            self.calls.append((path, request.headers.get("idempotency-key"), response.status_code))
            drop = self.drop_first_invoke and path == INVOKE and response.status_code == 200
            if drop:
                self.drop_first_invoke = False
        if drop:  # the broker answered (and charged); the answer is lost on the way back
            response.read()
            response.close()
            raise httpx.ReadError("connection reset (test)", request=request)
        return response

    def count(self, path: str) -> int:
        """How many requests went to `path`."""
        return sum(1 for p, _, _ in self.calls if p == path)

    def keys(self) -> list[str | None]:
        """The Idempotency-Key of each invoke request, in order."""
        return [key for p, key, _ in self.calls if p == INVOKE]


class AsyncRecorder(httpx.AsyncHTTPTransport):
    """The async twin of Recorder (counts only)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.paths[request.url.path] += 1
        return response


@pytest.fixture
def connect(broker_url: str, tenant: Tenant) -> Iterator[Callable[..., Broker]]:
    """Build sync clients for the tenant (closed after the test)."""
    made: list[Broker] = []

    def build(**kwargs: Any) -> Broker:
        kwargs.setdefault("retry", FAST)
        client = Broker(broker_url, tenant.project_id, tenant.api_key, **kwargs)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


@pytest.fixture
async def async_connect(
    broker_url: str, tenant: Tenant
) -> AsyncIterator[Callable[..., AsyncBroker]]:
    """Build async clients for the tenant (closed after the test)."""
    made: list[AsyncBroker] = []

    def build(**kwargs: Any) -> AsyncBroker:
        kwargs.setdefault("retry", FAST)
        client = AsyncBroker(broker_url, tenant.project_id, tenant.api_key, **kwargs)
        made.append(client)
        return client

    yield build
    for client in made:
        await client.close()


def rows(settings: Settings) -> list[dict[str, Any]]:
    """This test's ledger rows (drained first): the broker process outlives each test, so
    its drainer may still write a previous test's record; only this test's keys count."""

    async def current() -> list[dict[str, Any]]:
        found = await ledger_rows(settings)
        conn = await asyncpg.connect(settings.database_url.get_secret_value())
        try:
            keys = {r["key_id"] for r in await conn.fetch("SELECT key_id FROM api_keys")}
        finally:
            await conn.close()
        return [row for row in found if row["key_id"] in keys]

    return asyncio.run(current())


def revoke(broker_url: str, **body: str) -> None:
    """POST /api/v1/auth/revoke with a token or refresh_token."""
    reply = httpx.post(broker_url + "/api/v1/auth/revoke", json=body, timeout=5)
    assert reply.status_code == 200, reply.text


# -- invoke and tokens -----------------------------------------------------------------------


def test_invoke_returns_typed_response(connect: Callable[..., Broker], settings: Settings) -> None:
    """invoke logs in once and returns the spec's answer as typed objects, parameters passed."""
    recorder = Recorder()
    broker = connect(transport=recorder)
    result = broker.invoke(MODEL, [{"role": "user", "content": "Say hello"}], max_tokens=5)
    assert isinstance(result, InvokeResponse)
    assert result.text == "w0 w1 w2 w3 w4"
    assert result.finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (9, 5)
    assert result.usage.total_tokens == 14
    assert result.model == MODEL
    assert isinstance(result.cost_usd, Decimal)
    assert result.cost_usd > 0
    assert (result.cached, result.replayed) == (False, False)
    assert broker.token_stats == {"logins": 1, "refreshes": 0}
    [row] = rows(settings)
    assert row["request_id"] == result.request_id
    assert row["cost_usd"] == result.cost_usd
    assert recorder.count(TOKEN) == 1


def test_refresh_before_expiry(connect: Callable[..., Broker]) -> None:
    """The access token is refreshed once fewer than refresh_margin seconds remain, not before."""
    clock, recorder = Clock(), Recorder()
    broker = connect(transport=recorder, clock=clock, refresh_margin=30)
    first = broker.login()
    assert first.expires_in == 900
    clock.now += 860  # 40 s left: still fresh
    assert broker.invoke(MODEL, "hi").text == REPLY
    assert broker.token_stats == {"logins": 1, "refreshes": 0}
    clock.now += 20  # 20 s left: refresh first
    assert broker.invoke(MODEL, "hi").text == REPLY
    assert broker.token_stats == {"logins": 1, "refreshes": 1}
    assert recorder.count(REFRESH) == 1
    assert broker.token() != first.access_token


def test_refresh_after_expiry_and_relogin_when_refresh_token_expired(
    connect: Callable[..., Broker],
) -> None:
    """An expired access token is refreshed; an expired refresh token means a new login."""
    clock, recorder = Clock(), Recorder()
    broker = connect(transport=recorder, clock=clock)
    broker.login()
    clock.now += 901  # the access token has expired (by the client's clock)
    assert broker.invoke(MODEL, "hi").text == REPLY
    assert broker.token_stats == {"logins": 1, "refreshes": 1}
    clock.now += 7 * 86_400 + 1  # the refresh token has expired too
    assert broker.invoke(MODEL, "hi").text == REPLY
    assert broker.token_stats == {"logins": 2, "refreshes": 1}
    assert (recorder.count(TOKEN), recorder.count(REFRESH)) == (2, 1)


def test_401_refreshes_once_and_retries(connect: Callable[..., Broker], broker_url: str) -> None:
    """A revoked access token draws a 401; the SDK refreshes once and the call succeeds."""
    recorder = Recorder()
    broker = connect(transport=recorder)
    revoke(broker_url, token=broker.token())
    result = broker.invoke(MODEL, "hi")
    assert result.text == REPLY
    assert [status for path, _, status in recorder.calls if path == INVOKE] == [401, 200]
    assert broker.token_stats == {"logins": 1, "refreshes": 1}


def test_revoked_session_logs_in_again(connect: Callable[..., Broker], broker_url: str) -> None:
    """With the whole session revoked, the refresh is refused and the SDK logs in with the key."""
    recorder = Recorder()
    broker = connect(transport=recorder)
    pair = broker.login()
    revoke(broker_url, refresh_token=pair.refresh_token)
    assert broker.invoke(MODEL, "hi").text == REPLY
    assert broker.token_stats == {"logins": 2, "refreshes": 0}
    assert [s for p, _, s in recorder.calls if p in (INVOKE, REFRESH, TOKEN)] == [
        200,
        401,
        401,
        200,
        200,
    ]


def test_logout_revokes_the_session(connect: Callable[..., Broker], broker_url: str) -> None:
    """logout() revokes the refresh token on the broker; the next call logs in again."""
    broker = connect()
    pair = broker.login()
    broker.logout()
    assert broker.tokens is None
    reply = httpx.post(broker_url + REFRESH, json={"refresh_token": pair.refresh_token}, timeout=5)
    assert (reply.status_code, reply.json()["error"]["code"]) == (401, "revoked")
    assert broker.invoke(MODEL, "hi").text == REPLY
    assert broker.token_stats == {"logins": 2, "refreshes": 0}


def test_concurrent_refresh_from_threads(connect: Callable[..., Broker]) -> None:
    """Sixteen threads finding the token stale make exactly one refresh; the session survives."""
    clock, recorder = Clock(), Recorder()
    broker = connect(transport=recorder, clock=clock)
    broker.login()
    clock.now += 880  # every thread sees a stale token
    barrier = threading.Barrier(16)
    results: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            results.append(broker.invoke(MODEL, "hi").text)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert results == [REPLY] * 16
    assert recorder.count(REFRESH) == 1
    assert broker.token_stats == {"logins": 1, "refreshes": 1}
    broker.refresh()  # a revoked session would refuse this and force a login
    assert broker.token_stats == {"logins": 1, "refreshes": 2}


async def test_concurrent_refresh_from_tasks(async_connect: Callable[..., AsyncBroker]) -> None:
    """Sixteen asyncio tasks finding the token stale make exactly one refresh."""
    clock, recorder = Clock(), AsyncRecorder()
    broker = async_connect(transport=recorder, clock=clock)
    await broker.login()
    clock.now += 880
    results = await asyncio.gather(*(broker.invoke(MODEL, "hi") for _ in range(16)))
    assert [r.text for r in results] == [REPLY] * 16
    assert recorder.paths[REFRESH] == 1
    assert recorder.paths[TOKEN] == 1
    await broker.refresh()
    assert broker.token_stats == {"logins": 1, "refreshes": 2}


# -- streaming ------------------------------------------------------------------------------


def test_stream_yields_typed_deltas(connect: Callable[..., Broker], settings: Settings) -> None:
    """A sync stream yields text deltas, then finish_reason and usage; the ledger agrees."""
    broker = connect()
    with broker.invoke(MODEL, "Say hello", stream=True) as stream:
        deltas = list(stream)
    assert all(isinstance(d, StreamDelta) for d in deltas)
    assert deltas[0].role == "assistant"
    assert "".join(d.content for d in deltas) == REPLY
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    assert deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (9, 12)
    assert (stream.text, stream.finish_reason, stream.completed) == (REPLY, "stop", True)
    [row] = rows(settings)
    assert (row["request_id"], row["streamed"]) == (stream.request_id, True)
    assert row["status"] == "success"


async def test_async_stream_yields_typed_deltas(
    async_connect: Callable[..., AsyncBroker],
) -> None:
    """An async stream yields the same deltas as the sync one."""
    broker = async_connect()
    stream = await broker.invoke(MODEL, "Say hello", stream=True)
    deltas = [delta async for delta in stream]
    assert "".join(d.content for d in deltas) == REPLY
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 12
    assert stream.finish_reason == "stop"
    assert stream.request_id is not None
    assert stream.request_id.startswith("req_")


def test_stream_cut_raises_upstream_error(
    connect: Callable[..., Broker], mock: MockUpstream
) -> None:
    """An upstream stream cut mid-way ends in an error event, raised as UpstreamError."""
    mock.enqueue({"cut_after_chunks": 3})
    broker = connect()
    stream = broker.stream(MODEL, "Say hello")
    received: list[str] = []

    def drain() -> None:
        for delta in stream:
            received.append(delta.content)

    with pytest.raises(UpstreamError) as caught:
        drain()
    assert "".join(received) == "w0 w1 w2"
    assert caught.value.code == "upstream_stream_cut"
    assert caught.value.request_id == stream.request_id
    assert stream.completed is False


# -- typed errors -----------------------------------------------------------------------------


async def test_rate_limited(settings: Settings, broker_url: str, mock: MockUpstream) -> None:
    """Over max_requests_per_hour: RateLimited with retry_after and limits, not retried."""
    tenant = await create_tenant(settings, "proj_rl", max_requests_per_hour=1)
    recorder = AsyncRecorder()
    async with AsyncBroker(
        broker_url, tenant.project_id, tenant.api_key, transport=recorder, retry=FAST
    ) as broker:
        await broker.invoke(MODEL, "hi")
        with pytest.raises(RateLimited) as caught:
            await broker.invoke(MODEL, "hi")
    error = caught.value
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.retry_after is not None
    assert 1 <= error.retry_after <= 3600
    assert (error.limit, error.remaining) == (1, 0)
    assert error.request_id is not None
    assert error.request_id.startswith("req_")
    assert recorder.paths[INVOKE] == 2  # Retry-After beyond max_retry_after: raised at once


async def test_budget_exceeded(settings: Settings, broker_url: str, mock: MockUpstream) -> None:
    """A budget too small for the call: BudgetExceeded with the remaining budget, not retried."""
    tenant = await create_tenant(settings, "proj_budget", budget_monthly_usd="0.0001")
    recorder = AsyncRecorder()
    async with AsyncBroker(
        broker_url, tenant.project_id, tenant.api_key, transport=recorder, retry=FAST
    ) as broker:
        with pytest.raises(BudgetExceeded) as caught:
            await broker.invoke(MODEL, "hi")
    error = caught.value
    assert (error.status, error.code) == (402, "budget_exceeded")
    assert error.remaining_usd == Decimal("0.0001")
    assert error.budget_usd == Decimal("0.0001")
    assert error.request_id is not None
    assert recorder.paths[INVOKE] == 1
    assert mock.stats()["requests"] == 0


def test_model_not_allowed(connect: Callable[..., Broker], mock: MockUpstream) -> None:
    """A model outside allowed_models: ModelNotAllowed (a PermissionDenied), not retried."""
    recorder = Recorder()
    broker = connect(transport=recorder)
    with pytest.raises(ModelNotAllowed) as caught:
        broker.invoke("gpt-4.1", "hi")
    assert isinstance(caught.value, PermissionDenied)
    assert (caught.value.status, caught.value.code) == (403, "model_not_allowed")
    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("req_")
    assert recorder.count(INVOKE) == 1
    assert mock.stats()["requests"] == 0


async def test_pii_blocked(settings: Settings, broker_url: str, mock: MockUpstream) -> None:
    """A CPF in the prompt of a PII-checked project: PIIBlocked naming the kind, not retried."""
    tenant = await create_tenant(settings, "proj_pii", compliance_rules=("pii_detection",))
    async with AsyncBroker(broker_url, tenant.project_id, tenant.api_key, retry=FAST) as broker:
        with pytest.raises(PIIBlocked) as caught:
            await broker.invoke(MODEL, f"my CPF is {CPF}")
    assert (caught.value.status, caught.value.code) == (422, "pii_detected")
    assert caught.value.kinds == ["cpf"]
    assert CPF not in str(caught.value)
    assert caught.value.request_id is not None
    assert mock.stats()["requests"] == 0


def test_upstream_error_after_retries(
    connect: Callable[..., Broker], mock: MockUpstream, settings: Settings
) -> None:
    """Upstream 500s: the SDK retries 3 times with one Idempotency-Key, then UpstreamError."""
    mock.enqueue(*({"status": 500},) * 4)
    recorder = Recorder()
    broker = connect(transport=recorder)
    with pytest.raises(UpstreamError) as caught:
        broker.invoke(MODEL, "hi")
    assert (caught.value.status, caught.value.code) == (502, "upstream_error")
    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("req_")
    keys = recorder.keys()
    assert len(keys) == 4
    assert len(set(keys)) == 1
    assert keys[0] is not None
    assert mock.stats()["requests"] == 4
    ledger = rows(settings)
    assert [r["status"] for r in ledger] == ["upstream_error"] * 4
    assert sum(r["cost_usd"] for r in ledger) == 0


def test_upstream_timeout(connect: Callable[..., Broker], mock: MockUpstream) -> None:
    """A hanging upstream: UpstreamTimeout (504) once the broker's 2 s timeout passes."""
    mock.enqueue({"hang": True})
    broker = connect(retry=RetryPolicy(max_retries=0))
    with pytest.raises(UpstreamTimeout) as caught:
        broker.invoke(MODEL, "hi")
    assert isinstance(caught.value, UpstreamError)
    assert (caught.value.status, caught.value.code) == (504, "upstream_timeout")
    assert caught.value.request_id is not None


def test_bad_credentials(broker_url: str, tenant: Tenant) -> None:
    """A wrong API key: AuthenticationError from the login, not retried."""
    recorder = Recorder()
    broker = Broker(broker_url, tenant.project_id, "bx_wrong", transport=recorder, retry=FAST)
    with broker, pytest.raises(AuthenticationError) as caught:
        broker.invoke(MODEL, "hi")
    assert (caught.value.status, caught.value.code) == (401, "invalid_credentials")
    assert caught.value.request_id is not None
    assert recorder.count(TOKEN) == 1
    assert recorder.count(INVOKE) == 0


def test_bad_request(connect: Callable[..., Broker]) -> None:
    """max_tokens over the project's cap: BadRequest max_tokens_exceeded, not retried."""
    recorder = Recorder()
    broker = connect(transport=recorder)
    with pytest.raises(BadRequest) as caught:
        broker.invoke(MODEL, "hi", max_tokens=999_999)
    assert (caught.value.status, caught.value.code) == (400, "max_tokens_exceeded")
    assert recorder.count(INVOKE) == 1


# -- retries and idempotency -------------------------------------------------------------------


def test_retry_after_5xx_charges_once(
    connect: Callable[..., Broker], mock: MockUpstream, settings: Settings
) -> None:
    """A 502 then success: one retry with the same Idempotency-Key, one successful ledger row."""
    mock.enqueue({"status": 500})
    recorder = Recorder()
    broker = connect(transport=recorder)
    result = broker.invoke(MODEL, "hi")
    assert result.text == REPLY
    assert [status for path, _, status in recorder.calls if path == INVOKE] == [502, 200]
    assert len(set(recorder.keys())) == 1
    assert mock.stats()["requests"] == 2
    ledger = rows(settings)
    successes = [r for r in ledger if r["status"] == "success"]
    assert [r["request_id"] for r in successes] == [result.request_id]
    assert sum(r["cost_usd"] for r in ledger) == result.cost_usd


def test_lost_answer_is_replayed_not_recharged(
    connect: Callable[..., Broker], mock: MockUpstream, settings: Settings
) -> None:
    """The first answer is lost in transit: the retry is replayed (Idempotent-Replayed)."""
    recorder = Recorder(drop_first_invoke=True)
    broker = connect(transport=recorder)
    result = broker.invoke(MODEL, "hi")
    assert result.replayed is True
    assert result.text == REPLY
    keys = recorder.keys()
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert mock.stats()["requests"] == 1
    [row] = rows(settings)
    assert (row["request_id"], row["cost_usd"]) == (result.request_id, result.cost_usd)


class Ceiling(random.Random):
    """Jitter that always picks the ceiling, so backoffs are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_upstream_429_honours_retry_after(
    connect: Callable[..., Broker], mock: MockUpstream
) -> None:
    """Upstream 429: the broker says Retry-After 2, the SDK waits that long and retries."""
    mock.enqueue({"status": 429, "retry_after": 1})
    recorder = Recorder()
    broker = connect(transport=recorder, retry=RetryPolicy(backoff_base=0.01, max_retry_after=5))
    started = time.monotonic()
    result = broker.invoke(MODEL, "hi")
    assert time.monotonic() - started >= 2.0
    assert result.text == REPLY
    assert [status for path, _, status in recorder.calls if path == INVOKE] == [429, 200]
    assert mock.stats()["requests"] == 2


def test_upstream_429_raises_upstream_rate_limited(
    connect: Callable[..., Broker], mock: MockUpstream
) -> None:
    """Without retries an upstream 429 raises UpstreamRateLimited (RateLimited, UpstreamError)."""
    mock.enqueue({"status": 429, "retry_after": 1})
    broker = connect(retry=RetryPolicy(max_retries=0))
    with pytest.raises(UpstreamRateLimited) as caught:
        broker.invoke(MODEL, "hi")
    assert isinstance(caught.value, RateLimited)
    assert isinstance(caught.value, UpstreamError)
    assert (caught.value.status, caught.value.code) == (429, "upstream_rate_limited")
    assert caught.value.retry_after == 2
    assert caught.value.request_id is not None


def test_duplicate_in_flight_waits_for_the_first(
    connect: Callable[..., Broker], mock: MockUpstream, settings: Settings
) -> None:
    """Two calls with one key at once: the second gets 409, retries, and is replayed."""
    mock.configure(latency_ms=600)
    recorder = Recorder()
    policy = RetryPolicy(max_retries=5, backoff_base=0.2, backoff_max=0.4, rng=Ceiling())
    broker = connect(transport=recorder, retry=policy)
    broker.login()
    results: list[InvokeResponse] = []

    def call() -> None:
        results.append(broker.invoke(MODEL, "hi", idempotency_key="dup-1"))

    first = threading.Thread(target=call)
    first.start()
    time.sleep(0.2)  # the first call is with the upstream now
    call()
    first.join(10)
    assert len(results) == 2
    assert results[0].request_id == results[1].request_id
    assert sorted(r.replayed for r in results) == [False, True]
    statuses = [status for path, _, status in recorder.calls if path == INVOKE]
    assert statuses.count(409) >= 1
    assert mock.stats()["requests"] == 1
    assert len(rows(settings)) == 1


def test_same_key_with_another_body_is_refused(connect: Callable[..., Broker]) -> None:
    """A caller-chosen Idempotency-Key reused for a different body: BadRequest, not retried."""
    broker = connect()
    first = broker.invoke(MODEL, "hi", idempotency_key="order-42")
    again = broker.invoke(MODEL, "hi", idempotency_key="order-42")
    assert (again.replayed, again.request_id) == (True, first.request_id)
    with pytest.raises(BadRequest) as caught:
        broker.invoke(MODEL, "something else", idempotency_key="order-42")
    assert caught.value.code == "idempotency_key_reused"


# -- without a broker: retry policy details ----------------------------------------------------


def test_retry_after_header_is_honoured() -> None:
    """A 503 with Retry-After: 1 is retried after at least a second, with the same key."""
    seen: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("idempotency-key")))
        if request.url.path == TOKEN:
            pair = {"access_token": "a", "refresh_token": "r", "expires_in": 900}
            return httpx.Response(200, json={**pair, "refresh_expires_in": 9000, "scopes": []})
        if len(seen) == 2:
            error = {"code": "service_unavailable", "message": "busy", "request_id": "req_1"}
            return httpx.Response(503, json={"error": error}, headers={"Retry-After": "1"})
        body = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            "model": MODEL,
            "request_id": "req_2",
            "cost_usd": "0.000002",
        }
        return httpx.Response(200, json=body)

    transport = httpx.MockTransport(answer)
    with Broker("http://broker", "proj", "bx_key", transport=transport, retry=FAST) as broker:
        started = time.monotonic()
        result = broker.invoke(MODEL, "hi")
        elapsed = time.monotonic() - started
    assert result.cost_usd == Decimal("0.000002")
    assert elapsed >= 1.0
    assert [path for path, _ in seen] == [TOKEN, INVOKE, INVOKE]
    assert seen[1][1] == seen[2][1]


def test_policy_retries_only_what_is_safe() -> None:
    """Connection losses are retried only for idempotent calls; 503 always; 402 never."""
    policy = RetryPolicy(backoff_base=0.01)
    lost = APIConnectionError("reset", sent=True)
    refused = APIConnectionError("refused", sent=False)
    busy = ServiceUnavailable("busy", status=503, code="service_unavailable")
    broke = BudgetExceeded("poor", status=402, code="budget_exceeded")
    assert policy.retryable(lost, idempotent=True) is True
    assert policy.retryable(lost, idempotent=False) is False
    assert policy.retryable(refused, idempotent=False) is True
    assert policy.retryable(busy, idempotent=False) is True
    assert policy.retryable(broke, idempotent=True) is False
    assert policy.wait(busy, 3, 0.0, idempotent=True) is None  # max_retries reached


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broker() reads BRADAX_* and names what is missing; streams refuse an Idempotency-Key."""
    monkeypatch.setenv("BRADAX_BASE_URL", "http://broker.example/")
    monkeypatch.setenv("BRADAX_PROJECT_ID", "proj_env")
    monkeypatch.setenv("BRADAX_API_KEY", "bx_env")
    with Broker() as broker:
        assert broker.config.base_url == "http://broker.example"
        assert broker.openai_base_url == "http://broker.example/v1"
        with pytest.raises(ValueError, match="Idempotency-Key"):
            broker.invoke(MODEL, "hi", stream=True, idempotency_key="k")  # type: ignore[call-overload]
    monkeypatch.delenv("BRADAX_API_KEY")
    with pytest.raises(ValueError, match="BRADAX_API_KEY"):
        Broker()


# -- the OpenAI SDK helper -----------------------------------------------------------------


def test_openai_client_completes_through_the_broker(
    connect: Callable[..., Broker], settings: Settings
) -> None:
    """broker.openai_client() is an openai.OpenAI on {base}/v1 that the broker meters."""
    client = connect().openai_client()
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}]
    )
    assert completion.choices[0].message.content == REPLY
    [row] = rows(settings)
    assert row["model"] == MODEL
    assert row["status"] == "success"


async def test_async_openai_client_completes_through_the_broker(
    async_connect: Callable[..., AsyncBroker],
) -> None:
    """AsyncBroker.openai_client() is an openai.AsyncOpenAI that completes a chat."""
    client = async_connect().openai_client()
    completion = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}]
    )
    assert completion.choices[0].message.content == REPLY
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
