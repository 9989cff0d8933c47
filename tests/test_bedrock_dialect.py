"""The Bedrock dialect end to end: the official SDKs against the broker, whose route speaks
Converse (SigV4-signed, or with a Bedrock API key) to the mock, answers translated back and
ledgered exactly as the mock billed, at the route's prices (cache reads and writes apart)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from common.bedrock_dialect import reset_credentials
from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, ledger_rows, login, tokens

MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
PROFILE = "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.anthropic.claude-v1:0"
ALIAS, KEYED, ARN = "claude-br", "claude-br-key", "claude-br-arn"
ACCESS = "AKIDBROKERTEST00"
SECRET = "broker-test-secret-0123456789abcdef"
KEY = "bedrock-api-key-0123456789abcdef"
PRICES = {
    "input_per_1m": "3",
    "output_per_1m": "15",
    "cache_read_per_1m": "0.30",
    "cache_write_per_1m": "3.75",
}
MILLION = Decimal(1_000_000)
CHAT = [{"role": "user", "content": "Explique seguros"}]
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "description": "busca", "parameters": {"type": "object"}},
}


def cost(prompt: int, completion: int, read: int = 0, write: int = 0) -> Decimal:
    """What the route's prices make of these tokens (cache reads and writes apart)."""
    plain = prompt - read - write
    return (
        plain * Decimal(3) + read * Decimal("0.30") + write * Decimal("3.75") + completion * 15
    ) / MILLION


def at_bound(prompt: int, completion: int) -> Decimal:
    """A call charged at its bound: every prompt token at the dearest prompt price (writes)."""
    return (prompt * Decimal("3.75") + completion * 15) / MILLION


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """The AWS credential chain of these tests: the environment's test keys, nothing else
    (no shared files, no instance metadata)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    reset_credentials()
    yield
    reset_credentials()


def broker_settings(mock: MockUpstream, **overrides: Any) -> dict[str, Any]:
    """Settings with three Bedrock routes over the mock (SigV4 in eu-west-1, an API key, an
    inference-profile ARN)."""
    route = {"provider": "bedrock", "base_url": mock.root, "region": "eu-west-1", **PRICES}
    return {
        "openai_api_key": "mock-key",
        "openai_base_url": mock.url,
        "openai_max_retries": 1,
        "model_routes": {
            ALIAS: {**route, "upstream_model": MODEL},
            KEYED: {**route, "upstream_model": MODEL, "api_key": KEY},
            ARN: {**route, "upstream_model": PROFILE},
        },
        **overrides,
    }


@pytest.fixture
async def broker(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    """The broker in-process over the mock's Bedrock API, the mock verifying signatures and
    the key."""
    mock.configure(
        models=[MODEL, PROFILE],
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        api_key=KEY,
    )
    current = configure(**broker_settings(mock))
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    tenant = await create_tenant(current, allowed_models=(ALIAS, KEYED, ARN))
    return http, await login(http, tenant), current


def sdk(http: httpx2.AsyncClient, tenant: Tenant) -> openai.AsyncOpenAI:
    """The openai SDK on the broker's /v1."""
    return openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=tenant.api_key, http_client=http, max_retries=0
    )


def billed(mock: MockUpstream) -> list[tuple[str, int, int, int, int, Decimal]]:
    """(request id, prompt, completion, cache read, cache write, price) of each call the mock
    answered."""
    return [
        (c["request_id"], *tokens(c), cost(*tokens(c)))
        for c in mock.stats()["calls"]
        if c["outcome"] == "ok" and c["protocol"] == "bedrock"
    ]


def ledgered(rows: list[dict[str, Any]]) -> list[tuple[str, int, int, int, int, Decimal]]:
    """The same, from ledger rows."""
    return [(r["request_id"], *tokens(r), r["cost_usd"]) for r in rows]


