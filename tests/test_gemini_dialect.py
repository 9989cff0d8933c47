"""The Gemini dialect end to end: the openai SDK against the broker, over the mock speaking
generateContent, with the request it receives, the answer translated back and the ledger
held to what the mock billed at the route's prices, to the nano-dollar."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx2
import openai
import orjson
import pytest

from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, ledger_rows, login, tokens

ALIAS = "gemini-flash"
UPSTREAM = "gemini-2.5-flash"
KEY = "gm-key-" + "q" * 24
MILLION = Decimal(1_000_000)
PRICE_IN, PRICE_OUT = Decimal("0.30"), Decimal("2.50")
PRICE_READ, PRICE_WRITE = Decimal("0.075"), Decimal("0.40")
ROUTE = {
    "provider": "gemini",
    "api_key": KEY,
    "upstream_model": UPSTREAM,
    "input_per_1m": str(PRICE_IN),
    "output_per_1m": str(PRICE_OUT),
    "cache_read_per_1m": str(PRICE_READ),
    "cache_write_per_1m": str(PRICE_WRITE),
}


def price(prompt: int, completion: int, read: int = 0, write: int = 0) -> Decimal:
    """What the route's prices make of these tokens."""
    plain = prompt - read - write
    total = plain * PRICE_IN + read * PRICE_READ + write * PRICE_WRITE + completion * PRICE_OUT
    return total / MILLION


