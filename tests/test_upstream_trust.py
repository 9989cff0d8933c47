"""Upstream answers are untrusted input: redirects, echoed credentials, oversize and malformed
answers, and the breaker under one tenant's bad requests, against the real mock upstream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from aiohttp import web

from common.health import UNHEALTHY, UpstreamProbe
from common.settings import Settings
from tests.conftest import (
    MockUpstream,
    Tenant,
    create_tenant,
    ledger_rows,
    login,
    serve_app,
    serve_broker,
)

KEY = "sk-bradax-upstream-" + "S3CR3T" * 4
MESSAGES = [{"role": "user", "content": "hello there"}]
# (API, streamed): the spec's invoke and the OpenAI-compatible API, JSON and SSE.
CASES = [("invoke", False), ("invoke", True), ("openai", False), ("openai", True)]


async def _call(
    http: httpx2.AsyncClient, tenant: Tenant, api: str, stream: bool, **extra: Any
) -> tuple[int, dict[str, str], str]:
    """One chat call; (status, headers, whole body text, streamed or not)."""
    if api == "invoke":
        url, auth = "/api/v1/llm/invoke", tenant.auth
        body: dict[str, Any] = {
            "model": "gpt-4.1-nano",
            "messages": MESSAGES,
            "parameters": {"max_tokens": 5},
            **extra,
        }
    else:
        url, auth = "/v1/chat/completions", tenant.key_auth
        body = {"model": "gpt-4.1-nano", "messages": MESSAGES, "max_tokens": 5, **extra}
    if stream:
        body["stream"] = True
    async with http.stream("POST", url, json=body, headers=auth) as reply:
        text = (await reply.aread()).decode()
        return reply.status_code, dict(reply.headers), text


@pytest.fixture
async def tenant_http(
    settings: Settings, router: Any
) -> AsyncIterator[tuple[httpx2.AsyncClient, Any]]:
    """An in-process broker client, and a function that logs a tenant in for it."""
    transport = httpx2.ASGITransport(app=router, client=("10.7.7.7", 1234))
    async with httpx2.AsyncClient(transport=transport, base_url="http://broker") as http:

        async def tenant_for(current: Settings, project_id: str = "proj_test") -> Tenant:
            return await login(http, await create_tenant(current, project_id))

        yield http, tenant_for


def _reserved(current: Settings, project_id: str) -> int:
    redis = __import__("redis").Redis.from_url(current.redis_url.get_secret_value())
    month = time.strftime("%Y%m", time.gmtime())
    return int(redis.hget(f"bx:b:{{{project_id}}}:{month}", "reserved") or 0)


async def test_redirects_are_never_followed(
    configure: Any, mock: MockUpstream, tenant_http: Any
) -> None:
    """A 302 from the upstream is a 502 for every API, is not retried, and the origin it
    points to receives nothing (our key never travels there); nothing is charged."""
    http, tenant_for = tenant_http
    current = configure(openai_api_key=KEY, openai_base_url=mock.url, openai_max_retries=2)
    tenant = await tenant_for(current)
    mock.enqueue(*[{"redirect": True}] * len(CASES))
    for api, stream in CASES:
        status, _, text = await _call(http, tenant, api, stream)
        assert status == 502, (api, stream, text)
        assert "redirects are not followed" in text
        assert "localhost" not in text
    stats = mock.stats()
    assert stats["elsewhere"] == {"hits": 0, "with_authorization": 0}
    assert stats["by_outcome"] == {"redirect": len(CASES)}
    rows = await ledger_rows(current)
    assert [r["status"] for r in rows] == ["upstream_error"] * len(CASES)
    assert sum(r["cost_usd"] for r in rows) == 0
    assert _reserved(current, tenant.project_id) == 0


async def test_health_probe_does_not_follow_redirects(settings: Settings) -> None:
    """The health check's GET /models does not follow a redirect with the key: the upstream
    reads unhealthy and the other origin gets no request."""
    hits: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.headers.get("Authorization"))
        return web.json_response({"object": "list", "data": []})

    other = web.Application()
    other.router.add_get("/v1/models", elsewhere)
    async with serve_app(other) as other_root:
        other_url = f"{other_root}/v1/models"

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(other_url)

        upstream = web.Application()
        upstream.router.add_get("/v1/models", redirect)
        async with serve_app(upstream) as root:
            probe = UpstreamProbe(Settings(openai_api_key=KEY, openai_base_url=f"{root}/v1"))
            check = await probe.check(2.0)
            async with httpx2.AsyncClient() as direct:  # the other origin does count hits
                assert (await direct.get(other_url)).status_code == 200
    assert check.status == UNHEALTHY
    assert check.error is not None
    assert "UpstreamStatusError" in check.error
    assert hits == [None]


@pytest.mark.slow
async def test_error_bodies_echoing_our_key_never_reach_clients_or_logs(
    configure: Any, clean_state: None, mock: MockUpstream, tmp_path: Any
) -> None:
    """Upstream errors that echo our request headers (key included) are replaced by our own
    message, status and request id on both APIs, JSON and streamed; the key is in no answer,
    no answer header and no line the broker logs (at DEBUG)."""
    current = configure(openai_api_key=KEY, openai_base_url=mock.url)
    tenant = await create_tenant(current)
    proc = serve_broker(current, tmp=tmp_path, LOG_LEVEL="DEBUG", BREAKER_FAILURE_THRESHOLD="100")
    statuses = [400, 401, 403, 404, 413, 422, 500, 503]
    seen: list[tuple[int, int, str]] = []
    try:
        async with httpx2.AsyncClient(base_url=proc.url, timeout=30) as http:
            await login(http, tenant)
            for status in statuses:
                for api, stream in CASES:
                    mock.enqueue({"status": status, "echo_headers": True})
                    got, headers, text = await _call(http, tenant, api, stream)
                    seen.append((status, got, text))
                    assert KEY not in text, (status, api, stream)
                    assert KEY not in str(headers)
                    assert "x-echo" not in {name.lower() for name in headers}
                    assert "Headers received" not in text
                    assert headers["x-request-id"].startswith("req_")
                    if api == "invoke":
                        assert headers["x-request-id"] in text
    finally:
        proc.stop()
    assert mock.stats()["by_outcome"] == {str(s): len(CASES) for s in statuses}
    assert {got for status, got, _ in seen if status in (400, 413, 422)} == {400}
    assert {got for status, got, _ in seen if status in (401, 403, 404, 500, 503)} == {502}
    assert any("upstream refused the request (status 413)" in text for _, _, text in seen)
    log = proc.output()
    assert "LLM request ended" in log  # the failures were logged...
    assert KEY not in log  # ...without the key


async def test_a_safe_upstream_error_code_is_named(
    configure: Any, mock: MockUpstream, tenant_http: Any
) -> None:
    """An upstream error type from the allow-list is named in our message; its text is not."""
    http, tenant_for = tenant_http
    current = configure(openai_api_key=KEY, openai_base_url=mock.url)
    tenant = await tenant_for(current)
    mock.enqueue({"status": 400})
    status, _, text = await _call(http, tenant, "openai", False)
    assert status == 400
    assert "upstream refused the request (status 400); upstream code: invalid_request_error" in text
    assert "Mock error" not in text


async def test_malformed_200_is_not_retried_and_is_charged_at_its_bound(
    configure: Any, mock: MockUpstream, tenant_http: Any
) -> None:
    """A 200 with malformed JSON is a 502 after exactly one upstream call (even with retries
    configured), ledgered at the call's bound rather than $0, and its reservation released."""
    http, tenant_for = tenant_http
    current = configure(openai_api_key=KEY, openai_base_url=mock.url, openai_max_retries=3)
    tenant = await tenant_for(current)
    mock.enqueue({"malformed": True}, {"malformed": True})
    for api in ("invoke", "openai"):
        status, _, text = await _call(http, tenant, api, False)
        assert status == 502, text
        assert "upstream_error" in text
        assert "malformed JSON" in text
    stats = mock.stats()
    assert stats["requests"] == 2
    assert stats["by_outcome"] == {"malformed": 2}
    rows = await ledger_rows(current)
    assert [(r["status"], r["error_code"]) for r in rows] == [
        ("upstream_bad_response", "upstream_malformed")
    ] * 2
    for row in rows:
        assert row["completion_tokens"] == 5  # the call's max_tokens: its bound
        assert row["prompt_tokens"] >= 11  # at least what the upstream counted
        assert row["cost_usd"] > 0
    assert _reserved(current, tenant.project_id) == 0


