"""The Anthropic dialect's parts: the request it builds, what it refuses, how it reads answers
and error bodies (streams: test_anthropic_dialect_stream)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
import pytest

from common.anthropic_body import messages_body
from common.anthropic_dialect import ANTHROPIC, TOOL_OVERHEAD
from common.catalog import Upstream
from common.errors import BadRequest, UpstreamBadResponse
from common.llm import DIALECTS
from common.pricing import Price
from common.upstream_errors import RETRY_STATUSES, answered

KEY = "sk-ant-" + "z" * 30
UP = Upstream(
    "c", "http://up.test/v1", KEY, "claude-x", Price(Decimal(1), Decimal(5)), dialect="anthropic"
)
USER = [{"role": "user", "content": "oi"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "messages": USER, "max_tokens": 9, **extra}


def sent(chat: dict[str, Any]) -> dict[str, Any]:
    """The Messages body the dialect builds for a chat body (integers beyond 64 bits exact)."""
    result: dict[str, Any] = json.loads(ANTHROPIC.request(UP, chat, "req_1", {}).data)
    return result


def test_the_dialect_is_registered_and_529_is_retried() -> None:
    """`anthropic` routes speak this dialect; Anthropic's 529 (overloaded) is retried and
    counts against the upstream's breaker."""
    assert DIALECTS["anthropic"] is ANTHROPIC
    assert 529 in RETRY_STATUSES
    failure = answered(529, {}, ANTHROPIC.error_tokens(b'{"error":{"type":"overloaded_error"}}'))
    assert (failure.retryable, failure.blames_upstream, failure.code) == (
        True,
        True,
        "overloaded_error",
    )


def test_request_url_and_headers() -> None:
    """POST <base>/messages, the key in x-api-key, the client's version headers unchanged."""
    wire = ANTHROPIC.request(
        UP, body(), "req_1", {"anthropic-version": "2024-01-01", "anthropic-beta": "a,b"}
    )
    assert wire.url == "http://up.test/v1/messages"
    assert wire.headers == {
        "Content-Type": "application/json",
        "X-Request-ID": "req_1",
        "User-Agent": "bradax/1.0",
        "anthropic-version": "2024-01-01",
        "anthropic-beta": "a,b",
        "x-api-key": KEY,
    }
    keyless = Upstream("c", "http://up.test/v1", None, "claude-x", UP.price, dialect="anthropic")
    plain = ANTHROPIC.request(keyless, body(), "req_2", {}).headers
    assert plain["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in plain
    assert "x-api-key" not in plain
    assert "Authorization" not in plain


def test_messages_blocks_and_turns_map() -> None:
    """System and developer text is hoisted; images, tool calls and results become blocks;
    consecutive turns of one role merge; empty messages and neutral parameters go."""
    png = "data:image/png;base64,iVBORw0KGgo="
    chat = body(
        messages=[
            {"role": "system", "content": "A"},
            {"role": "user", "content": [{"type": "text", "text": "olhe"}]},
            {"role": "developer", "content": [{"type": "text", "text": "B"}]},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                ],
            },
            {"role": "assistant", "content": None, "refusal": None},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "nao"}]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "t",
                        "type": "function",
                        "function": {
                            "name": "f",
                            "arguments": '{"n": 123456789012345678901234567890}',
                        },
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "t", "content": [{"type": "text", "text": "ok"}]},
        ],
        n=1,
        logprobs=False,
        presence_penalty=0,
        response_format={"type": "text"},
        stream_options={"include_usage": True},
        metadata={"k": "v"},
        store=False,
        seed=None,
        stop=["x", "y"],
        service_tier="default",
        safety_identifier="s-1",
        stream=True,
    )
    assert sent(chat) == {
        "model": "claude-x",
        "max_tokens": 9,
        "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "olhe"},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "nao"},
                    {
                        "type": "tool_use",
                        "id": "t",
                        "name": "f",
                        "input": {"n": 123456789012345678901234567890},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "ok"}],
                    }
                ],
            },
        ],
        "stop_sequences": ["x", "y"],
        "metadata": {"user_id": "s-1"},
        "service_tier": "standard_only",
        "stream": True,
    }