async def start_broker(
    configure: Any, mock: MockUpstream, router: Any, **overrides: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    """The broker in-process with the Gemini route over the mock (which wants our key)."""
    mock.configure(models=[UPSTREAM], api_key=KEY)
    route = {**ROUTE, "base_url": mock.root + "/v1beta", **overrides}
    current = configure(
        openai_api_key="mock-key",
        openai_base_url=mock.url,
        openai_max_retries=1,
        model_routes={ALIAS: route},
    )
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    tenant = await create_tenant(current, allowed_models=(ALIAS,))
    return http, await login(http, tenant), current


@pytest.fixture
async def broker(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    """The broker over the mock's Gemini protocol, with one project logged in."""
    return await start_broker(configure, mock, router)


def sdk(http: httpx2.AsyncClient, tenant: Tenant) -> openai.AsyncOpenAI:
    """The official async client on the broker's /v1 with the project's API key."""
    return openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=tenant.api_key, http_client=http, max_retries=0
    )


def sent(mock: MockUpstream) -> Any:
    """The last request body the mock received (the GenerateContentRequest)."""
    return httpx2.get(mock.root + "/_mock/last_request").json()


def calls(mock: MockUpstream) -> list[dict[str, Any]]:
    """The calls the mock billed."""
    return [c for c in mock.stats()["calls"] if c["outcome"] in ("ok", "cut", "disconnected")]


def bound(body: dict[str, Any]) -> int:
    """The prompt bound of the chat body the broker builds: its bytes, with the upstream's
    model name (common.bounds; no media, no Gemini overhead)."""
    return len(orjson.dumps({**body, "model": UPSTREAM}))


def stream_body(content: str, cap: int) -> dict[str, Any]:
    """The chat body the broker builds for a streamed chat call of one user message."""
    return {
        "model": UPSTREAM,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": cap,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_chat_completion_is_translated_and_metered(broker: Any, mock: MockUpstream) -> None:
    """A chat call becomes a generateContent request (system instruction, contents, generation
    config) sent with the key in x-goog-api-key; the answer comes back as a chat completion
    whose usage and ledger row are exactly what the mock billed, at the route's prices."""
    http, tenant, settings = broker
    answer = await sdk(http, tenant).chat.completions.create(
        model=ALIAS,
        messages=[
            {"role": "system", "content": "Seja breve"},
            {"role": "user", "content": "Explique seguros"},
        ],
        max_tokens=5,
        temperature=0.5,
        top_p=0.9,
        stop="FIM",
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        user="someone",
    )
    assert answer.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert answer.choices[0].finish_reason == "length"
    assert answer.model == ALIAS
    assert answer.usage is not None
    # 3 + (4 + 2) for the system instruction + (4 + 2) for the user content
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (15, 5)
    assert sent(mock) == {
        "contents": [{"role": "user", "parts": [{"text": "Explique seguros"}]}],
        "systemInstruction": {"parts": [{"text": "Seja breve"}]},
        "generationConfig": {
            "maxOutputTokens": 5,
            "temperature": 0.5,
            "topP": 0.9,
            "seed": 7,
            "presencePenalty": 0.1,
            "frequencyPenalty": 0.2,
            "stopSequences": ["FIM"],
        },
    }
    headers = httpx2.get(mock.root + "/_mock/last_headers").json()
    assert KEY not in str(headers)
    assert headers["user-agent"] == "bradax/1.0"
    [call] = calls(mock)
    assert (call["protocol"], call["model"], call["stream"]) == ("gemini", UPSTREAM, False)
    rows = await ledger_rows(settings)
    assert [(r["request_id"], *tokens(r)) for r in rows] == [(call["request_id"], 15, 5, 0, 0)]
    assert rows[0]["cost_usd"] == price(15, 5) == Decimal("0.0000170")
    assert (rows[0]["status"], rows[0]["upstream_model"]) == ("success", UPSTREAM)


async def test_chat_stream_is_translated_and_metered(broker: Any, mock: MockUpstream) -> None:
    """A streamed chat call reads the mock's server-sent chunks as chat chunks: the text, the
    finish reason, the final usage (never a chunk's partial one) and the ledger row."""
    http, tenant, settings = broker
    stream = await sdk(http, tenant).chat.completions.create(
        model=ALIAS,
        messages=[{"role": "user", "content": "Explique seguros de vida"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finishes, usages = "", [], []
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
        if chunk.usage is not None:
            usages.append((chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
    assert text == "w0 w1 w2 w3"
    assert finishes == ["length"]
    assert usages == [(11, 4)]
    rows = await ledger_rows(settings)
    assert [(*tokens(r), r["streamed"], r["status"]) for r in rows] == [
        (11, 4, 0, 0, True, "success")
    ]
    assert rows[0]["cost_usd"] == price(11, 4)
    assert [c["completion_tokens"] for c in calls(mock)] == [4]


@pytest.mark.parametrize("stream", [False, True])
async def test_cache_reads_are_priced_apart(broker: Any, mock: MockUpstream, stream: bool) -> None:
    """Prompt tokens Gemini reports as cachedContentTokenCount (part of promptTokenCount) are
    ledgered as cache reads at their own price; Gemini reports no cache writes."""
    http, tenant, settings = broker
    mock.enqueue({"cache": {"read": 6, "write": 3}})
    body = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "Explique seguros de vida"}],
        "max_tokens": 3,
        "stream": stream,
    }
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers=tenant.key_auth
    ) as reply:
        assert reply.status_code == 200
        raw = b"".join([part async for part in reply.aiter_bytes()])
    if not stream:
        assert orjson.loads(raw)["usage"]["prompt_tokens_details"]["cached_tokens"] == 6
    [call] = calls(mock)
    assert (call["cache_read_tokens"], call["cache_write_tokens"]) == (6, 0)
    rows = await ledger_rows(settings)
    assert [tokens(r) for r in rows] == [(11, 3, 6, 0)]
    assert rows[0]["cost_usd"] == price(11, 3, read=6) == Decimal("0.00000945")


async def test_tool_calls_map_both_ways(broker: Any, mock: MockUpstream) -> None:
    """Tools, tool_choice, an assistant tool call and its result become function
    declarations, a function calling config, functionCall and functionResponse parts; the
    mock's functionCall comes back as a chat tool call, finish tool_calls."""
    http, tenant, settings = broker
    script = {"text": "", "tool_arguments": '{"q": "vida"}'}
    httpx2.post(mock.root + "/_mock/reply", json=script).raise_for_status()
    answer = await sdk(http, tenant).chat.completions.create(
        model=ALIAS,
        max_tokens=50,
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "busca",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        messages=[
            {"role": "user", "content": "procure"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "casa"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "nada achado"},
        ],
    )
    body = sent(mock)
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "procure"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "casa"}}}]},
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "lookup", "response": {"result": "nada achado"}}}
            ],
        },
    ]
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "lookup",
                    "description": "busca",
                    "parametersJsonSchema": {
                        "type": "object",
                        "properties": {"q": {"type": "string"}},
                    },
                }
            ]
        }
    ]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}
    }
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [
        (c.id, c.type, c.function.name, c.function.arguments)
        for c in choice.message.tool_calls or []
    ] == [("call_0", "function", "lookup", '{"q":"vida"}')]
    [call] = calls(mock)
    rows = await ledger_rows(settings)
    assert [tokens(r)[:2] for r in rows] == [(call["prompt_tokens"], call["completion_tokens"])]
    assert rows[0]["cost_usd"] == price(call["prompt_tokens"], call["completion_tokens"])