async def test_connection_lost_after_the_request_is_not_retried_and_is_charged(
    configure: Any, mock: MockUpstream, tenant_http: Any
) -> None:
    """A connection the upstream drops after reading the request (it may have run and billed
    it) is a 502 after exactly one call even with retries configured, charged at the call's
    bound, never at $0; a refused connection (nothing sent) costs nothing."""
    http, tenant_for = tenant_http
    current = configure(openai_api_key=KEY, openai_base_url=mock.url, openai_max_retries=3)
    tenant = await tenant_for(current)
    mock.enqueue({"cut_after_chunks": 0})
    status, _, text = await _call(http, tenant, "openai", False)
    assert status == 502, text
    assert "connection lost" in text
    stats = mock.stats()
    assert stats["requests"] == 1
    assert stats["by_outcome"] == {"cut": 1}
    [row] = await ledger_rows(current)
    assert (row["status"], row["http_status"]) == ("upstream_error", 502)
    assert row["completion_tokens"] == 5  # the call's max_tokens: its bound
    assert row["prompt_tokens"] >= stats["prompt_tokens"]
    assert row["cost_usd"] > 0
    assert _reserved(current, tenant.project_id) == 0

    refused = configure(
        openai_api_key=KEY, openai_base_url="http://127.0.0.1:9/v1", openai_max_retries=0
    )
    status, _, text = await _call(http, tenant, "openai", False)
    assert status == 502, text
    rows = await ledger_rows(refused)
    assert [(r["status"], r["cost_usd"]) for r in rows][-1] == ("upstream_error", 0)


