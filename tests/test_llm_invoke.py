"""llm_invoke: both APIs over the mock upstream, streaming, retries, fallback, breaker, ledger."""

from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest

from common import deps
from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, ledger_rows, login

MESSAGES = [{"role": "user", "content": "Explique seguros de vida"}]
# The mock counts 3 + (4 + words) per message: 3 + 4 + 4 = 11 prompt tokens.
PROMPT_TOKENS = 11
NANO_IN, NANO_OUT = Decimal("0.10"), Decimal("0.40")  # gpt-4.1-nano per 1M


def nano_cost(prompt: int, completion: int) -> Decimal:
    """gpt-4.1-nano list price for a call."""
    return (prompt * NANO_IN + completion * NANO_OUT) / Decimal(1_000_000)


@pytest.fixture
async def broker(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    """The broker in-process over the mock upstream, with one project logged in."""
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url, openai_max_retries=2)
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    tenant = await login(http, await create_tenant(current))
    return http, tenant, current


async def invoke(http: httpx2.AsyncClient, tenant: Tenant, **body: Any) -> httpx2.Response:
    """POST /api/v1/llm/invoke with defaults for model and messages."""
    payload = {"model": "gpt-4.1-nano", "messages": MESSAGES, **body}
    return await http.post("/api/v1/llm/invoke", json=payload, headers=tenant.auth)


async def test_invoke_returns_the_spec_response(broker: Any, mock: MockUpstream) -> None:
    """The spec's invoke answers choices, usage, model and a request id shared with the header."""
    http, tenant, settings = broker
    reply = await invoke(http, tenant, parameters={"max_tokens": 5, "temperature": 0.3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert re.fullmatch(r"req_\d{8}_\d{6}_[0-9a-f]{12}", body["request_id"])
    assert reply.headers["x-request-id"] == body["request_id"]
    assert body["model"] == "gpt-4.1-nano"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "w0 w1 w2 w3 w4"},
            "finish_reason": "length",
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": 5,
        "total_tokens": PROMPT_TOKENS + 5,
    }
    assert Decimal(body["cost_usd"]) == nano_cost(PROMPT_TOKENS, 5)
    assert reply.headers["x-bradax-cost-usd"] == body["cost_usd"]
    calls = mock.stats()["calls"]
    assert [c["request_id"] for c in calls] == [body["request_id"]]
    rows = await ledger_rows(settings)
    assert len(rows) == 1
    row = rows[0]
    assert row["request_id"] == body["request_id"]
    assert (row["project_id"], row["model"], row["status"]) == (
        tenant.project_id,
        "gpt-4.1-nano",
        "success",
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, 5)
    assert row["cost_usd"] == nano_cost(PROMPT_TOKENS, 5)
    assert row["streamed"] is False
    assert row["key_id"] == tenant.key_id


async def test_max_tokens_defaults_to_the_project_cap(broker: Any, mock: MockUpstream) -> None:
    """A request without max_tokens is sent upstream capped at the project's limit."""
    http, tenant, _ = broker
    mock.configure(reply_words=5000)
    reply = await invoke(http, tenant)
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 4096


async def test_openai_client_async_in_process(broker: Any) -> None:
    """The official AsyncOpenAI client works unchanged against /v1, with an API key."""
    http, tenant, _ = broker
    client = openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=tenant.api_key, http_client=http, max_retries=0
    )
    answer = await client.chat.completions.create(
        model="gpt-4.1-nano", messages=MESSAGES, max_tokens=3
    )
    assert answer.choices[0].message.content == "w0 w1 w2"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3
    models = await client.models.list()
    assert [m.id for m in models.data] == ["gpt-4.1-nano", "gpt-4.1-mini", "gpt-4o-mini"]
    stream = await client.chat.completions.create(
        model="gpt-4.1-nano",
        messages=MESSAGES,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "w0 w1 w2 w3"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, 4)


async def test_access_token_works_on_the_openai_api(broker: Any) -> None:
    """An access token is accepted as the OpenAI API key as well."""
    http, tenant, _ = broker
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "max_tokens": 2},
        headers=tenant.auth,
    )
    assert reply.status_code == 200
    assert reply.json()["object"] == "chat.completion"