async def test_streamed_tool_calls_and_text(broker: Any, mock: MockUpstream) -> None:
    """A stream's text chunks and its functionCall become content and tool_call deltas
    (index, id, name and the whole arguments), ending in finish tool_calls."""
    http, tenant, settings = broker
    script = {"text": "vou ver", "tool_arguments": '{"q": "vida"}', "chunk_chars": 4}
    httpx2.post(mock.root + "/_mock/reply", json=script).raise_for_status()
    stream = await sdk(http, tenant).chat.completions.create(
        model=ALIAS,
        max_tokens=50,
        stream=True,
        tools=[{"type": "function", "function": {"name": "lookup"}}],
        tool_choice="required",
        messages=[{"role": "user", "content": "procure"}],
    )
    text, deltas, finishes = "", [], []
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                assert call.function is not None
                deltas.append((call.index, call.id, call.function.name, call.function.arguments))
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert text == "vou ver"
    assert deltas == [(0, "call_0", "lookup", '{"q":"vida"}')]
    assert finishes == ["tool_calls"]
    assert sent(mock)["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    [call] = calls(mock)
    rows = await ledger_rows(settings)
    assert [tokens(r)[:2] for r in rows] == [(call["prompt_tokens"], call["completion_tokens"])]


async def test_a_cut_stream_is_charged_at_its_bound(broker: Any, mock: MockUpstream) -> None:
    """A stream the upstream cuts before its finishReason (its chunks carried partial usage)
    is ledgered as cut, at the call's bound (the prompt at its dearest price, cache writes
    here), never at $0 nor at the partial usage."""
    http, tenant, settings = broker
    mock.enqueue({"cut_after_chunks": 2})
    body = {**stream_body("oi", 8), "model": ALIAS}
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers=tenant.key_auth
    ) as reply:
        assert reply.status_code == 200
        _ = [line async for line in reply.aiter_lines()]
    assert [(c["outcome"], c["completion_tokens"]) for c in mock.stats()["calls"]] == [("cut", 2)]
    rows = await ledger_rows(settings)
    prompt = bound(stream_body("oi", 8))
    # At the bound, every prompt token is charged at the dearest prompt price (cache writes).
    assert [(r["status"], *tokens(r)) for r in rows] == [("cut", prompt, 8, 0, prompt)]
    assert rows[0]["cost_usd"] == price(prompt, 8, write=prompt)


LIES = [
    {"promptTokenCount": -1, "candidatesTokenCount": 2},
    {"promptTokenCount": 10**9, "candidatesTokenCount": 2},
    {"promptTokenCount": 5, "candidatesTokenCount": 2, "thoughtsTokenCount": "many"},
    {"candidatesTokenCount": 2},
    "absent",
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("lie", LIES, ids=["negative", "huge", "not_int", "no_prompt", "absent"])
async def test_lying_usage_is_charged_at_the_bound(
    broker: Any, mock: MockUpstream, lie: object, stream: bool
) -> None:
    """A usageMetadata that is negative, over the bound, not a count, without its
    promptTokenCount or absent is not believed: the call is ledgered at its bound."""
    http, tenant, settings = broker
    mock.enqueue({"usage": lie})
    body = stream_body("oi", 6)
    if not stream:
        body = {name: body[name] for name in ("model", "messages", "max_tokens")}
    async with http.stream(
        "POST", "/v1/chat/completions", json={**body, "model": ALIAS}, headers=tenant.key_auth
    ) as reply:
        assert reply.status_code == 200
        _ = [line async for line in reply.aiter_lines()]
    rows = await ledger_rows(settings)
    prompt = bound(body)
    assert [(r["status"], *tokens(r)) for r in rows] == [("usage_unverified", prompt, 6, 0, prompt)]
    assert rows[0]["cost_usd"] == price(prompt, 6, write=prompt)


@pytest.mark.parametrize("stream", [False, True])
async def test_thinking_and_tool_use_tokens_are_billed(
    broker: Any, mock: MockUpstream, stream: bool
) -> None:
    """thoughtsTokenCount is billed as output and toolUsePromptTokenCount as input."""
    http, tenant, settings = broker
    claim = {
        "promptTokenCount": 9,
        "toolUsePromptTokenCount": 2,
        "candidatesTokenCount": 3,
        "thoughtsTokenCount": 4,
        "cachedContentTokenCount": 5,
    }
    mock.enqueue({"usage": claim})
    body = {"model": ALIAS, "messages": [{"role": "user", "content": "oi"}], "max_tokens": 20}
    async with http.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": stream}, headers=tenant.key_auth
    ) as reply:
        _ = [line async for line in reply.aiter_lines()]
    rows = await ledger_rows(settings)
    assert [(r["status"], *tokens(r)) for r in rows] == [("success", 11, 7, 5, 0)]
    assert rows[0]["cost_usd"] == price(11, 7, read=5)