def test_no_service_tier_reaches_priority_capacity() -> None:
    """OpenAI's auto and default tiers are Anthropic's standard tier: Anthropic's own `auto`
    may serve from Priority Tier, priced above the route's prices."""
    for tier in ("auto", "default"):
        body: dict[str, Any] = {"model": "m", "max_tokens": 1, "messages": []}
        body["service_tier"] = tier
        assert messages_body(body)["service_tier"] == "standard_only"


def test_cache_breakpoints_are_kept_on_their_blocks() -> None:
    """A text or image part's `cache_control` (ephemeral, maybe with a ttl) stays on its
    block, in the system prompt too; any other hint is refused by name."""
    hint = {"type": "ephemeral", "ttl": "1h"}
    chat = body(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "S", "cache_control": hint}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "T", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x.test/a.png"},
                        "cache_control": hint,
                    },
                ],
            },
        ]
    )
    mapped = sent(chat)
    assert mapped["system"] == [{"type": "text", "text": "S", "cache_control": hint}]
    assert mapped["messages"][0]["content"] == [
        {"type": "text", "text": "T", "cache_control": {"type": "ephemeral"}},
        {
            "type": "image",
            "source": {"type": "url", "url": "https://x.test/a.png"},
            "cache_control": hint,
        },
    ]
    bad = _user({"type": "text", "text": "T", "cache_control": {"type": "forever"}})
    with pytest.raises(BadRequest) as refused:
        ANTHROPIC.check(UP, body(**bad))
    assert refused.value.param == "messages[0].content[0].cache_control"


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ({"type": "function", "function": {"name": "f"}}, True, {"type": "tool", "name": "f"}),
    ],
)
def test_tools_and_tool_choice_map(choice: Any, parallel: Any, expected: Any) -> None:
    """Function tools (no parameters: an empty object schema; strict kept) and each choice."""
    tools = [
        {"type": "function", "function": {"name": "f", "strict": True}},
        {
            "type": "function",
            "function": {
                "name": "g",
                "description": "d",
                "parameters": {"type": "object", "required": ["a"]},
            },
        },
    ]
    mapped = sent(body(tools=tools, tool_choice=choice, parallel_tool_calls=parallel))
    assert mapped["tools"] == [
        {"name": "f", "input_schema": {"type": "object"}, "strict": True},
        {"name": "g", "description": "d", "input_schema": {"type": "object", "required": ["a"]}},
    ]
    assert mapped.get("tool_choice") == expected


def test_prompt_overhead_covers_the_hidden_tool_prompt() -> None:
    """Tools add at least 1000 prompt tokens to the bound (Anthropic's tool-use system
    prompt); a call without tools a small allowance."""
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert ANTHROPIC.prompt_overhead(body(tools=tools)) == TOOL_OVERHEAD >= 1000
    assert ANTHROPIC.prompt_overhead(body()) == 10
    assert ANTHROPIC.prompt_overhead(body(tools=[])) == 10


