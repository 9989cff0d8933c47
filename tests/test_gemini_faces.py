"""The Anthropic Messages and OpenAI Responses faces over a Gemini upstream: each SDK against
the broker, the mock speaking generateContent, answers and tool calls translated both ways
and the ledger exactly what the mock billed at the route's prices."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import openai
import pytest

from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, ledger_rows, tokens
from tests.test_gemini_dialect import ALIAS, calls, price, sent, start_broker

TOOL_RESULT = {"functionResponse": {"name": "lookup", "response": {"result": "nada"}}}


@pytest.fixture
async def broker(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    """The broker over the mock's Gemini protocol, with one project logged in."""
    return await start_broker(configure, mock, router)


def claude(http: httpx2.AsyncClient, tenant: Tenant) -> anthropic.AsyncAnthropic:
    """The official anthropic client on the broker."""
    return anthropic.AsyncAnthropic(
        base_url="http://broker", http_client=http, max_retries=0, api_key=tenant.api_key
    )


def responses(http: httpx2.AsyncClient, tenant: Tenant) -> openai.AsyncOpenAI:
    """The official openai client on the broker's /v1."""
    return openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=tenant.api_key, http_client=http, max_retries=0
    )


async def ledgered_as_billed(settings: Settings, mock: MockUpstream) -> list[dict[str, Any]]:
    """The ledger rows, checked to be exactly the mock's billed calls at the route's prices."""
    rows = await ledger_rows(settings)
    billed = [
        (c["request_id"], c["prompt_tokens"], c["completion_tokens"], c["cache_read_tokens"])
        for c in calls(mock)
    ]
    assert [(r["request_id"], *tokens(r)[:3]) for r in rows] == billed
    for row in rows:
        assert row["cost_usd"] == price(*tokens(row))
        assert row["cost_usd"] > 0
    return rows


async def test_messages_create_over_gemini(broker: Any, mock: MockUpstream) -> None:
    """messages.create: system, blocks and stop_sequences reach Gemini translated; the answer
    is a message with the mock's text, max_tokens stop and usage, ledgered as billed."""
    http, tenant, settings = broker
    answer = await claude(http, tenant).messages.create(
        model=ALIAS,
        max_tokens=5,
        system="Seja breve",
        stop_sequences=["FIM"],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Explique seguros"}]}],
    )
    assert [block.type for block in answer.content] == ["text"]
    assert answer.content[0].text == "w0 w1 w2 w3 w4"  # type: ignore[union-attr]
    assert answer.stop_reason == "max_tokens"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (15, 5)
    request = sent(mock)
    assert request["systemInstruction"] == {"parts": [{"text": "Seja breve"}]}
    assert request["generationConfig"] == {"maxOutputTokens": 5, "stopSequences": ["FIM"]}
    rows = await ledgered_as_billed(settings, mock)
    assert [tokens(r) for r in rows] == [(15, 5, 0, 0)]


