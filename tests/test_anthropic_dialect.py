"""An Anthropic upstream end to end: the broker in-process over the mock speaking the Messages
API, driven by the official openai and anthropic SDKs through every face, with the ledger
held to exactly what the mock billed (cache reads and writes priced apart)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, ledger_rows, login, tokens

ALIAS = "claude-fast"
UPSTREAM = "claude-haiku-4-5"
KEY = "sk-ant-mock-" + "k" * 24
PRICES = {"input": "1", "output": "5", "cache_read": "0.1", "cache_write": "1.25"}
MILLION = Decimal(1_000_000)
EPHEMERAL = {"type": "ephemeral"}
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "busca",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


def route(**extra: Any) -> dict[str, Any]:
    """The Anthropic route of ALIAS on the mock."""
    return {
        "provider": "anthropic",
        "api_key": KEY,
        "upstream_model": UPSTREAM,
        **{f"{name}_per_1m": price for name, price in PRICES.items()},
        **extra,
    }


def cost(prompt: int, completion: int, read: int = 0, write: int = 0) -> Decimal:
    """What the route's prices make of these tokens (cache reads and writes priced apart)."""
    price = {name: Decimal(value) for name, value in PRICES.items()}
    return (
        (prompt - read - write) * price["input"]
        + read * price["cache_read"]
        + write * price["cache_write"]
        + completion * price["output"]
    ) / MILLION


def at_bound(prompt: int, completion: int) -> Decimal:
    """A call charged at its bound: every prompt token at the dearest prompt price (writes)."""
    return cost(prompt, completion, 0, prompt)


@pytest.fixture
async def broker(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    """The broker in-process over the mock (its key required), one project logged in."""
    mock.configure(models=[UPSTREAM], api_key=KEY)
    current = configure(openai_max_retries=2, model_routes={ALIAS: route(base_url=mock.url)})
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    tenant = await create_tenant(current, allowed_models=(ALIAS,))
    return http, await login(http, tenant), current


def chat_sdk(http: httpx2.AsyncClient, tenant: Tenant) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=tenant.api_key, http_client=http, max_retries=0
    )


def messages_sdk(http: httpx2.AsyncClient, tenant: Tenant) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url="http://broker", api_key=tenant.api_key, http_client=http, max_retries=0
    )


def billed(mock: MockUpstream) -> list[tuple[str, int, int, int, int, Decimal]]:
    """(request id, prompt, completion, cache read, cache write, cost) the mock billed."""
    calls = [c for c in mock.stats()["calls"] if c["outcome"] == "ok"]
    assert all(c["protocol"] == "anthropic" for c in calls)
    return [(c["request_id"], *tokens(c), cost(*tokens(c))) for c in calls]


def ledgered(rows: list[dict[str, Any]]) -> list[tuple[str, int, int, int, int, Decimal]]:
    return [(r["request_id"], *tokens(r), r["cost_usd"]) for r in rows]


def last(mock: MockUpstream, what: str = "request") -> Any:
    return httpx2.get(f"{mock.root}/_mock/last_{what}", timeout=5).json()