def _user(*parts: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(parts)}]}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 3}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "allowed_tools"},
            },
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (_user({"type": "input_audio", "input_audio": {"data": "x"}}), "messages[0].content[0]"),
        (_user({"type": "file", "file": {"file_data": "x"}}), "messages[0].content[0]"),
        (
            _user({"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,x"}}),
            "messages[0].content[0]",
        ),
        (
            _user({"type": "image_url", "image_url": {"url": "ftp://x.test/a.png"}}),
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "assistant", "audio": {"id": "a"}}]}, "messages[0].audio"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "t",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{bad"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "t",
                                "type": "function",
                                "function": {"name": "f", "arguments": "[1]"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_what_does_not_map_is_refused_by_name(extra: dict[str, Any], param: str) -> None:
    """check() names the first feature Messages cannot carry faithfully."""
    with pytest.raises(BadRequest) as refused:
        ANTHROPIC.check(UP, body(**extra))
    assert refused.value.param == param


def test_max_tokens_is_required() -> None:
    """Messages requires a token cap (the broker always sets one)."""
    chat = body()
    del chat["max_tokens"]
    with pytest.raises(BadRequest) as refused:
        ANTHROPIC.check(UP, chat)
    assert refused.value.param == "max_tokens"
    assert sent({**chat, "max_completion_tokens": 4, "max_tokens": 8})["max_tokens"] == 4


def _message(usage: Any = None, **extra: Any) -> bytes:
    data: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-1",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "a"},
            {"type": "tool_use", "id": "tu", "name": "f", "input": {"q": 1}},
            {"type": "text", "text": "b"},
        ],
        "stop_reason": "tool_use",
        **extra,
    }
    if usage is not None:
        data["usage"] = usage
    return orjson.dumps(data)


def test_an_answer_becomes_a_chat_completion() -> None:
    """Text joined, tool_use as tool calls, thinking left out; all prompt tokens counted."""
    used = {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 2,
    }
    answer = ANTHROPIC.answer(UP, _message(used))
    choice = answer.data["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "ab",
        "tool_calls": [
            {"id": "tu", "type": "function", "function": {"name": "f", "arguments": '{"q":1}'}}
        ],
    }
    assert choice["finish_reason"] == "tool_calls"
    assert (answer.data["id"], answer.data["model"]) == ("msg_1", "claude-x-1")
    assert (answer.prompt_tokens, answer.completion_tokens, answer.usage_invalid) == (10, 7, False)
    assert (answer.cache_read, answer.cache_write) == (3, 2)
    assert answer.data["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 3,
        "cache_write_tokens": 2,
    }
    assert orjson.loads(answer.body or b"") == answer.data


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("tool_use", "tool_calls"),
    ],
)
def test_stop_reasons_map(reason: str, finish: str) -> None:
    used = {"input_tokens": 1, "output_tokens": 1}
    answer = ANTHROPIC.answer(UP, _message(used, stop_reason=reason))
    assert answer.data["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"input_tokens": 4, "output_tokens": 1}, (4, 1, False)),
        ({"input_tokens": 4, "output_tokens": 1, "cache_read_input_tokens": None}, (4, 1, False)),
        (
            {"input_tokens": 4, "output_tokens": 1, "cache_read_input_tokens": "2"},
            (None, None, True),
        ),
        (
            {"input_tokens": 4, "output_tokens": 1, "cache_creation_input_tokens": -1},
            (None, None, True),
        ),
        ({"input_tokens": True, "output_tokens": 1}, (None, None, True)),
        ({"output_tokens": 1}, (None, None, True)),
        ([4, 1], (None, None, True)),
        (None, (None, None, False)),
    ],
)
def test_usage_is_read_as_a_claim(usage: Any, expected: tuple[Any, ...]) -> None:
    """Missing cache counts are 0; a count that is not a plain integer makes usage invalid."""
    answer = ANTHROPIC.answer(UP, _message(usage))
    assert (answer.prompt_tokens, answer.completion_tokens, answer.usage_invalid) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed"),
        (b"[]", "shape"),
        (b'{"type":"error"}', "shape"),
        (b'{"type":"message","content":"x"}', "shape"),
    ],
)
def test_an_unusable_answer_is_a_bad_response(raw: bytes, reason: str) -> None:
    with pytest.raises(UpstreamBadResponse) as bad:
        ANTHROPIC.answer(UP, raw)
    assert bad.value.reason == reason


def test_error_bodies_name_their_type() -> None:
    body_ = (
        b'{"type":"error","error":{"type":"rate_limit_error","message":"' + KEY.encode() + b'"}}'
    )
    assert list(ANTHROPIC.error_tokens(body_)) == ["rate_limit_error"]
    assert list(ANTHROPIC.error_tokens(b"<html>")) == []
    assert list(ANTHROPIC.error_tokens(b'{"error":"x"}')) == []
