"""Anthropic streams read back as chat chunks (the translator fed real event bytes), and the
mock's Messages protocol served for real: its checks, errors, events and usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from bradax_cli.mock.config import MockConfig
from bradax_cli.mock.server import build_app
from common.anthropic_dialect import ANTHROPIC
from common.catalog import Upstream
from common.pricing import Price
from common.wire import DONE
from tests.conftest import Tally

UP = Upstream("c", "http://up.test/v1", None, "claude-x", Price(Decimal(1), Decimal(5)))


def ev(data: dict[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


START = ev(
    {
        "type": "message_start",
        "message": {
            "id": "msg_9",
            "type": "message",
            "role": "assistant",
            "model": "claude-x-9",
            "content": [],
            "usage": {
                "input_tokens": 7,
                "cache_read_input_tokens": 2,
                "cache_creation_input_tokens": 1,
                "output_tokens": 1,
            },
        },
    }
)
TEXT = [
    ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ev({"type": "ping"}),
    ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Ol"}}),
    ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "á"}}),
    ev({"type": "content_block_stop", "index": 0}),
]


def delta(index: int, kind: str, **fields: Any) -> bytes:
    """A content_block_delta event."""
    body = {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}
    return ev(body)


THINKING = [
    ev({"type": "content_block_start", "index": 1, "content_block": {"type": "thinking"}}),
    delta(1, "thinking_delta", thinking="hm"),
    delta(1, "signature_delta", signature="s"),
    ev({"type": "content_block_stop", "index": 1}),
]
TOOL_BLOCK = {"type": "tool_use", "id": "tu_1", "name": "f", "input": {}}
TOOL = [
    ev({"type": "content_block_start", "index": 2, "content_block": TOOL_BLOCK}),
    delta(2, "input_json_delta", partial_json=""),
    delta(2, "input_json_delta", partial_json='{"a":'),
    delta(2, "input_json_delta", partial_json="1}"),
    ev({"type": "content_block_stop", "index": 2}),
]


def end(usage: dict[str, Any] | None, reason: str = "tool_use") -> list[bytes]:
    delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": reason}}
    if usage is not None:
        delta["usage"] = usage
    return [ev(delta), ev({"type": "message_stop"})]


def run(events: list[bytes], tally: Tally) -> list[Any]:
    """The chat events out of a fresh translator (chunks parsed; [DONE] as the string)."""
    translator = ANTHROPIC.translator(UP)
    out: list[Any] = []
    for event in events:
        for chunk in translator.feed(event, tally):
            out.append("DONE" if chunk == DONE else orjson.loads(chunk.removeprefix(b"data: ")))
    return out


def test_a_stream_becomes_chat_chunks_with_its_final_usage() -> None:
    """Role first, text and tool-call deltas (thinking left out), the finish reason, then the
    usage (input + cache tokens as the prompt) and [DONE]."""
    tally = Tally()
    out = run([START, *TEXT, *THINKING, *TOOL, *end({"output_tokens": 12})], tally)
    assert out[-1] == "DONE"
    chunks = out[:-1]
    assert {(c["id"], c["model"]) for c in chunks} == {("msg_9", "claude-x-9")}
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]]
    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Ol"}, None),
        ({"content": "á"}, None),
        (
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "tu_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            },
            None,
        ),
        ({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, None),
        ({}, "tool_calls"),
    ]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 12,
        "total_tokens": 22,
        "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 1},
    }
    assert (tally.prompt_tokens, tally.completion_tokens, tally.cache_read, tally.cache_write) == (
        10,
        12,
        2,
        1,
    )
    assert (tally.done, tally.produced, tally.usage_invalid) == (True, 5, False)


def test_counts_repeated_in_message_delta_win_and_usage_can_be_stripped() -> None:
    """Newer API versions repeat the input side in message_delta: those counts replace
    message_start's; with strip_usage no usage chunk is emitted, the tally still counts."""
    tally = Tally(strip_usage=True)
    final = {"output_tokens": 3, "input_tokens": 20, "cache_read_input_tokens": 0}
    out = run([START, *TEXT, *end(final, "end_turn")], tally)
    assert out[-1] == "DONE"
    assert out[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c == "DONE" or "usage" not in c for c in out)
    assert (tally.prompt_tokens, tally.completion_tokens, tally.cache_read, tally.cache_write) == (
        21,
        3,
        0,
        1,
    )


@pytest.mark.parametrize(
    "events",
    [
        [START, *TEXT],  # cut before the end
        [
            START,
            *TEXT,
            ev(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 2},
                }
            ),
        ],  # no message_stop
        [
            START,
            TEXT[0],
            ev({"type": "error", "error": {"type": "overloaded_error"}}),
            *TEXT[1:],
            *end({"output_tokens": 2}),
        ],  # an error event: nothing after it counts
    ],
)
def test_an_unfinished_stream_leaves_done_false(events: list[bytes]) -> None:
    """Without message_stop (or after an error event) the stream is not done and no usage
    is set: the broker charges the bound."""
    tally = Tally()
    out = run(events, tally)
    assert "DONE" not in out
    assert (tally.done, tally.prompt_tokens, tally.completion_tokens) == (False, None, None)