async def test_chat_completions_plain_and_streamed(broker: Any, mock: MockUpstream) -> None:
    """The openai SDK's create and stream over an Anthropic upstream: the Messages request
    the mock got, the answer, and ledger rows equal to what the mock billed."""
    http, tenant, settings = broker
    client = chat_sdk(http, tenant)
    answer = await client.chat.completions.create(
        model=ALIAS,
        max_tokens=5,
        temperature=0.5,
        stop="FIM",
        user="u-1",
        messages=[
            {"role": "system", "content": "Seja breve"},
            {"role": "user", "content": "Explique seguros"},
        ],
    )
    assert answer.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert answer.choices[0].finish_reason == "length"
    assert answer.model == ALIAS
    assert answer.usage is not None
    # 3 + (4 + 2) for the system prompt + (4 + 2) for the user turn
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (15, 5)
    assert last(mock) == {
        "model": UPSTREAM,
        "max_tokens": 5,
        "system": [{"type": "text", "text": "Seja breve"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Explique seguros"}]}],
        "stop_sequences": ["FIM"],
        "temperature": 0.5,
        "metadata": {"user_id": "u-1"},
    }
    headers = last(mock, "headers")
    assert headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in headers
    stream = await client.chat.completions.create(
        model=ALIAS,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Explique seguros"}],
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "w0 w1 w2 w3"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 4)
    assert last(mock)["stream"] is True
    assert "stream_options" not in last(mock)
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)
    assert [(r["status"], r["streamed"]) for r in rows] == [("success", False), ("success", True)]
    assert [r["cost_usd"] for r in rows] == [cost(15, 5), cost(9, 4)]


async def test_cache_reads_and_writes_are_priced_apart(broker: Any, mock: MockUpstream) -> None:
    """A client's cache breakpoint reaches the upstream; prompt tokens it reports as cache
    reads and writes are ledgered as such and priced at the route's cache prices, in answers
    and in streams, on every face."""
    http, tenant, settings = broker
    mock.enqueue({"cache": {"read": 6, "write": 4}}, {"cache": {"read": 2, "write": 5}})
    mock.enqueue({"cache": {"read": 3, "write": 0}})
    part: Any = {"type": "text", "text": "um dois tres quatro", "cache_control": EPHEMERAL}
    answer = await chat_sdk(http, tenant).chat.completions.create(
        model=ALIAS, max_tokens=3, messages=[{"role": "user", "content": [part]}]
    )
    assert last(mock)["messages"][0]["content"] == [
        {"type": "text", "text": "um dois tres quatro", "cache_control": EPHEMERAL}
    ]  # the client's cache breakpoint reaches the upstream
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 11
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 6
    stream = await chat_sdk(http, tenant).chat.completions.create(
        model=ALIAS,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "um dois tres quatro"}],
    )
    tail = [chunk async for chunk in stream][-1]
    assert tail.usage is not None
    assert tail.usage.model_dump()["prompt_tokens_details"]["cache_write_tokens"] == 5
    message = await messages_sdk(http, tenant).messages.create(
        model=ALIAS, max_tokens=3, messages=[{"role": "user", "content": "um dois tres quatro"}]
    )
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (8, 3)
    assert usage.cache_creation_input_tokens == 0
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)
    assert [(r["cache_read_tokens"], r["cache_write_tokens"]) for r in rows] == [
        (6, 4),
        (2, 5),
        (3, 0),
    ]
    assert [r["cost_usd"] for r in rows] == [cost(11, 3, 6, 4), cost(11, 3, 2, 5), cost(11, 3, 3)]
    assert rows[0]["cost_usd"] == Decimal("0.0000216")  # 1 x 1 + 6 x 0.1 + 4 x 1.25 + 3 x 5


async def test_tool_calls_both_ways_on_the_chat_face(broker: Any, mock: MockUpstream) -> None:
    """Tools, tool_choice, parallel_tool_calls, an assistant's tool calls and the tool's
    result become Messages tools and blocks; the tool_use answer comes back as chat tool
    calls, whole and streamed; the hidden tool prompt is billed and ledgered."""
    http, tenant, settings = broker
    client = chat_sdk(http, tenant)
    script = {"text": "Vou buscar", "tool_arguments": '{"q": "vida"}', "chunk_chars": 4}
    httpx2.post(mock.root + "/_mock/reply", json=script, timeout=5).raise_for_status()
    history: list[Any] = [
        {"role": "user", "content": "procure"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": ""}},
                {
                    "id": "t2",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "auto"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "nada"},
        {"role": "tool", "tool_call_id": "t2", "content": "achei"},
    ]
    answer = await client.chat.completions.create(
        model=ALIAS,
        max_tokens=50,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        parallel_tool_calls=False,
        messages=history,
    )
    sent = last(mock)
    assert sent["tools"] == [
        {
            "name": "lookup",
            "description": "busca",
            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        }
    ]
    assert sent["tool_choice"] == {
        "type": "tool",
        "name": "lookup",
        "disable_parallel_tool_use": True,
    }
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "lookup", "input": {"q": "auto"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "nada"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "achei"},
            ],
        },
    ]
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Vou buscar"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, orjson.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("toolu_mock", "lookup", {"q": "vida"})
    ]
    stream = await client.chat.completions.create(
        model=ALIAS,
        max_tokens=50,
        tools=TOOLS,
        stream=True,
        messages=[{"role": "user", "content": "procure"}],
    )
    deltas = [c.choices[0].delta for c in [chunk async for chunk in stream] if c.choices]
    pieces = [call for d in deltas for call in d.tool_calls or ()]
    assert (pieces[0].id, pieces[0].function.name) == ("toolu_mock", "lookup")  # type: ignore[union-attr]
    assert "".join(p.function.arguments or "" for p in pieces) == '{"q": "vida"}'  # type: ignore[union-attr]
    assert {p.index for p in pieces} == {0}
    assert "".join(d.content or "" for d in deltas) == "Vou buscar"
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)
    tools_tokens = len(orjson.dumps(sent["tools"])) // 4 + 346  # the mock's hidden tool prompt
    assert rows[1]["prompt_tokens"] == 3 + 4 + 1 + tools_tokens