async def test_stream_is_metered_from_upstream_usage(broker: Any, mock: MockUpstream) -> None:
    """A stream the client did not ask usage for hides the usage chunk but is metered exactly."""
    http, tenant, settings = broker
    async with http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "max_tokens": 6, "stream": True},
        headers=tenant.key_auth,
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in reply.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"choices":[]' in e for e in events)
    assert mock.stats()["calls"][0]["completion_tokens"] == 6
    rows = await ledger_rows(settings)
    assert [
        (r["status"], r["streamed"], r["prompt_tokens"], r["completion_tokens"]) for r in rows
    ] == [("success", True, PROMPT_TOKENS, 6)]
    assert rows[0]["cost_usd"] == nano_cost(PROMPT_TOKENS, 6)


async def test_spec_invoke_can_stream(broker: Any) -> None:
    """The spec's invoke with stream=true answers SSE chunks ending in [DONE]."""
    http, tenant, settings = broker
    async with http.stream(
        "POST",
        "/api/v1/llm/invoke",
        json={
            "model": "gpt-4.1-nano",
            "messages": MESSAGES,
            "stream": True,
            "parameters": {"max_tokens": 3},
        },
        headers=tenant.auth,
    ) as reply:
        lines = [line async for line in reply.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert any('"usage":{"prompt_tokens"' in line for line in lines)
    assert (await ledger_rows(settings))[0]["completion_tokens"] == 3


async def test_cut_stream_is_charged_at_its_bound(broker: Any, mock: MockUpstream) -> None:
    """An upstream stream cut after 3 chunks ends with an error event; without the upstream's
    usage the call is charged at its bound (max_tokens), never at what the broker saw."""
    http, tenant, settings = broker
    mock.enqueue({"cut_after_chunks": 3})
    async with http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "stream": True, "max_tokens": 10},
        headers=tenant.key_auth,
    ) as reply:
        lines = [line async for line in reply.aiter_lines() if line.startswith("data: ")]
    assert '"code":"upstream_stream_cut"' in lines[-1]
    assert "[DONE]" not in "".join(lines)
    relayed = "".join(lines)
    assert '"content":"w0"' in relayed
    assert '"content":" w2"' in relayed
    rows = await ledger_rows(settings)
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["completion_tokens"], row["streamed"]) == ("cut", 10, True)
    # Without the usage chunk the prompt is charged at its bound too (never below the truth).
    assert row["prompt_tokens"] >= PROMPT_TOKENS
    assert row["cost_usd"] > 0


async def test_official_client_sees_a_cut_stream_as_an_error(
    broker: Any, mock: MockUpstream
) -> None:
    """The openai SDK raises an APIError when the upstream stream is cut."""
    http, tenant, _ = broker
    mock.enqueue({"cut_after_chunks": 2})
    client = openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=tenant.api_key, http_client=http, max_retries=0
    )
    stream = await client.chat.completions.create(
        model="gpt-4.1-nano", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError, match="upstream stream ended early"):
        async for _ in stream:
            pass


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retries_then_succeeds(broker: Any, mock: MockUpstream, status: int) -> None:
    """A 429 or 5xx from the upstream is retried; the client gets the answer; one ledger row."""
    http, tenant, settings = broker
    mock.enqueue({"status": status, "retry_after": 0}, {"status": status, "retry_after": 0})
    reply = await invoke(http, tenant, parameters={"max_tokens": 2})
    assert reply.status_code == 200, reply.text
    stats = mock.stats()
    assert stats["by_outcome"] == {str(status): 2, "ok": 1}
    rows = await ledger_rows(settings)
    assert [(r["status"], r["completion_tokens"]) for r in rows] == [("success", 2)]


async def test_retry_after_is_honoured(broker: Any, mock: MockUpstream) -> None:
    """A Retry-After of 1 s from the upstream delays the retry by at least 1 s."""
    http, tenant, _ = broker
    mock.enqueue({"status": 429, "retry_after": 1})
    started = time.monotonic()
    reply = await invoke(http, tenant, parameters={"max_tokens": 1})
    assert reply.status_code == 200
    assert time.monotonic() - started >= 1.0