async def test_oversize_answer_is_a_metered_502(
    configure: Any, mock: MockUpstream, tenant_http: Any
) -> None:
    """An answer over UPSTREAM_MAX_RESPONSE_BYTES is a 502 (one upstream call, charged at its
    bound); an answer under the limit is served."""
    http, tenant_for = tenant_http
    current = configure(
        openai_api_key=KEY,
        openai_base_url=mock.url,
        openai_max_retries=3,
        upstream_max_response_bytes=64 * 1024,
    )
    tenant = await tenant_for(current)
    mock.enqueue({"oversize_bytes": 200_000}, {"oversize_bytes": 30_000})
    status, _, text = await _call(http, tenant, "openai", False)
    assert status == 502
    assert "exceeds 65536 bytes" in text
    status, _, text = await _call(http, tenant, "openai", False)
    assert status == 200
    assert len(text) > 30_000
    assert mock.stats()["by_outcome"] == {"oversize": 2}
    rows = await ledger_rows(current)
    assert [(r["status"], r["error_code"]) for r in rows] == [
        ("upstream_bad_response", "upstream_oversize"),
        ("success", None),
    ]
    assert rows[0]["cost_usd"] > 0


@pytest.mark.parametrize("api", ["invoke", "openai"])
async def test_a_large_sse_event_under_the_limit_is_relayed_whole(
    configure: Any, mock: MockUpstream, tenant_http: Any, api: str
) -> None:
    """A 1 MB SSE event (under UPSTREAM_MAX_EVENT_BYTES) reaches the client whole and the
    stream completes (aiohttp's line reader used to raise on it and cut the stream silently)."""
    http, tenant_for = tenant_http
    current = configure(openai_api_key=KEY, openai_base_url=mock.url)
    tenant = await tenant_for(current)
    mock.enqueue({"oversize_bytes": 1_000_000})
    status, _, text = await _call(http, tenant, api, True)
    assert status == 200
    events = [e for e in text.split("\n\n") if e]
    assert max(len(e) for e in events) > 1_000_000
    assert events[-1] == "data: [DONE]"
    rows = await ledger_rows(current)
    assert [r["status"] for r in rows] == ["success"]