async def test_messages_face_over_an_anthropic_upstream(broker: Any, mock: MockUpstream) -> None:
    """The anthropic SDK's messages.create and messages.stream: the client's anthropic-beta
    and anthropic-version reach the upstream unchanged; text, tool use and usage come back."""
    http, tenant, settings = broker
    client = messages_sdk(http, tenant)
    beta = {"anthropic-beta": "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"}
    answer = await client.messages.create(
        model=ALIAS,
        max_tokens=5,
        system="Seja breve",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Explique seguros"}]}],
        extra_headers=beta,
    )
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "w0 w1 w2 w3 w4"
    assert answer.stop_reason == "max_tokens"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (15, 5)
    headers = last(mock, "headers")
    assert headers["anthropic-beta"] == beta["anthropic-beta"]
    assert headers["anthropic-version"] == client.default_headers["anthropic-version"]
    assert "x-api-key" not in headers  # the mock keeps no credentials; it checked it
    assert last(mock)["system"] == [{"type": "text", "text": "Seja breve"}]
    async with client.messages.stream(
        model=ALIAS,
        max_tokens=4,
        messages=[{"role": "user", "content": "Explique seguros"}],
        extra_headers={**beta, "anthropic-version": "2023-01-01"},
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert (kinds[0], kinds[-1]) == ("message_start", "message_stop")
    assert final.content[0].type == "text"
    assert final.content[0].text == "w0 w1 w2 w3"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)
    headers = last(mock, "headers")
    assert (headers["anthropic-beta"], headers["anthropic-version"]) == (
        beta["anthropic-beta"],
        "2023-01-01",
    )
    httpx2.post(
        mock.root + "/_mock/reply", json={"text": "", "tool_arguments": '{"q": "vida"}'}, timeout=5
    ).raise_for_status()
    used = await client.messages.create(
        model=ALIAS,
        max_tokens=50,
        tools=[{"name": "lookup", "description": "busca", "input_schema": {"type": "object"}}],
        messages=[{"role": "user", "content": "procure"}],
    )
    assert used.stop_reason == "tool_use"
    uses = [(b.id, b.name, b.input) for b in used.content if b.type == "tool_use"]
    assert uses == [("toolu_mock", "lookup", {"q": "vida"})]
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)
    assert [r["cost_usd"] for r in rows][:2] == [cost(15, 5), cost(9, 4)]