async def test_persistent_429_becomes_429_with_retry_after(broker: Any, mock: MockUpstream) -> None:
    """When every attempt gets 429 the client gets 429 upstream_rate_limited with Retry-After."""
    http, tenant, settings = broker
    mock.enqueue(*[{"status": 429, "retry_after": 0}] * 3)
    reply = await invoke(http, tenant)
    assert reply.status_code == 429
    error = reply.json()["error"]
    assert error["code"] == "upstream_rate_limited"
    assert error["request_id"] == reply.headers["x-request-id"]
    assert int(reply.headers["retry-after"]) >= 1
    assert mock.stats()["requests"] == 3
    rows = await ledger_rows(settings)
    assert [(r["status"], r["cost_usd"], r["http_status"]) for r in rows] == [
        ("upstream_error", Decimal(0), 429)
    ]


async def test_persistent_5xx_becomes_502(broker: Any, mock: MockUpstream) -> None:
    """Three 500s in a row become a 502 upstream_error in the spec's shape."""
    http, tenant, _ = broker
    mock.enqueue(*[{"status": 500}] * 3)
    reply = await invoke(http, tenant)
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "upstream_error"


async def test_openai_api_errors_use_openai_shape(broker: Any, mock: MockUpstream) -> None:
    """On /v1 an upstream failure is reported in OpenAI's error shape."""
    http, tenant, _ = broker
    mock.enqueue(*[{"status": 500}] * 3)
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 502
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert reply.json()["error"]["code"] == "upstream_error"