def last(mock: MockUpstream, what: str) -> Any:
    """The mock's last request body or headers."""
    return httpx2.get(f"{mock.root}/_mock/last_{what}").json()


def script(mock: MockUpstream, **reply: Any) -> None:
    """Script the mock's next answers."""
    httpx2.post(mock.root + "/_mock/reply", json=reply).raise_for_status()


async def test_chat_is_signed_translated_and_metered(broker: Any, mock: MockUpstream) -> None:
    """A chat call becomes a SigV4-signed Converse request (verified by the mock) whose
    answer comes back as a chat completion, ledgered exactly as the mock billed."""
    http, tenant, settings = broker
    answer = await sdk(http, tenant).chat.completions.create(
        model=ALIAS,
        messages=[{"role": "system", "content": "Seja breve"}, *CHAT],
        max_tokens=5,
        temperature=0.2,
        top_p=0.9,
        stop=["FIM"],
        user="u-1",
    )
    assert answer.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert answer.choices[0].finish_reason == "length"
    assert answer.model == ALIAS
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (15, 5)
    assert last(mock, "request") == {
        "messages": [{"role": "user", "content": [{"text": "Explique seguros"}]}],
        "system": [{"text": "Seja breve"}],
        "inferenceConfig": {
            "maxTokens": 5,
            "temperature": 0.2,
            "topP": 0.9,
            "stopSequences": ["FIM"],
        },
    }
    headers = last(mock, "headers")
    assert headers["authorization-scope"].endswith("/eu-west-1/bedrock/aws4_request")
    assert (headers["user-agent"], headers["content-type"]) == ("bradax/1.0", "application/json")
    rows = await ledger_rows(settings)
    assert headers["x-request-id"] == rows[0]["request_id"]
    assert ledgered(rows) == billed(mock)
    assert rows[0]["cost_usd"] == cost(15, 5) == Decimal("0.00012")
    assert [c["protocol"] for c in mock.stats()["calls"]] == ["bedrock"]


async def test_an_inference_profile_arn_is_signed_as_sent(broker: Any, mock: MockUpstream) -> None:
    """A model id with ':' and '/' (an ARN) is quoted in the path so that what is signed is
    what is sent: the mock's verification passes and sees the model."""
    http, tenant, settings = broker
    answer = await sdk(http, tenant).chat.completions.create(model=ARN, messages=CHAT, max_tokens=2)
    assert answer.choices[0].message.content == "w0 w1"
    assert mock.stats()["calls"][-1]["model"] == PROFILE
    assert ledgered(await ledger_rows(settings)) == billed(mock)


async def test_an_api_key_travels_as_a_bearer_token_and_never_in_errors(
    broker: Any, mock: MockUpstream
) -> None:
    """A route's api_key is sent as `Authorization: Bearer` (no signature); an upstream that
    refuses it is a 502, and an error echoing the headers never shows the key."""
    http, tenant, _ = broker
    client = sdk(http, tenant)
    answer = await client.chat.completions.create(model=KEYED, messages=CHAT, max_tokens=3)
    assert answer.choices[0].message.content == "w0 w1 w2"
    assert "authorization-scope" not in last(mock, "headers")
    mock.configure(api_key="another-key-0123456789abcdef")
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": KEYED, "messages": CHAT, "max_tokens": 3},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 502
    assert "credentials" in reply.json()["error"]["message"]
    mock.configure(api_key=KEY)
    mock.enqueue({"status": 400, "echo_headers": True})
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": KEYED, "messages": CHAT, "max_tokens": 3},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 400
    assert KEY not in reply.text
    assert KEY not in str(reply.headers)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_streamed_chat_is_translated_and_metered(
    broker: Any, mock: MockUpstream, include_usage: bool
) -> None:
    """A streamed call reads the AWS event stream into chat chunks: the role, the words, the
    finish reason, the usage chunk only when asked; the ledger holds the mock's usage."""
    http, tenant, settings = broker
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await sdk(http, tenant).chat.completions.create(
        model=ALIAS, messages=CHAT, max_tokens=4, stream=True, **extra
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    usages = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert [(u.prompt_tokens, u.completion_tokens) for u in usages] == [(9, 4)]
    else:
        assert usages == []
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)
    assert (rows[0]["status"], rows[0]["streamed"], rows[0]["cost_usd"]) == (
        "success",
        True,
        cost(9, 4),
    )