async def test_responses_face_over_an_anthropic_upstream(broker: Any, mock: MockUpstream) -> None:
    """responses.create plain, streamed and with a function call, ledgered exactly."""
    http, tenant, settings = broker
    client = chat_sdk(http, tenant)
    answer = await client.responses.create(
        model=ALIAS, instructions="Seja breve", input="Explique seguros", max_output_tokens=5
    )
    assert answer.output_text == "w0 w1 w2 w3 w4"
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (15, 5)
    events = [
        e
        async for e in await client.responses.create(
            model=ALIAS, input="Explique seguros", max_output_tokens=20, stream=True
        )
    ]
    done = [e for e in events if e.type == "response.completed"]
    assert done[0].response.output_text == " ".join(f"w{i}" for i in range(12))
    httpx2.post(
        mock.root + "/_mock/reply", json={"text": "", "tool_arguments": '{"q": "vida"}'}, timeout=5
    ).raise_for_status()
    called = await client.responses.create(
        model=ALIAS,
        input="procure",
        max_output_tokens=50,
        tools=[{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],  # type: ignore[list-item]
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert [(c.name, orjson.loads(c.arguments)) for c in calls] == [("lookup", {"q": "vida"})]
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)
    assert len(rows) == 3


def chat_bound(messages: list[dict[str, Any]], max_tokens: int, stream: bool, **extra: Any) -> int:
    """The prompt bound of a raw chat body on the route: its bytes (the upstream's model
    name in it) and the dialect's overhead (1000 with tools: the hidden tool prompt)."""
    body: dict[str, Any] = {"max_tokens": max_tokens, "model": UPSTREAM, "messages": messages}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return len(orjson.dumps({**body, **extra})) + (1000 if extra.get("tools") else 10)


MESSAGES: Any = [{"role": "user", "content": "Explique seguros"}]


@pytest.mark.parametrize("extra", [{}, {"tools": TOOLS}])
async def test_a_cut_stream_is_charged_at_its_bound(
    broker: Any, mock: MockUpstream, extra: dict[str, Any]
) -> None:
    """A stream the upstream cuts before message_stop is charged at its bound, never $0 (the
    hidden tool prompt's allowance in it when tools are given)."""
    http, tenant, settings = broker
    mock.enqueue({"cut_after_chunks": 2})
    body = {"model": ALIAS, "messages": MESSAGES, "max_tokens": 8, "stream": True, **extra}
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers=tenant.key_auth
    ) as reply:
        text = (await reply.aread()).decode()
    assert '"content":"w0"' in text
    assert "[DONE]" not in text
    (row,) = await ledger_rows(settings)
    prompt = chat_bound(MESSAGES, 8, True, **extra)
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == ("cut", prompt, 8)
    assert row["cost_usd"] == at_bound(prompt, 8) > 0


@pytest.mark.parametrize(
    "lie",
    [
        {"input_tokens": -3, "output_tokens": 2},
        {"input_tokens": 10**9, "output_tokens": 2},
        {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": "7"},
        "absent",
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_lying_usage_is_charged_at_the_bound(
    broker: Any, mock: MockUpstream, lie: Any, stream: bool
) -> None:
    """Negative, huge, mistyped or absent usage, in an answer or a stream's message_delta,
    is charged at the bound."""
    http, tenant, settings = broker
    mock.enqueue({"usage": lie})
    body: dict[str, Any] = {"model": ALIAS, "messages": MESSAGES, "max_tokens": 7}
    if stream:
        body |= {"stream": True}
    reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert reply.status_code == 200
    (row,) = await ledger_rows(settings)
    prompt = chat_bound(MESSAGES, 7, stream)
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (
        "usage_unverified",
        prompt,
        7,
    )
    assert row["cost_usd"] == at_bound(prompt, 7)


@pytest.mark.parametrize("status", [429, 529])
async def test_rate_limits_and_overload_are_retried(
    broker: Any, mock: MockUpstream, status: int
) -> None:
    """A 429 (rate_limit_error) or 529 (overloaded_error) is retried; the call succeeds and
    is ledgered once."""
    http, tenant, settings = broker
    mock.enqueue({"status": status, "retry_after": 0})
    answer = await chat_sdk(http, tenant).chat.completions.create(
        model=ALIAS, max_tokens=2, messages=MESSAGES
    )
    assert answer.choices[0].message.content == "w0 w1"
    assert mock.stats()["by_outcome"] == {str(status): 1, "ok": 1}
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)


async def test_an_upstream_400_is_a_400_without_its_body(broker: Any, mock: MockUpstream) -> None:
    """The upstream's 400 becomes our 400 naming only its error type; a 400 that echoes the
    headers (the key among them) leaks nothing."""
    http, tenant, _ = broker
    mock.enqueue({"status": 400}, {"status": 400, "echo_headers": True})
    body = {"model": ALIAS, "messages": MESSAGES, "max_tokens": 2}
    plain = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert plain.status_code == 400
    error = plain.json()["error"]
    assert error["code"] == "upstream_bad_request"
    assert "invalid_request_error" in error["message"]
    assert "Mock error" not in plain.text
    echoed = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert echoed.status_code == 400
    assert KEY not in echoed.text
    assert KEY not in str(echoed.headers)
    assert mock.stats()["by_outcome"] == {"400": 2}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"seed": 7}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_k": 5}, "top_k"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
                ]
            },
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": "oi", "name": "ana"}]}, "messages[0].name"),
    ],
)
async def test_unmappable_features_are_refused_before_the_upstream(
    broker: Any, mock: MockUpstream, extra: dict[str, Any], param: str
) -> None:
    """A feature Messages cannot carry is a 400 naming it: no upstream request, no ledger row."""
    http, tenant, settings = broker
    body = {"model": ALIAS, "messages": MESSAGES, "max_tokens": 2, **extra}
    reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == (param, "parameter_not_supported")
    assert mock.stats()["requests"] == 0
    assert await ledger_rows(settings) == []