async def test_a_trailing_zero_usage_chunk_is_not_read(broker: Any, mock: MockUpstream) -> None:
    """A chunk after the finishReason (zero usage) changes nothing: the end was the finish."""
    http, tenant, settings = broker
    mock.enqueue({"trailing_zero_usage": True})
    body = {**stream_body("oi", 3), "model": ALIAS}
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers=tenant.key_auth
    ) as reply:
        lines = [line async for line in reply.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    rows = await ledger_rows(settings)
    assert [(r["status"], *tokens(r)) for r in rows] == [("success", 8, 3, 0, 0)]


async def test_a_429_is_retried(broker: Any, mock: MockUpstream) -> None:
    """A RESOURCE_EXHAUSTED 429 is retried; the retry's answer is served and ledgered once."""
    http, tenant, settings = broker
    mock.enqueue({"status": 429})
    answer = await sdk(http, tenant).chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "oi"}], max_tokens=2
    )
    assert answer.choices[0].message.content == "w0 w1"
    stats = mock.stats()
    assert (stats["requests"], stats["by_outcome"]) == (2, {"429": 1, "ok": 1})
    rows = await ledger_rows(settings)
    assert [(r["status"], *tokens(r)) for r in rows] == [("success", 8, 2, 0, 0)]


async def test_google_retry_info_is_the_retry_wait(broker: Any, mock: MockUpstream) -> None:
    """Google says how long to wait in the body (RetryInfo.retryDelay), not in Retry-After: the
    retry waits that long, and a client that runs out of retries is told to wait it too."""
    http, tenant, _ = broker
    mock.enqueue({"status": 429, "retry_after": 0.6})
    started = time.monotonic()
    answer = await sdk(http, tenant).chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "oi"}], max_tokens=2
    )
    assert answer.choices[0].message.content == "w0 w1"
    assert time.monotonic() - started >= 0.6
    mock.enqueue({"status": 429, "retry_after": 40}, {"status": 429, "retry_after": 40})
    started = time.monotonic()
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": ALIAS, "messages": [{"role": "user", "content": "oi"}], "max_tokens": 2},
        headers=tenant.key_auth,
    )
    assert time.monotonic() - started < 4  # 40 s is past the call's deadline (5 s): not slept
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "41"


async def test_an_upstream_400_is_a_400_that_leaks_nothing(broker: Any, mock: MockUpstream) -> None:
    """An upstream 400 (echoing our headers, the key among them) is the client's 400 naming
    only the upstream's status; neither its message nor the key reach the client."""
    http, tenant, _ = broker
    mock.enqueue({"status": 400, "echo_headers": True})
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": ALIAS, "messages": [{"role": "user", "content": "oi"}], "max_tokens": 2},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "upstream_bad_request"
    assert KEY not in reply.text
    assert "Headers received" not in reply.text
    assert mock.stats()["requests"] == 1  # a 400 is not retried