async def test_tools_map_both_ways(broker: Any, mock: MockUpstream) -> None:
    """tools, tool_choice and a tool-call history become toolConfig, toolUse and toolResult
    blocks (turns merged); a toolUse answer comes back as a chat tool call."""
    http, tenant, settings = broker
    script(mock, text="", tool_arguments='{"q": "vida"}')
    answer = await sdk(http, tenant).chat.completions.create(
        model=ALIAS,
        max_tokens=50,
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        messages=[
            {"role": "user", "content": "procure"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "nada"},
            {"role": "user", "content": "e agora?"},
        ],
    )
    sent = last(mock, "request")
    assert sent["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "lookup",
                    "description": "busca",
                    "inputSchema": {"json": {"type": "object"}},
                }
            }
        ],
        "toolChoice": {"tool": {"name": "lookup"}},
    }
    assert sent["messages"] == [
        {"role": "user", "content": [{"text": "procure"}]},
        {
            "role": "assistant",
            "content": [{"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {}}}],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "t1", "content": [{"text": "nada"}]}},
                {"text": "e agora?"},
            ],
        },
    ]
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]
    assert calls == [("tooluse_mock", "lookup", '{"q":"vida"}')]
    assert ledgered(await ledger_rows(settings)) == billed(mock)


async def test_streamed_tool_calls_are_chat_tool_call_deltas(
    broker: Any, mock: MockUpstream
) -> None:
    """A streamed toolUse block becomes tool_calls deltas: index, id, name, then the JSON
    input in pieces; the finish reason is tool_calls."""
    http, tenant, settings = broker
    script(mock, text="vou ver", tool_arguments='{"q": "vida"}', chunk_chars=4)
    stream = await sdk(http, tenant).chat.completions.create(
        model=ALIAS, messages=CHAT, max_tokens=50, tools=[TOOL], tool_choice="required", stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert last(mock, "request")["toolConfig"]["toolChoice"] == {"any": {}}
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "vou ver"
    calls = [call for d in deltas for call in d.tool_calls or ()]
    assert (calls[0].index, calls[0].id, calls[0].function.name) == (0, "tooluse_mock", "lookup")
    assert "".join(c.function.arguments or "" for c in calls) == '{"q": "vida"}'
    assert [c.index for c in calls] == [0] * 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert ledgered(await ledger_rows(settings)) == billed(mock)


@pytest.mark.parametrize("stream", [False, True])
async def test_cache_reads_and_writes_are_priced_apart(
    broker: Any, mock: MockUpstream, stream: bool
) -> None:
    """Prompt tokens Bedrock reports as cache reads and writes (outside its inputTokens) are
    part of the prompt billed, each at its own price."""
    http, tenant, settings = broker
    mock.enqueue({"cache": {"read": 6, "write": 2}})
    body = {"model": ALIAS, "messages": CHAT, "max_tokens": 3, "stream": stream}
    reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert reply.status_code == 200
    if not stream:
        usage = reply.json()["usage"]
        assert (usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]) == (9, 6)
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)
    assert (rows[0]["prompt_tokens"], rows[0]["cache_read_tokens"]) == (9, 6)
    assert rows[0]["cache_write_tokens"] == 2
    assert rows[0]["cost_usd"] == cost(9, 3, 6, 2) == Decimal("0.0000573")


