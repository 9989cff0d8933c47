"""The Anthropic Messages face: the official anthropic SDK against the broker over the mock
(translated to chat completions), its error shape, auth headers and exact usage."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import httpx2
import pytest

from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, ledger_rows, login
from tests.test_faces import billed, ledgered, list_price

MODEL = "gpt-4.1-nano"


@pytest.fixture
async def broker(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    """The broker in-process over the mock upstream, with one project logged in."""
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url, openai_max_retries=0)
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    return http, await login(http, await create_tenant(current)), current


def sdk(http: httpx2.AsyncClient, tenant: Tenant, **auth: Any) -> anthropic.AsyncAnthropic:
    """The official async client on the broker (x-api-key unless `auth` says otherwise)."""
    credentials = auth or {"api_key": tenant.api_key}
    return anthropic.AsyncAnthropic(
        base_url="http://broker", http_client=http, max_retries=0, **credentials
    )


async def test_messages_create_is_translated_and_metered(broker: Any, mock: MockUpstream) -> None:
    """messages.create (system, blocks, stop_sequences) answers a message whose usage and
    ledger row are exactly what the mock billed for the chat call it became."""
    http, tenant, settings = broker
    client = sdk(http, tenant)
    answer = await client.messages.create(
        model=MODEL,
        max_tokens=5,
        system="Seja breve",
        stop_sequences=["FIM"],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Explique seguros"}]}],
    )
    assert answer.type == "message"
    assert answer.model == MODEL
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "w0 w1 w2 w3 w4"
    assert answer.stop_reason == "max_tokens"
    # 3 + (4 + 2) + (4 + 2) words: the mock's count for the two chat messages
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (15, 5)
    sent = httpx2.get(mock.root + "/_mock/last_request").json()
    assert sent["messages"] == [
        {"role": "system", "content": "Seja breve"},
        {"role": "user", "content": [{"type": "text", "text": "Explique seguros"}]},
    ]
    assert (sent["stop"], sent["max_completion_tokens"]) == (["FIM"], 5)
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock, MODEL)
    assert rows[0]["cost_usd"] == list_price(MODEL, 15, 5)


async def test_bearer_auth_is_accepted_too(broker: Any) -> None:
    """Authorization: Bearer (the SDK's auth_token) works as well as x-api-key."""
    http, tenant, _ = broker
    client = sdk(http, tenant, auth_token=tenant.access_token)
    answer = await client.messages.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "oi"}]
    )
    assert answer.usage.output_tokens == 2


async def test_tools_map_both_ways(broker: Any, mock: MockUpstream) -> None:
    """Tools, tool_choice, tool_use and tool_result blocks become chat tools and messages; a
    chat tool call comes back as a tool_use block with stop_reason tool_use... or end_turn."""
    http, tenant, _ = broker
    client = sdk(http, tenant)
    script = {"text": "", "tool_arguments": '{"q": "vida"}'}
    httpx2.post(mock.root + "/_mock/reply", json=script).raise_for_status()
    answer = await client.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=[{"name": "lookup", "description": "busca", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "lookup"},
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
    sent = httpx2.get(mock.root + "/_mock/last_request").json()
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "busca",
                "parameters": {"type": "object"},
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "nada"},
    ]
    uses = [block for block in answer.content if block.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [("call_mock", "lookup", {"q": "vida"})]


async def test_messages_stream_events_and_usage(broker: Any, mock: MockUpstream) -> None:
    """messages.stream yields message_start ... content_block_delta ... message_delta with the
    usage the ledger holds, then message_stop; the final message accumulates the text."""
    http, tenant, settings = broker
    client = sdk(http, tenant)
    kinds: list[str] = []
    async with client.messages.stream(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Explique seguros"}]
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start"
    assert "content_block_delta" in kinds
    assert kinds[-1] == "message_stop"
    assert final.content[0].type == "text"
    assert final.content[0].text == "w0 w1 w2 w3"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock, MODEL)
    assert [(r["status"], r["streamed"]) for r in rows] == [("success", True)]


async def test_cut_stream_ends_in_an_error_event(broker: Any, mock: MockUpstream) -> None:
    """A Messages stream the upstream cuts ends with an error event, charged at its bound."""
    http, tenant, settings = broker
    httpx2.post(mock.root + "/_mock/enqueue", json={"cut_after_chunks": 1}).raise_for_status()
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "stream": True,
        "messages": [{"role": "user", "content": "oi"}],
    }
    async with http.stream(
        "POST", "/v1/messages", json=body, headers={"x-api-key": tenant.api_key}
    ) as reply:
        events = [line async for line in reply.aiter_lines() if line.startswith("event: ")]
    assert events[0] == "event: message_start"
    assert events[-1] == "event: error"
    rows = await ledger_rows(settings)
    assert [(r["status"], r["completion_tokens"]) for r in rows] == [("cut", 8)]