async def test_messages_tools_over_gemini(broker: Any, mock: MockUpstream) -> None:
    """tool_use and tool_result blocks become functionCall and functionResponse parts; the
    mock's functionCall comes back as a tool_use block, stop_reason tool_use."""
    http, tenant, settings = broker
    script = {"text": "", "tool_arguments": '{"q": "vida"}'}
    httpx2.post(mock.root + "/_mock/reply", json=script).raise_for_status()
    answer = await claude(http, tenant).messages.create(
        model=ALIAS,
        max_tokens=50,
        tools=[{"name": "lookup", "description": "busca", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any"},
        messages=[
            {"role": "user", "content": "procure"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "nada"}],
            },
        ],
    )
    request = sent(mock)
    assert request["contents"] == [
        {"role": "user", "parts": [{"text": "procure"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {}}}]},
        {"role": "user", "parts": [TOOL_RESULT]},
    ]
    assert request["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    uses = [block for block in answer.content if block.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [("call_0", "lookup", {"q": "vida"})]
    assert answer.stop_reason == "tool_use"
    await ledgered_as_billed(settings, mock)


async def test_messages_stream_over_gemini(broker: Any, mock: MockUpstream) -> None:
    """messages.stream: events from message_start to message_stop, the text accumulated and
    the final usage, ledgered as billed."""
    http, tenant, settings = broker
    kinds: list[str] = []
    async with claude(http, tenant).messages.stream(
        model=ALIAS, max_tokens=4, messages=[{"role": "user", "content": "Explique seguros"}]
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert (kinds[0], kinds[-1]) == ("message_start", "message_stop")
    assert final.content[0].text == "w0 w1 w2 w3"  # type: ignore[union-attr]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)
    rows = await ledgered_as_billed(settings, mock)
    assert [(r["status"], r["streamed"]) for r in rows] == [("success", True)]


async def test_responses_create_over_gemini(broker: Any, mock: MockUpstream) -> None:
    """responses.create: instructions and input become Gemini's system instruction and
    contents; the response carries the text and usage, ledgered as billed."""
    http, tenant, settings = broker
    answer = await responses(http, tenant).responses.create(
        model=ALIAS,
        instructions="Seja breve",
        input="Explique seguros de vida",
        max_output_tokens=5,
        temperature=0,
    )
    assert answer.output_text == "w0 w1 w2 w3 w4"
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (17, 5)
    request = sent(mock)
    assert request["contents"] == [
        {"role": "user", "parts": [{"text": "Explique seguros de vida"}]}
    ]
    assert request["generationConfig"] == {"maxOutputTokens": 5, "temperature": 0}
    await ledgered_as_billed(settings, mock)


async def test_responses_tools_over_gemini(broker: Any, mock: MockUpstream) -> None:
    """function_call and function_call_output items become functionCall and functionResponse
    parts (a strict function tool keeps its schema); the mock's call comes back as an item."""
    http, tenant, settings = broker
    script = {"text": "", "tool_arguments": '{"q": "vida"}'}
    httpx2.post(mock.root + "/_mock/reply", json=script).raise_for_status()
    answer = await responses(http, tenant).responses.create(
        model=ALIAS,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "procure"}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "nada"},
        ],
        tools=[
            {
                "type": "function",
                "name": "lookup",
                "parameters": {"type": "object"},
                "strict": True,
            }
        ],
        tool_choice="auto",
    )
    request = sent(mock)
    assert request["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {}}}]},
        {"role": "user", "parts": [TOOL_RESULT]},
    ]
    assert request["tools"] == [
        {"functionDeclarations": [{"name": "lookup", "parametersJsonSchema": {"type": "object"}}]}
    ]
    assert request["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    found = [item for item in answer.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in found] == [
        ("call_0", "lookup", '{"q":"vida"}')
    ]
    await ledgered_as_billed(settings, mock)


async def test_responses_stream_over_gemini(broker: Any, mock: MockUpstream) -> None:
    """responses.create(stream=True): created, text deltas and, the cap reached, incomplete
    with the usage the ledger holds."""
    http, tenant, settings = broker
    stream = await responses(http, tenant).responses.create(
        model=ALIAS, input="Explique seguros de vida", max_output_tokens=4, stream=True
    )
    kinds: list[str] = []
    text = ""
    usage = None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.incomplete":
            usage = event.response.usage
    assert (kinds[0], kinds[-1]) == ("response.created", "response.incomplete")
    assert text == "w0 w1 w2 w3"
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (11, 4)
    rows = await ledgered_as_billed(settings, mock)
    assert [(r["status"], r["streamed"]) for r in rows] == [("success", True)]


async def test_responses_cut_stream_over_gemini_fails(broker: Any, mock: MockUpstream) -> None:
    """A Responses stream Gemini cuts ends in response.failed, charged at its bound."""
    http, tenant, settings = broker
    mock.enqueue({"cut_after_chunks": 1})
    async with http.stream(
        "POST",
        "/v1/responses",
        json={"model": ALIAS, "input": "oi", "max_output_tokens": 10, "stream": True},
        headers=tenant.key_auth,
    ) as reply:
        events = [line async for line in reply.aiter_lines() if line.startswith("event: ")]
    assert (events[0], events[-1]) == ("event: response.created", "event: response.failed")
    rows = await ledger_rows(settings)
    assert [(r["status"], r["completion_tokens"]) for r in rows] == [("cut", 10)]
    assert rows[0]["cost_usd"] > price(calls(mock)[0]["prompt_tokens"], 1)