@pytest.mark.parametrize("stream", [False, True])
async def test_the_messages_face_speaks_to_bedrock(
    broker: Any, mock: MockUpstream, stream: bool
) -> None:
    """The anthropic SDK's messages.create / messages.stream over a Bedrock route."""
    http, tenant, settings = broker
    client = anthropic.AsyncAnthropic(
        base_url="http://broker", http_client=http, max_retries=0, api_key=tenant.api_key
    )
    request: dict[str, Any] = {
        "model": ALIAS,
        "max_tokens": 3,
        "system": "Seja breve",
        "messages": [{"role": "user", "content": "Explique seguros"}],
    }
    if stream:
        async with client.messages.stream(**request) as events:
            final = await events.get_final_message()
    else:
        final = await client.messages.create(**request)
    assert [block.text for block in final.content if block.type == "text"] == ["w0 w1 w2"]
    assert (final.stop_reason, final.usage.output_tokens) == ("max_tokens", 3)
    assert last(mock, "request")["system"] == [{"text": "Seja breve"}]
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)
    assert rows[0]["cost_usd"] == cost(15, 3)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_responses_face_speaks_to_bedrock(
    broker: Any, mock: MockUpstream, stream: bool
) -> None:
    """The openai SDK's responses.create (plain and streamed) over a Bedrock route."""
    http, tenant, settings = broker
    client = sdk(http, tenant)
    request: dict[str, Any] = {
        "model": ALIAS,
        "instructions": "Seja breve",
        "input": "Explique seguros",
        "max_output_tokens": 20,  # the whole reply: a capped one is incomplete
    }
    if stream:
        async with client.responses.stream(**request) as events:
            final = await events.get_final_response()
    else:
        final = await client.responses.create(**request)
    assert final.output_text == " ".join(f"w{i}" for i in range(12))
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (15, 12)
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)
    assert rows[0]["cost_usd"] == cost(15, 12)


@pytest.mark.parametrize(
    "behaviour",
    [
        {"cut_after_chunks": 2},
        {"stream_error": "modelStreamErrorException", "cut_after_chunks": 2},
        {"stream_error": "throttlingException"},
        {"malformed": True},
    ],
)
async def test_an_unfinished_stream_is_charged_at_its_bound(
    broker: Any, mock: MockUpstream, behaviour: dict[str, Any]
) -> None:
    """A stream cut mid-message, stopped by an exception message or carrying a message whose
    CRC fails never completes: charged at its bound (the hidden tool prompt included), not
    at what was seen, never $0."""
    http, tenant, settings = broker
    mock.enqueue(behaviour)
    body = {"model": ALIAS, "messages": CHAT, "max_tokens": 10, "stream": True, "tools": [TOOL]}
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers=tenant.key_auth
    ) as reply:
        lines = [line async for line in reply.aiter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in "".join(lines)
    assert "upstream_stream_cut" in lines[-1]
    rows = await ledger_rows(settings)
    assert [(r["status"], r["completion_tokens"]) for r in rows] == [("cut", 10)]
    prompt = rows[0]["prompt_tokens"]
    assert prompt > 1000 + mock.stats()["calls"][-1]["prompt_tokens"]
    assert rows[0]["cache_write_tokens"] == prompt  # the dearest split
    assert rows[0]["cost_usd"] == at_bound(prompt, 10)


async def test_a_stream_message_over_the_limit_ends_the_stream(
    broker: Any, mock: MockUpstream, configure: Any
) -> None:
    """An event-stream message longer than UPSTREAM_MAX_EVENT_BYTES ends the stream as
    oversize (an error event, never relayed), charged at its bound."""
    http, tenant, _ = broker
    current = configure(**broker_settings(mock, upstream_max_event_bytes=4096))
    mock.enqueue({"oversize_bytes": 10_000})
    body = {"model": ALIAS, "messages": CHAT, "max_tokens": 3, "stream": True}
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers=tenant.key_auth
    ) as reply:
        text = "".join([part async for part in reply.aiter_text()])
    assert "upstream_stream_oversize" in text
    assert "xxxx" not in text
    rows = await ledger_rows(current)
    assert [(r["status"], r["http_status"], r["completion_tokens"]) for r in rows] == [
        ("oversize", 502, 3)
    ]
    assert rows[0]["cost_usd"] == at_bound(rows[0]["prompt_tokens"], 3)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "usage",
    [
        {"inputTokens": -1, "outputTokens": 3, "totalTokens": 2},
        {"inputTokens": 10**12, "outputTokens": 3, "totalTokens": 10**12 + 3},
        {"inputTokens": 9, "outputTokens": "3", "totalTokens": 12},
        "absent",
    ],
)
async def test_lying_usage_is_charged_at_the_bound(
    broker: Any, mock: MockUpstream, usage: object, stream: bool
) -> None:
    """Negative, huge, mistyped or absent usage: the answer is served, the call charged at
    its bound."""
    http, tenant, settings = broker
    mock.enqueue({"usage": usage})
    body = {"model": ALIAS, "messages": CHAT, "max_tokens": 3, "stream": stream}
    reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert reply.status_code == 200
    if stream:
        assert '"content":"w0"' in reply.text
        assert '"content":" w2"' in reply.text
    else:
        assert reply.json()["choices"][0]["message"]["content"] == "w0 w1 w2"
    rows = await ledger_rows(settings)
    assert [(r["status"], r["completion_tokens"]) for r in rows] == [("usage_unverified", 3)]
    prompt = rows[0]["prompt_tokens"]
    assert prompt > 9 + 16
    assert rows[0]["cost_usd"] == at_bound(prompt, 3)