@pytest.mark.parametrize("api", ["invoke", "openai"])
async def test_an_oversize_sse_event_ends_the_stream_with_an_error_event(
    configure: Any, mock: MockUpstream, tenant_http: Any, api: str
) -> None:
    """An SSE event over UPSTREAM_MAX_EVENT_BYTES is not relayed: the stream ends with an
    error event (never a silent cut) and the call is ledgered as oversize, 502."""
    http, tenant_for = tenant_http
    current = configure(
        openai_api_key=KEY, openai_base_url=mock.url, upstream_max_event_bytes=64 * 1024
    )
    tenant = await tenant_for(current)
    mock.enqueue({"oversize_bytes": 300_000})
    status, _, text = await _call(http, tenant, api, True)
    assert status == 200
    assert len(text) < 64 * 1024
    events = [e for e in text.split("\n\n") if e]
    assert '"upstream_stream_oversize"' in events[-1]
    assert "[DONE]" not in text
    rows = await ledger_rows(current)
    assert [(r["status"], r["http_status"]) for r in rows] == [("oversize", 502)]


async def test_breaker_ignores_one_tenants_4xx_storm_but_opens_on_5xx(
    configure: Any, mock: MockUpstream, tenant_http: Any
) -> None:
    """A storm of 4xx (and 429) answers to one tenant's requests leaves the shared breaker
    closed for the others; consecutive 5xx open it, after which no call reaches the upstream."""
    http, tenant_for = tenant_http
    current = configure(
        openai_api_key=KEY,
        openai_base_url=mock.url,
        openai_max_retries=0,
        breaker_failure_threshold=3,
    )
    noisy = await tenant_for(current, "proj_noisy")
    quiet = await tenant_for(current, "proj_quiet")
    storm = [400, 404, 413, 422, 429] * 3
    mock.enqueue(*[{"status": s} for s in storm])
    answers = [(await _call(http, noisy, "openai", False))[0] for _ in storm]
    assert answers == [{404: 502}.get(s, 400 if s != 429 else 429) for s in storm]
    status, _, text = await _call(http, quiet, "openai", False)
    assert status == 200, text
    mock.enqueue(*[{"status": 500}] * 3)
    assert [(await _call(http, noisy, "openai", False))[0] for _ in range(3)] == [502] * 3
    before = mock.stats()["requests"]
    status, headers, text = await _call(http, quiet, "openai", False)
    assert status == 503
    assert "upstream_circuit_open" in text
    assert int(headers["retry-after"]) >= 1
    assert mock.stats()["requests"] == before


@pytest.fixture
async def escaping_upstream() -> AsyncIterator[str]:
    """An OpenAI-compatible server whose answers spell the broker's key with JSON escapes
    (`\\u0073\\u006b...`: what any client decoding the JSON reads as the key itself)."""
    spelled = "".join(f"\\u{ord(c):04x}" for c in KEY)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        message = '{"role":"assistant","content":"' + spelled + '"}'
        usage = '{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}'
        if not body.get("stream"):
            text = (
                '{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4.1-nano",'
                f'"choices":[{{"index":0,"message":{message},"finish_reason":"stop"}}],'
                f'"usage":{usage}}}'
            )
            return web.Response(text=text, content_type="application/json")
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        delta = '{"content":"' + spelled + '"}'
        chunk = (
            '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-nano",'
            f'"choices":[{{"index":0,"delta":{delta},"finish_reason":null}}]}}'
        )
        await reply.write(f"data: {chunk}\n\n".encode())
        await reply.write(b"data: [DONE]\n\n")
        return reply

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_app(app) as root:
        yield f"{root}/v1"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_key_spelled_with_json_escapes_is_withheld(
    configure: Any, tenant_http: Any, escaping_upstream: str, stream: bool
) -> None:
    """An answer holding the key written as JSON escapes is the key all the same: withheld
    (a 502, or the stream stopped before that event), never relayed for the client to decode."""
    http, tenant_for = tenant_http
    current = configure(openai_api_key=KEY, openai_base_url=escaping_upstream)
    tenant = await tenant_for(current)
    status, _, text = await _call(http, tenant, "openai", stream)
    assert "\\u0073\\u006b" not in text
    assert KEY not in text
    if stream:
        assert status == 200
        assert "upstream_stream_unusable" in text
    else:
        assert status == 502, text
    [row] = await ledger_rows(current)
    assert row["cost_usd"] > 0  # it may have been billed: charged at the bound