async def test_the_key_travels_in_x_api_key_and_never_in_an_error(
    broker: Any, mock: MockUpstream, configure: Any
) -> None:
    """The mock demands the key in x-api-key (the calls above pass); with a wrong key the
    upstream's 401 is our 502, naming neither key."""
    http, tenant, settings = broker
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": ALIAS, "messages": MESSAGES, "max_tokens": 2},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 200
    wrong = "sk-ant-wrong-" + "w" * 24
    configure(openai_max_retries=0, model_routes={ALIAS: route(base_url=mock.url, api_key=wrong)})
    refused = await http.post(
        "/v1/chat/completions",
        json={"model": ALIAS, "messages": MESSAGES, "max_tokens": 2},
        headers=tenant.key_auth,
    )
    assert refused.status_code == 502
    assert "credentials" in refused.json()["error"]["message"]
    assert wrong not in refused.text
    assert KEY not in refused.text
    assert mock.stats()["by_outcome"] == {"ok": 1, "401": 1}
    rows = await ledger_rows(settings)
    assert [r["status"] for r in rows] == ["success", "upstream_error"]


async def test_unusable_answers_are_not_retried_and_charged_at_the_bound(
    broker: Any, mock: MockUpstream
) -> None:
    """A malformed 200 and an answer over the size limit are 502s after one upstream call
    each (retries configured), ledgered at the bound, never $0."""
    http, tenant, settings = broker
    mock.enqueue({"malformed": True}, {"oversize_bytes": 9 * 1024 * 1024})
    body = {"model": ALIAS, "messages": MESSAGES, "max_tokens": 5}
    for reason in ("malformed JSON", "exceeds"):
        reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
        assert reply.status_code == 502, reply.text
        assert reason in reply.json()["error"]["message"]
    assert mock.stats()["by_outcome"] == {"malformed": 1, "oversize": 1}
    rows = await ledger_rows(settings)
    prompt = chat_bound(MESSAGES, 5, False)
    assert [(r["status"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        ("upstream_bad_response", prompt, 5)
    ] * 2
    assert [r["cost_usd"] for r in rows] == [at_bound(prompt, 5)] * 2


async def test_messages_cache_breakpoints_reach_the_anthropic_upstream(
    broker: Any, mock: MockUpstream
) -> None:
    """A Messages client's cache_control on system, text, tool result and tool blocks stays
    on those blocks upstream; the cache write it causes is priced as one."""
    http, tenant, settings = broker
    client = messages_sdk(http, tenant)
    mock.enqueue({"cache": {"write": 12}})
    await client.messages.create(
        model=ALIAS,
        max_tokens=3,
        system=[
            {"type": "text", "text": "Regras longas da casa"},
            {"type": "text", "text": "Mais regras", "cache_control": {"type": "ephemeral"}},
        ],
        tools=[
            {
                "name": "lookup",
                "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral", "ttl": "5m"},
            }
        ],
        messages=[
            {"role": "user", "content": "procure"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "achado",
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "text", "text": "e agora?", "cache_control": {"type": "ephemeral"}},
                ],
            },
        ],
    )
    sent = last(mock)
    assert sent["system"] == [
        {"type": "text", "text": "Regras longas da casa"},
        {"type": "text", "text": "Mais regras", "cache_control": EPHEMERAL},
    ]
    assert sent["tools"][0]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    result, text = sent["messages"][2]["content"]
    assert result["type"] == "tool_result"
    assert result["content"] == [{"type": "text", "text": "achado", "cache_control": EPHEMERAL}]
    assert text == {"type": "text", "text": "e agora?", "cache_control": EPHEMERAL}
    [row] = await ledger_rows(settings)
    assert row["cache_write_tokens"] == 12
    assert ledgered([row]) == billed(mock)