async def test_a_throttle_is_retried(broker: Any, mock: MockUpstream) -> None:
    """A 429 ThrottlingException is retried; the second answer is served and ledgered."""
    http, tenant, settings = broker
    mock.enqueue({"status": 429, "retry_after": 0})
    answer = await sdk(http, tenant).chat.completions.create(
        model=ALIAS, messages=CHAT, max_tokens=2
    )
    assert answer.choices[0].message.content == "w0 w1"
    assert [c["outcome"] for c in mock.stats()["calls"]] == ["429", "ok"]
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock)


async def test_an_upstream_400_is_a_400_without_its_body(broker: Any, mock: MockUpstream) -> None:
    """A ValidationException is our 400 naming only the error type, never its message."""
    http, tenant, settings = broker
    mock.enqueue({"status": 400})
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(http, tenant).chat.completions.create(model=ALIAS, messages=CHAT, max_tokens=2)
    assert caught.value.code == "upstream_bad_request"
    assert "ValidationException" in caught.value.message
    assert "Mock error" not in str(caught.value.body)
    assert [r["cost_usd"] for r in await ledger_rows(settings)] == [Decimal(0)]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"seed": 7}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"parallel_tool_calls": False, "tools": [TOOL]}, "parallel_tool_calls"),
        ({"tools": [TOOL], "tool_choice": "none"}, "tool_choice"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "veja"},
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                        ],
                    }
                ]
            },
            "messages[0].content[1]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
    ],
)
async def test_unmappable_features_are_refused_before_the_upstream(
    broker: Any, mock: MockUpstream, extra: dict[str, Any], param: str
) -> None:
    """A feature Converse cannot carry is a 400 naming it, before admission: no upstream
    request, no ledger row."""
    http, tenant, settings = broker
    body = {"model": ALIAS, "messages": CHAT, "max_tokens": 5, **extra}
    reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("parameter_not_supported", param)
    assert "Bedrock" in error["message"]
    assert mock.stats()["requests"] == 0
    assert await ledger_rows(settings) == []