@pytest.mark.parametrize(
    "final",
    [{"output_tokens": -1}, {"output_tokens": 2, "input_tokens": "9"}, {"output_tokens": 2.5}],
)
def test_unreadable_stream_usage_is_invalid(final: dict[str, Any]) -> None:
    tally = Tally()
    out = run([START, *TEXT, *end(final)], tally)
    assert out[-1] == "DONE"
    assert (tally.done, tally.usage_invalid, tally.prompt_tokens) == (True, True, None)


def test_a_stream_without_usage_is_done_without_counts() -> None:
    """message_stop with no usage anywhere: done, no counts (charged at the bound)."""
    start = ev({"type": "message_start", "message": {"id": "m", "type": "message"}})
    tally = Tally()
    run([start, *TEXT, *end(None)], tally)
    assert (tally.done, tally.prompt_tokens, tally.usage_invalid) == (True, None, False)


# -- the mock's Messages protocol ------------------------------------------------------------

MOCK_KEY = "mock-anthropic-key-0123456789"


@pytest.fixture(scope="module")
async def base_url() -> AsyncIterator[str]:
    app = build_app(MockConfig(seed=3, models=("claude-x",), api_key=MOCK_KEY))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"x-api-key": MOCK_KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(base_url, headers=headers) as session:
        async with session.post("/_mock/reset") as resp:
            assert resp.status == 200
        yield session


MESSAGE = {
    "model": "claude-x",
    "max_tokens": 4,
    "system": "seja breve",
    "messages": [{"role": "user", "content": "hello there"}],
}


async def _post(http: aiohttp.ClientSession, body: Any, **kw: Any) -> tuple[int, Any]:
    async with http.post("/v1/messages", json=body, **kw) as resp:
        return resp.status, await resp.json()


async def test_mock_checks_key_version_and_body(http: aiohttp.ClientSession) -> None:
    """401 without the x-api-key, 400 without anthropic-version or max_tokens, 404 for an
    unknown model: each in Anthropic's error shape."""
    status, data = await _post(http, MESSAGE, headers={"x-api-key": "wrong"})
    assert (status, data["type"], data["error"]["type"]) == (401, "error", "authentication_error")
    async with aiohttp.ClientSession(http._base_url) as bare:
        status, data = await _post(bare, MESSAGE, headers={"x-api-key": MOCK_KEY})
    assert (status, data["error"]["message"]) == (400, "anthropic-version: header is required")
    status, data = await _post(http, {**MESSAGE, "max_tokens": None})
    assert (status, data["error"]["type"]) == (400, "invalid_request_error")
    status, data = await _post(http, {**MESSAGE, "model": "claude-nope"})
    assert (status, data["error"]["type"]) == (404, "not_found_error")


async def test_mock_answers_bill_cache_tokens(http: aiohttp.ClientSession) -> None:
    """prompt = 3 + (4 + 2) + (4 + 2) = 15, of which the `cache` behaviour's read and write
    are reported in Anthropic's fields and recorded."""
    async with http.post("/_mock/enqueue", json={"cache": {"read": 5, "write": 3}}):
        pass
    status, data = await _post(http, MESSAGE)
    assert status == 200
    assert (data["content"], data["stop_reason"]) == (
        [{"type": "text", "text": "w0 w1 w2 w3"}],
        "max_tokens",
    )
    assert data["usage"] == {
        "input_tokens": 7,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 5,
        "output_tokens": 4,
        "service_tier": "standard",
    }
    async with http.get("/_mock/stats") as resp:
        call = (await resp.json())["calls"][-1]
    assert (call["prompt_tokens"], call["cache_read_tokens"], call["cache_write_tokens"]) == (
        15,
        5,
        3,
    )
    assert call["protocol"] == "anthropic"


async def test_mock_stream_is_the_messages_event_sequence(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/messages", json={**MESSAGE, "stream": True}) as resp:
        raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e]
    kinds = [e.split(b"\n")[0].removeprefix(b"event: ").decode() for e in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    tally = Tally()
    run([e + b"\n\n" for e in events], tally)
    assert (tally.done, tally.prompt_tokens, tally.completion_tokens) == (True, 15, 4)


async def test_mock_errors_speak_anthropic(http: aiohttp.ClientSession) -> None:
    """429 is a rate_limit_error with retry-after; 529 an overloaded_error."""
    items = [{"status": 429, "retry_after": 2}, {"status": 529}]
    async with http.post("/_mock/enqueue", json=items):
        pass
    async with http.post("/v1/messages", json=MESSAGE) as resp:
        assert (resp.status, resp.headers["retry-after"]) == (429, "2")
        assert (await resp.json())["error"]["type"] == "rate_limit_error"
    status, data = await _post(http, MESSAGE)
    assert (status, data["error"]["type"]) == (529, "overloaded_error")