async def test_hung_upstream_times_out_with_504(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """A hanging upstream gives 504 within OPENAI_TIMEOUT, and the reservation is released."""
    current = configure(openai_api_key="k", openai_base_url=mock.url, openai_timeout=1.0)
    transport = httpx2.ASGITransport(app=router)
    async with httpx2.AsyncClient(transport=transport, base_url="http://b", timeout=30) as http:
        tenant = await login(http, await create_tenant(current))
        mock.enqueue({"hang": True})
        started = time.monotonic()
        reply = await invoke(http, tenant)
        elapsed = time.monotonic() - started
    assert reply.status_code == 504
    assert reply.json()["error"]["code"] == "upstream_timeout"
    assert elapsed < 2.5
    reserved = await deps.redis.get().call(
        "HGET", f"bx:b:{{{tenant.project_id}}}:{_month()}", "reserved"
    )
    assert int(reserved) == 0


def _month() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y%m")


async def test_fallback_model_answers_when_primary_fails(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """When the primary model keeps failing, its fallback answers and is metered at its price."""
    current = configure(
        openai_api_key="k",
        openai_base_url=mock.url,
        openai_max_retries=0,
        model_routes={"gpt-4.1-nano": {"fallbacks": ["gpt-4o-mini"]}},
    )
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=router), base_url="http://b"
    ) as http:
        tenant = await login(http, await create_tenant(current))
        mock.enqueue({"status": 500})
        reply = await invoke(http, tenant, parameters={"max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert [c["model"] for c in mock.stats()["calls"]] == ["gpt-4.1-nano", "gpt-4o-mini"]
    row = (await ledger_rows(current))[0]
    assert row["upstream_model"] == "gpt-4o-mini"
    expected = (PROMPT_TOKENS * Decimal("0.15") + 2 * Decimal("0.60")) / Decimal(1_000_000)
    assert row["cost_usd"] == expected


async def test_breaker_stops_hammering_a_failing_upstream(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """After N consecutive failures the breaker opens: calls fail fast with 503, unsent."""
    current = configure(
        openai_api_key="k",
        openai_base_url=mock.url,
        openai_max_retries=0,
        breaker_failure_threshold=2,
        breaker_reset_seconds=60,
    )
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=router), base_url="http://b"
    ) as http:
        tenant = await login(http, await create_tenant(current))
        mock.enqueue({"status": 500}, {"status": 500})
        assert (await invoke(http, tenant)).status_code == 502
        assert (await invoke(http, tenant)).status_code == 502
        third = await invoke(http, tenant)
    assert third.status_code == 503
    assert third.json()["error"]["code"] == "upstream_circuit_open"
    assert int(third.headers["retry-after"]) > 0
    assert mock.stats()["requests"] == 2


async def test_exactly_one_ledger_row_per_call_under_concurrency(
    broker: Any, mock: MockUpstream
) -> None:
    """Fifty concurrent invokes give fifty upstream calls and exactly fifty ledger rows."""
    http, tenant, settings = broker
    replies = await asyncio.gather(
        *(invoke(http, tenant, parameters={"max_tokens": 3}) for _ in range(50))
    )
    assert {r.status_code for r in replies} == {200}
    ids = {r.json()["request_id"] for r in replies}
    assert len(ids) == 50
    assert mock.stats()["requests"] == 50
    rows = await ledger_rows(settings)
    assert {r["request_id"] for r in rows} == ids
    assert sum(r["cost_usd"] for r in rows) == 50 * nano_cost(PROMPT_TOKENS, 3)


BAD_BODIES = [
    ({"model": "gpt-4.1-nano", "messages": []}, 400, "invalid_request"),
    (
        {"model": "gpt-4.1-nano", "messages": [{"role": "robot", "content": "x"}]},
        400,
        "invalid_request",
    ),
    (
        {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": 5}]},
        400,
        "invalid_request",
    ),
    ({"model": "gpt-4.1-nano"}, 400, "invalid_request"),
    (
        {"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"max_tokens": 0}},
        400,
        "invalid_request",
    ),
    (
        {"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"max_tokens": 5000}},
        400,
        "max_tokens_exceeded",
    ),
    (
        {"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"temperature": 3}},
        400,
        "invalid_request",
    ),
    ({"model": "gpt-4.1", "messages": MESSAGES}, 403, "model_not_allowed"),
    ({"model": "no-such-model", "messages": MESSAGES}, 403, "model_not_allowed"),
    ({"model": "gpt-4.1-nano", "messages": MESSAGES, "surprise": 1}, 400, "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
async def test_bad_invoke_bodies(
    broker: Any, mock: MockUpstream, body: dict[str, Any], status: int, code: str
) -> None:
    """Each malformed or forbidden invoke gets its 4xx in the spec's shape and costs nothing."""
    http, tenant, settings = broker
    reply = await http.post("/api/v1/llm/invoke", json=body, headers=tenant.auth)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == reply.headers["x-request-id"]
    assert mock.stats()["requests"] == 0
    assert await ledger_rows(settings) == []


async def test_forbidden_model_names_the_allowed_ones(broker: Any) -> None:
    """A model outside allowed_models gets 403 naming the allowed models."""
    http, tenant, _ = broker
    reply = await invoke(http, tenant, model="gpt-4o")
    assert reply.status_code == 403
    assert reply.json()["error"]["message"] == (
        "model 'gpt-4o' is not allowed for this project; allowed models: "
        "gpt-4.1-nano, gpt-4.1-mini, gpt-4o-mini"
    )


async def test_allowed_but_unserved_model_is_404(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """A model the project allows but the broker does not serve gets 404 model_not_found."""
    current = configure(openai_api_key="k", openai_base_url=mock.url)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=router), base_url="http://b"
    ) as http:
        tenant = await login(
            http, await create_tenant(current, allowed_models=("gpt-4.1-nano", "mystery-7b"))
        )
        reply = await invoke(http, tenant, model="mystery-7b")
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("raw", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "invalid_request"),
        (b"", {"content-type": "application/json"}, 400, "invalid_request"),
        (b"[1, 2]", {"content-type": "application/json"}, 400, "invalid_request"),
        (
            b'{"model": "x"' + b" " * 2_000_000 + b"}",
            {"content-type": "application/json"},
            413,
            "payload_too_large",
        ),
    ],
)
async def test_unparseable_bodies(
    broker: Any, mock: MockUpstream, raw: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    """Invalid JSON, an empty or non-object body and an oversized body are clear 4xx errors."""
    http, tenant, settings = broker
    reply = await http.post("/api/v1/llm/invoke", content=raw, headers={**tenant.auth, **headers})
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code
    assert mock.stats()["requests"] == 0
    assert await ledger_rows(settings) == []


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "invalid_token"),
        ("Basic abc", 401, "invalid_token"),
        ("Bearer not.a.jwt", 401, "invalid_token"),
        ("Bearer bx_0000000000000000_" + "A" * 43, 401, "invalid_credentials"),
    ],
)
async def test_bad_credentials_on_both_apis(
    broker: Any, mock: MockUpstream, authorization: str | None, status: int, code: str
) -> None:
    """Missing or invalid credentials are 401 on the spec API and on /v1 (OpenAI shape)."""
    http, _, _ = broker
    headers = {"Authorization": authorization} if authorization else {}
    body = {"model": "gpt-4.1-nano", "messages": MESSAGES}
    spec = await http.post("/api/v1/llm/invoke", json=body, headers=headers)
    oai = await http.post("/v1/chat/completions", json=body, headers=headers)
    assert spec.status_code == oai.status_code == status
    if not authorization or not authorization.startswith("Bearer bx_"):
        assert spec.json()["error"]["code"] == "invalid_token"
    assert oai.json()["error"]["code"] == code
    assert oai.json()["error"]["type"] == "authentication_error"
    assert mock.stats()["requests"] == 0


async def test_api_key_is_not_accepted_on_the_spec_api(broker: Any) -> None:
    """The spec's invoke needs an access token: a raw API key is refused with 401."""
    http, tenant, _ = broker
    reply = await http.post(
        "/api/v1/llm/invoke",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 401


async def test_wrong_scope_is_403(broker: Any, settings: Settings) -> None:
    """A token without invoke_llm gets 403 insufficient_scope."""
    http, _, current = broker
    reader = await login(
        http, await create_tenant(current, "proj_reader", scopes=("read_metrics",))
    )
    reply = await invoke(http, reader)
    assert reply.status_code == 403
    assert reply.json()["error"]["code"] == "insufficient_scope"


async def test_expired_token_is_401(broker: Any) -> None:
    """An expired access token is refused with 401 on invoke."""
    from common import services

    http, tenant, _ = broker
    old = services.tokens.get().issue(
        project_id=tenant.project_id,
        key_id=tenant.key_id,
        scopes=("invoke_llm",),
        token_type="access",
        family="f",
        now=int(time.time()) - 3600,
    )
    reply = await http.post(
        "/api/v1/llm/invoke",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {old.token}"},
    )
    assert reply.status_code == 401
    assert reply.json()["error"]["message"] == "token has expired"


async def test_out_of_range_integers_are_refused_or_forwarded(broker: Any) -> None:
    """A seed beyond 64 bits is a 400; a huge integer in a forwarded field is not a 500."""
    http, tenant, _ = broker
    bad = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "seed": 2**64},
        headers=tenant.key_auth,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "seed"
    forwarded = await http.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-4.1-nano",
            "messages": MESSAGES,
            "max_tokens": 2,
            "metadata": {"order": 2**70},
        },
        headers=tenant.key_auth,
    )
    assert forwarded.status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_bodies_are_415(broker: Any, mock: MockUpstream, content_type: str) -> None:
    """A JSON body sent with another Content-Type is refused with 415 on both APIs."""
    http, tenant, _ = broker
    raw = b'{"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}]}'
    for path, headers in (
        ("/api/v1/llm/invoke", tenant.auth),
        ("/v1/chat/completions", tenant.key_auth),
    ):
        reply = await http.post(
            path, content=raw, headers={**headers, "Content-Type": content_type}
        )
        assert reply.status_code == 415
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize(
    "extra",
    [{"n": True}, {"max_tokens": "16"}, {"stream": "yes"}, {"temperature": "0.5"}],
)
async def test_wrong_json_types_are_not_coerced(broker: Any, extra: dict[str, Any]) -> None:
    """Booleans and strings where numbers or booleans belong are 400, never silently coerced."""
    http, tenant, _ = broker
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, **extra},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 400


async def test_reconfigured_services_stop_their_background_loops(
    broker: Any, configure: Any, mock: MockUpstream
) -> None:
    """Settings swapped while services run (tests, `bradax dev`): the dropped services'
    drainer and telemetry loops stop instead of working on for the old settings."""
    http, tenant, _ = broker
    assert (await invoke(http, tenant)).status_code == 200

    def loops() -> list[str]:
        names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
        return [n for n in names if n in ("Drainer._loop", "Telemetry._loop")]

    assert "Drainer._loop" in loops()
    configure(openai_api_key="mock-key", openai_base_url=mock.url)
    for _ in range(100):
        if not loops():
            break
        await asyncio.sleep(0.05)
    assert loops() == []