async def test_a_data_image_becomes_an_image_block(broker: Any, mock: MockUpstream) -> None:
    """A base64 data: image part is sent as its bytes with its format (its detail dropped)."""
    http, tenant, settings = broker
    picture = "iVBORw0KGgo="
    await sdk(http, tenant).chat.completions.create(
        model=ALIAS,
        max_tokens=2,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "veja"},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{picture}", "detail": "low"},
                    },
                ],
            }
        ],
    )
    assert last(mock, "request")["messages"][0]["content"] == [
        {"text": "veja"},
        {"image": {"format": "png", "source": {"bytes": picture}}},
    ]
    assert ledgered(await ledger_rows(settings)) == billed(mock)


async def test_no_aws_credentials_is_a_503_before_any_request(
    broker: Any, mock: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without credentials anywhere in the AWS chain a signed route answers 503 naming the
    problem, sends nothing and charges nothing."""
    http, tenant, settings = broker
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    reset_credentials()
    body = {"model": ALIAS, "messages": CHAT, "max_tokens": 2}
    reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "upstream_credentials_missing"
    assert mock.stats()["requests"] == 0
    assert [r["cost_usd"] for r in await ledger_rows(settings)] == [Decimal(0)]


async def test_a_slow_credential_lookup_does_not_block_other_requests(
    broker: Any, mock: MockUpstream, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Credentials from a `credential_process` that takes a second: the signed call waits for
    them, the broker's other requests do not (the request is built off the event loop)."""
    http, tenant, _ = broker
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    issued = {"Version": 1, "AccessKeyId": ACCESS, "SecretAccessKey": SECRET}
    script = tmp_path / "creds.py"
    script.write_text(f"import json, time\ntime.sleep(1.0)\nprint(json.dumps({issued!r}))\n")
    (tmp_path / "config").write_text(f"[default]\ncredential_process = {sys.executable} {script}\n")
    reset_credentials()

    async def signed() -> tuple[int, float]:
        started = time.monotonic()
        body = {"model": ALIAS, "messages": CHAT, "max_tokens": 2}
        reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
        return reply.status_code, time.monotonic() - started

    async def meanwhile() -> list[float]:
        """How late each of a few requests, due every 0.2 s, was answered."""
        began = time.monotonic()
        late = []
        for n in range(1, 5):
            await asyncio.sleep(max(0.0, began + 0.2 * n - time.monotonic()))
            listed = await http.get("/v1/models", headers=tenant.key_auth)
            assert listed.status_code == 200
            late.append(time.monotonic() - (began + 0.2 * n))
        return late

    (status, waited), others = await asyncio.gather(signed(), meanwhile())
    assert status == 200
    assert waited >= 1.0
    assert max(others) < 0.5, others


async def test_cache_breakpoints_become_cache_points(broker: Any, mock: MockUpstream) -> None:
    """A Messages client's cache_control on system, tool, text and tool-result blocks is a
    Converse cachePoint after each; the cache write it causes is priced as one."""
    http, tenant, settings = broker
    client = anthropic.AsyncAnthropic(
        base_url="http://broker", http_client=http, max_retries=0, api_key=tenant.api_key
    )
    point = {"cachePoint": {"type": "default"}}
    hint: Any = {"type": "ephemeral"}
    mock.enqueue({"cache": {"write": 9}})
    await client.messages.create(
        model=ALIAS,
        max_tokens=3,
        system=[{"type": "text", "text": "Regras da casa", "cache_control": hint}],
        tools=[{"name": "lookup", "input_schema": {"type": "object"}, "cache_control": hint}],
        messages=[
            {"role": "user", "content": "procure"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "achado"},
                    {"type": "text", "text": "e agora?", "cache_control": hint},
                ],
            },
        ],
    )
    sent = last(mock, "request")
    assert sent["system"] == [{"text": "Regras da casa"}, point]
    assert sent["toolConfig"]["tools"][1] == point
    assert sent["messages"][2]["content"][-2:] == [{"text": "e agora?"}, point]
    [row] = await ledger_rows(settings)
    assert row["cache_write_tokens"] == 9
    assert ledgered([row]) == billed(mock)