async def test_cache_breakpoints_are_not_sent_to_an_openai_upstream(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """OpenAI-compatible upstreams cache on their own and know no cache_control: the same
    Messages request reaches them without it."""
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url, openai_max_retries=0)
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    tenant = await create_tenant(current)
    client = messages_sdk(http, tenant)
    await client.messages.create(
        model="gpt-4.1-nano",
        max_tokens=3,
        system=[{"type": "text", "text": "Regras", "cache_control": {"type": "ephemeral"}}],
        tools=[{"name": "lookup", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}],
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "oi", "cache_control": EPHEMERAL}],
            }
        ],
    )
    sent = last(mock)
    assert "cache_control" not in orjson.dumps(sent).decode()
    assert sent["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "Regras"}],
    }
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "oi"}]


async def test_count_tokens_is_counted_by_the_anthropic_upstream(
    broker: Any, mock: MockUpstream
) -> None:
    """count_tokens on an Anthropic route asks the upstream's own count_tokens (no max_tokens,
    the beta header along): exactly what /v1/messages is then billed; nothing is ledgered for
    the count; when the upstream cannot answer, the estimate serves and says so."""
    http, tenant, settings = broker
    client = messages_sdk(http, tenant)
    request: Any = {
        "model": ALIAS,
        "system": "Seja breve",
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "Explique seguros de vida"}],
    }
    beta = {"anthropic-beta": "token-counting-2024-11-01"}
    raw = await client.messages.with_raw_response.count_tokens(**request, extra_headers=beta)
    counted = (await raw.parse()).input_tokens
    assert raw.headers["x-bradax-token-count"] == "upstream"
    assert set(last(mock)) == {"model", "system", "messages", "tools"}
    assert last(mock, "headers")["anthropic-beta"] == beta["anthropic-beta"]
    await client.messages.create(**request, max_tokens=2)
    [call] = [c for c in mock.stats()["calls"] if c["outcome"] == "ok"]
    assert call["prompt_tokens"] == counted
    assert len(await ledger_rows(settings)) == 1  # the message, not the count
    mock.enqueue({"status": 500}, {"status": 500}, {"status": 500})
    fallback = await http.post(
        "/v1/messages/count_tokens", json=request, headers={"x-api-key": tenant.api_key}
    )
    assert fallback.status_code == 200, fallback.text
    assert fallback.headers["x-bradax-token-count"] == "estimate"
    assert fallback.json()["input_tokens"] > 0
    assert mock.stats()["by_outcome"]["500"] == 3  # tried as any call is, then estimated


async def test_a_one_hour_cache_write_needs_a_route_priced_for_it(
    broker: Any, configure: Any, mock: MockUpstream
) -> None:
    """A one-hour cache write bills twice the input price: on a route whose cache-write price
    is set for five-minute writes (1.25x) it is refused before admission; a route priced at
    2x takes it to the upstream."""
    http, tenant, _ = broker
    request: Any = {
        "model": ALIAS,
        "max_tokens": 2,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "oi",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    }
                ],
            }
        ],
    }
    headers = {"x-api-key": tenant.api_key}
    refused = await http.post("/v1/messages", json=request, headers=headers)
    assert refused.status_code == 400, refused.text
    assert "messages[0].content[0].cache_control.ttl" in refused.text
    assert mock.stats()["requests"] == 0
    configure(
        openai_max_retries=0,
        model_routes={ALIAS: route(base_url=mock.url, cache_write_per_1m="2")},
    )
    served = await http.post("/v1/messages", json=request, headers=headers)
    assert served.status_code == 200, served.text
    assert last(mock)["messages"][0]["content"][0]["cache_control"]["ttl"] == "1h"