async def test_errors_use_anthropic_shape_and_sdk_classes(broker: Any, mock: MockUpstream) -> None:
    """Refusals answer {"type": "error", "error": {type, message}} and the SDK raises its own
    classes: bad key 401, model not allowed 403, bad body 400, over budget 402."""
    http, tenant, settings = broker
    with pytest.raises(anthropic.AuthenticationError):
        await sdk(http, tenant, api_key="bx_live_wrong").messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "oi"}]
        )
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        await sdk(http, tenant).messages.create(
            model="gpt-4.1", max_tokens=2, messages=[{"role": "user", "content": "oi"}]
        )
    assert denied.value.body["type"] == "error"  # type: ignore[index]
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    for body in (
        {"model": MODEL, "messages": [{"role": "user", "content": "oi"}]},  # no max_tokens
        {
            "model": MODEL,
            "max_tokens": 2,
            "top_k": 5,
            "messages": [{"role": "user", "content": "oi"}],
        },
        {
            "model": MODEL,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "thinking", "thinking": "x"}]}],
        },
        {
            "model": MODEL,
            "max_tokens": 2,
            "messages": [
                {"role": "user", "content": "oi"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}
                    ],
                },
            ],
        },
    ):
        reply = await http.post("/v1/messages", json=body, headers={"x-api-key": tenant.api_key})
        assert reply.status_code == 400, reply.text
        assert reply.json()["type"] == "error"
        assert reply.json()["error"]["type"] == "invalid_request_error"
    poor = await create_tenant(settings, "proj_poor_anthropic", budget_monthly_usd="0")
    with pytest.raises(anthropic.APIStatusError) as caught:
        await sdk(http, poor).messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "oi"}]
        )
    assert caught.value.status_code == 402
    assert caught.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    assert mock.stats()["requests"] == 0


async def test_count_tokens_estimates_without_billing(broker: Any, mock: MockUpstream) -> None:
    """count_tokens answers an estimate, calls no upstream and ledgers nothing; the model must
    be allowed."""
    http, tenant, settings = broker
    client = sdk(http, tenant)
    counted = await client.messages.count_tokens(
        model=MODEL, system="abcd" * 10, messages=[{"role": "user", "content": "efgh" * 5}]
    )
    assert counted.input_tokens == 3 + 4 * 2 + 10 + 5
    with pytest.raises(anthropic.PermissionDeniedError):
        await client.messages.count_tokens(
            model="gpt-4.1", messages=[{"role": "user", "content": "oi"}]
        )
    assert mock.stats()["requests"] == 0
    assert await ledger_rows(settings) == []
    assert Decimal(0) == sum((r["cost_usd"] for r in await ledger_rows(settings)), Decimal(0))


async def test_integers_beyond_64_bits_in_tool_input_are_served(broker: Any) -> None:
    """A tool_use input holding an integer beyond 64 bits is translated, never a 500."""
    http, tenant, _ = broker
    turn = {"type": "tool_use", "id": "t1", "name": "f", "input": {"n": 10**30}}
    body = {
        "model": MODEL,
        "max_tokens": 2,
        "messages": [
            {"role": "user", "content": "oi"},
            {"role": "assistant", "content": [turn]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ],
    }
    headers = {"x-api-key": tenant.api_key}
    reply = await http.post("/v1/messages", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    del body["max_tokens"]  # not a count_tokens field
    counted = await http.post("/v1/messages/count_tokens", json=body, headers=headers)
    assert counted.status_code == 200, counted.text