async def test_a_refused_key_is_named_without_the_key(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """Google answers a wrong key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID: that is
    the broker's credentials refused (a 502), not the client's request, and names no key."""
    wrong = "gm-wrong-" + "z" * 24
    http, tenant, _ = await start_broker(configure, mock, router, api_key=wrong)
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": ALIAS, "messages": [{"role": "user", "content": "oi"}], "max_tokens": 2},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 502
    assert "rejected the broker's credentials" in reply.json()["error"]["message"]
    assert wrong not in reply.text
    assert KEY not in reply.text
    assert mock.stats()["by_outcome"] == {"400": 1}


UNMAPPABLE = [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    (
        {
            "parallel_tool_calls": False,
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
        },
        "parallel_tool_calls",
    ),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"reasoning_effort": "minimal"}, "reasoning_effort"),
    ({"verbosity": "low"}, "verbosity"),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
                    ],
                }
            ]
        },
        "image_url",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "flac"}}
                    ],
                }
            ]
        },
        "input_audio",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
        "file",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "oi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{"}}
                    ],
                },
            ]
        },
        "messages",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "oi"},
                {"role": "tool", "tool_call_id": "nowhere", "content": "x"},
            ]
        },
        "messages",
    ),
]


@pytest.mark.parametrize(("extra", "param"), UNMAPPABLE, ids=[p for _, p in UNMAPPABLE])
async def test_unmappable_features_are_refused_before_the_upstream(
    broker: Any, mock: MockUpstream, extra: dict[str, Any], param: str
) -> None:
    """A feature Gemini cannot carry is a 400 naming it, before admission: no upstream
    request, no ledger row."""
    http, tenant, settings = broker
    body = {
        "model": ALIAS,
        "messages": [{"role": "user", "content": "oi"}],
        "max_tokens": 5,
        **extra,
    }
    reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == (param, "parameter_not_supported")
    assert mock.stats()["requests"] == 0
    assert await ledger_rows(settings) == []


async def test_media_and_formats_map(broker: Any, mock: MockUpstream) -> None:
    """data: URL images, files and base64 audio become inlineData; json_schema becomes
    responseMimeType and responseJsonSchema; reasoning_effort a thinking budget."""
    http, tenant, _ = broker
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = {
        "model": ALIAS,
        "max_tokens": 5,
        "reasoning_effort": "low",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": schema, "strict": True},
        },
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "seja breve"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "veja"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
                    {
                        "type": "file",
                        "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a"},
                    },
                ],
            },
            {"role": "user", "content": "e isto"},
        ],
    }
    reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert reply.status_code == 200, reply.text
    request = sent(mock)
    assert request["systemInstruction"] == {"parts": [{"text": "seja breve"}]}
    assert request["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "veja"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklG"}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
                {"text": "e isto"},
            ],
        }
    ]
    assert request["generationConfig"] == {
        "maxOutputTokens": 5,
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
        "thinkingConfig": {"thinkingBudget": 1024},
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_a_blocked_prompt_is_an_empty_filtered_answer(
    broker: Any, mock: MockUpstream, stream: bool
) -> None:
    """A prompt Gemini blocks (promptFeedback.blockReason, no candidate) is a 200 with empty
    content and finish content_filter, billed by its usage (the prompt only)."""
    http, tenant, settings = broker
    httpx2.post(mock.root + "/_mock/reply", json={"refusal": "no"}).raise_for_status()
    body = {"model": ALIAS, "messages": [{"role": "user", "content": "oi"}], "max_tokens": 5}
    async with http.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": stream}, headers=tenant.key_auth
    ) as reply:
        assert reply.status_code == 200
        raw = b"".join([part async for part in reply.aiter_bytes()])
    if stream:
        events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line[:7] == b"data: {"]
        finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
        assert finishes == ["content_filter"]
        assert "".join(c["delta"].get("content") or "" for e in events for c in e["choices"]) == ""
    else:
        choice = orjson.loads(raw)["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == ("", "content_filter")
    rows = await ledger_rows(settings)
    assert [(r["status"], *tokens(r)) for r in rows] == [("success", 8, 0, 0, 0)]


async def test_a_malformed_answer_is_a_502(broker: Any, mock: MockUpstream) -> None:
    """A 200 that is not JSON is an upstream error, never retried."""
    http, tenant, _ = broker
    mock.enqueue({"malformed": True})
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": ALIAS, "messages": [{"role": "user", "content": "oi"}], "max_tokens": 2},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 502
    assert mock.stats()["requests"] == 1
