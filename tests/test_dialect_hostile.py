"""Odd and hostile input to the dialects: upstream answers and streams that must not
under-charge the call, crash the broker or hold its client, and client bodies that must be
refused with a 400 before admission, never fail with a 500 or reach the provider unlike the
personal-data screen read them. The dialects are fed real bytes; the end-to-end tests run
over the mock (its OpenAI and Gemini protocols)."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import httpx2
import orjson
import pytest

from bradax_cli.mock.bedrock_wire import event
from common.anthropic_dialect import ANTHROPIC
from common.bedrock_dialect import BEDROCK
from common.catalog import Upstream
from common.errors import BadRequest, UpstreamBadResponse
from common.gemini_dialect import GEMINI
from common.openai_dialect import OPENAI
from common.pii_payload import screen
from common.pricing import Price
from common.settings import Settings
from common.wire import DONE
from tests.conftest import MockUpstream, Tally, create_tenant, ledger_rows

PRICE = Price(Decimal(1), Decimal(5))
ANTHROPIC_UP = Upstream("c", "http://up.test/v1", None, "claude-x", PRICE, dialect="anthropic")
BEDROCK_UP = Upstream("b", "http://up.test", "br-" + "k" * 30, "nova", PRICE, dialect="bedrock")
OPENAI_UP = Upstream("o", "http://up.test/v1", None, "gpt-4.1-nano", PRICE)
GEMINI_UP = Upstream("g", "http://up.test/v1beta", None, "gemini-2.5-flash", PRICE, "gemini")
# Tool input nested as deep as orjson reads (1024 levels in all): too deep to write back.
DEEP = "[" * 1015 + "]" * 1015


def gemini_chunk(parts: list[dict[str, Any]], finish: str | None = None, **extra: Any) -> bytes:
    """One Gemini stream chunk as Google frames it."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
    if finish:
        candidate["finishReason"] = finish
    return b"data: " + orjson.dumps({"candidates": [candidate], **extra}) + b"\r\n\r\n"


def test_a_gemini_stream_whose_end_has_no_usage_is_not_charged_an_earlier_count() -> None:
    """Usage rides on every Gemini chunk, the one at the end being final: a finish chunk without
    usage leaves the stream without its final usage (charged at the bound), never with the
    partial count an earlier chunk gave."""
    translator = GEMINI.translator(GEMINI_UP)
    tally = Tally()
    partial = {"promptTokenCount": 7, "candidatesTokenCount": 1}
    list(translator.feed(gemini_chunk([{"text": "a"}], usageMetadata=partial), tally))
    out = list(translator.feed(gemini_chunk([{"text": "b"}], "STOP"), tally))
    assert out[-1] == DONE
    assert not any(b'"usage"' in chunk for chunk in out)
    assert (tally.done, tally.prompt_tokens, tally.completion_tokens) == (True, None, None)
    assert tally.usage_invalid is False


def openai_chunk(content: str | None, usage: dict[str, int] | None) -> bytes:
    """One chat chunk event (`content` None: the usage-only chunk, no choices)."""
    chunk: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "usage": usage}
    chunk["choices"] = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def test_an_openai_stream_cut_before_done_is_not_charged_the_usage_it_showed() -> None:
    """Usage an OpenAI-compatible stream shows before its end (servers that report it on
    every chunk, or a hostile one) is partial until [DONE]: a stream cut before it is left
    without usage (charged at the bound); at [DONE] the last non-zero usage is the stream's."""
    translator = OPENAI.translator(OPENAI_UP)
    tally = Tally()
    for i, text in enumerate(("a", "b")):
        usage = {"prompt_tokens": 5, "completion_tokens": i + 1, "total_tokens": 6 + i}
        assert list(translator.feed(openai_chunk(text, usage), tally)) == [
            openai_chunk(text, usage)
        ]
    assert (tally.done, tally.prompt_tokens, tally.completion_tokens) == (False, None, None)
    final = {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    list(translator.feed(openai_chunk(None, final), tally))
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    list(translator.feed(openai_chunk(None, zero), tally))
    assert tally.prompt_tokens is None  # still no [DONE]: a cut here is charged the bound
    assert list(translator.feed(DONE, tally)) == [DONE]
    assert (tally.done, tally.prompt_tokens, tally.completion_tokens) == (True, 5, 3)
    assert (tally.cache_read, tally.produced, tally.usage_invalid) == (2, 2, False)
    other = OPENAI.translator(OPENAI_UP)  # each stream its own: nothing carries over
    fresh = Tally()
    list(other.feed(DONE, fresh))
    assert (fresh.done, fresh.prompt_tokens) == (True, None)


def test_bedrock_usage_before_the_message_stop_is_not_the_end() -> None:
    """ConverseStream's usage (`metadata`) follows `messageStop`: a metadata event before it
    is no end (nothing more is read, the stream is unfinished and charged at its bound),
    never the stream's usage nor a [DONE] to the client."""
    translator = BEDROCK.translator(BEDROCK_UP)
    tally = Tally()
    list(translator.feed(event("messageStart", {"role": "assistant"}), tally))
    text = {"contentBlockIndex": 0, "delta": {"text": "oi"}}
    assert len(list(translator.feed(event("contentBlockDelta", text), tally))) == 1
    usage = {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4}
    assert list(translator.feed(event("metadata", {"usage": usage}), tally)) == []
    assert list(translator.feed(event("messageStop", {"stopReason": "end_turn"}), tally)) == []
    assert (tally.done, tally.prompt_tokens, tally.completion_tokens) == (False, None, None)
    ended = BEDROCK.translator(BEDROCK_UP)
    fresh = Tally()
    list(ended.feed(event("messageStop", {"stopReason": "end_turn"}), fresh))
    out = list(ended.feed(event("metadata", {"usage": usage}), fresh))
    assert out[-1] == DONE
    assert (fresh.done, fresh.prompt_tokens, fresh.completion_tokens) == (True, 3, 1)


def test_a_deeply_nested_tool_input_is_an_unusable_answer() -> None:
    """A tool input nested too deep to write back as arguments makes the answer unusable
    (UpstreamBadResponse: charged at the bound), never an exception of ours (a 500 at $0)."""
    anthropic = (
        b'{"type":"message","id":"m","model":"c","stop_reason":"tool_use",'
        b'"content":[{"type":"tool_use","id":"t","name":"f","input":{"a":'
        + DEEP.encode()
        + b'}}],"usage":{"input_tokens":3,"output_tokens":2}}'
    )
    bedrock = (
        b'{"output":{"message":{"role":"assistant","content":[{"toolUse":'
        b'{"toolUseId":"t","name":"f","input":' + DEEP.encode() + b"}}]}},"
        b'"stopReason":"tool_use","usage":{"inputTokens":3,"outputTokens":2}}'
    )
    gemini = (
        b'{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":'
        + DEEP[1:-1].encode()
        + b'}}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3}}'
    )
    for dialect, upstream, body in (
        (ANTHROPIC, ANTHROPIC_UP, anthropic),
        (BEDROCK, BEDROCK_UP, bedrock),
        (GEMINI, GEMINI_UP, gemini),
    ):
        orjson.loads(body)  # a body orjson reads, as every dialect does
        with pytest.raises(UpstreamBadResponse) as caught:
            dialect.answer(upstream, body)
        assert (caught.value.reason, caught.value.upstream_alias) == ("shape", upstream.alias)


def test_a_deeply_nested_call_in_a_gemini_stream_ends_its_translation() -> None:
    """A streamed function call too deep to write back stops the translation (the stream is
    unfinished: charged at the bound) instead of raising out of the broker's stream."""
    translator = GEMINI.translator(GEMINI_UP)
    tally = Tally()
    list(translator.feed(gemini_chunk([{"text": "a"}]), tally))
    call = b'{"functionCall":{"name":"f","args":{"a":' + DEEP[2:-2].encode() + b"}}}"
    event = (
        b'data: {"candidates":[{"content":{"parts":[' + call + b']},"finishReason":"STOP"}],'
        b'"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}\r\n\r\n'
    )
    orjson.loads(event[6:])
    assert list(translator.feed(event, tally)) == []
    assert list(translator.feed(gemini_chunk([{"text": "b"}], "STOP"), tally)) == []
    assert (tally.done, tally.prompt_tokens, tally.produced) == (False, None, 1)


def with_call(arguments: str, model: str = "m") -> dict[str, Any]:
    """A chat body replaying one assistant tool call with these arguments."""
    call = {"id": "a", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return {
        "model": model,
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "oi"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "a", "content": "x"},
        ],
    }


def escaped(text: str) -> str:
    """`text` with every character written as a JSON \\u escape."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


def test_anthropic_tool_arguments_are_read_as_the_screen_reads_them() -> None:
    """The personal-data screen reads tool arguments with orjson: arguments it cannot parse
    (NaN, Infinity, a lone surrogate) are scanned only as written, where escaped digits hide a
    card number. The Anthropic dialect must not decode them into the `input` it sends: they
    are a 400 naming the arguments, as are arguments nested too deep to send (never a 500)."""
    card = escaped("4111111111111111")
    readable = '{"card": "' + card + '"}'
    assert screen(with_call(readable), redact=False).kinds == {"credit_card"}
    where = "messages[1].tool_calls[0].function.arguments"
    hidden = '{"card": "' + card + '", "n": NaN}'
    assert screen(with_call(hidden), redact=False).kinds == set()
    for arguments in (
        hidden,
        '{"n": Infinity}',
        '{"n": -Infinity}',
        '{"n": 1e400}',
        '{"s": "\\ud800"}',
        '{"a": ' + DEEP + "}",
    ):
        with pytest.raises(BadRequest) as caught:
            ANTHROPIC.check(ANTHROPIC_UP, with_call(arguments))
        assert (caught.value.status, caught.value.param) == (400, where), arguments


def test_tool_arguments_too_deep_to_send_are_refused() -> None:
    """Arguments orjson reads but nested deeper than a request body may be are a 400 before
    admission (they were a RecursionError when the request was built, after it); arguments
    as deep as a body may be are sent as they are."""
    body = with_call('{"a": ' + DEEP + "}")
    for dialect, upstream, param in (
        (BEDROCK, BEDROCK_UP, "messages[1].tool_calls[0].function.arguments"),
        (GEMINI, GEMINI_UP, "messages"),
    ):
        with pytest.raises(BadRequest) as caught:
            dialect.check(upstream, body)
        assert (caught.value.status, caught.value.param) == (400, param)
    nested = {"a": orjson.loads(DEEP[:200] + DEEP[-200:])}
    fine = with_call(orjson.dumps(nested).decode())
    for dialect, upstream in (
        (ANTHROPIC, ANTHROPIC_UP),
        (BEDROCK, BEDROCK_UP),
        (GEMINI, GEMINI_UP),
    ):
        dialect.check(upstream, fine)
        sent = orjson.loads(dialect.request(upstream, fine, "r", {}).data)
        turn = sent["contents" if dialect is GEMINI else "messages"][1]
        part = (turn["parts"] if dialect is GEMINI else turn["content"])[0]
        found = part.get("input") or part.get("toolUse", {}).get("input")
        found = found or part["functionCall"]["args"]
        assert found == nested


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    """A user message of these content parts."""
    return {"role": "user", "content": list(parts)}


def image(url: str) -> dict[str, Any]:
    """A user message of one image_url part."""
    return user({"type": "image_url", "image_url": {"url": url}})


GEMINI_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"reasoning_effort": {"effort": "high"}}, "reasoning_effort"),
    ({"reasoning_effort": ["high"]}, "reasoning_effort"),
    ({"tools": 5}, "tools"),
    ({"tools": True}, "tools"),
    (
        {
            "messages": [
                {"role": "user", "content": "oi"},
                {"role": "assistant", "content": "a", "tool_calls": 5},
            ]
        },
        "messages",
    ),
    (
        {
            "messages": [
                user({"type": "input_audio", "input_audio": {"data": "QQ==", "format": []}})
            ]
        },
        "input_audio",
    ),
    # An image_url is reserved as one image: other media (billed by their length) are refused.
    (
        {"messages": [image("data:text/plain;base64,QQ==")]},
        "image_url",
    ),
    (
        {"messages": [image("data:application/pdf;base64,QQ==")]},
        "image_url",
    ),
    (
        {"messages": [image("data:video/mp4;base64,QQ==")]},
        "image_url",
    ),
]


@pytest.mark.parametrize(("extra", "param"), GEMINI_REFUSALS)
def test_gemini_refuses_odd_values_with_a_400(extra: dict[str, Any], param: str) -> None:
    """Values of the wrong type (an object or a list where a name goes, a number where a list
    goes) and media an image_url cannot carry are a 400 naming the parameter, not a 500."""
    body = {"model": "gemini-2.5-flash", "max_tokens": 5, **extra}
    body.setdefault("messages", [{"role": "user", "content": "oi"}])
    with pytest.raises(BadRequest) as caught:
        GEMINI.check(GEMINI_UP, body)
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        400,
        "parameter_not_supported",
        param,
    )


def test_a_gemini_image_url_holding_an_image_is_inline_data() -> None:
    """An image/* data URL still maps to inlineData (any case of the media type)."""
    for mime in ("image/png", "IMAGE/JPEG"):
        body = {
            "model": "gemini-2.5-flash",
            "max_tokens": 5,
            "messages": [image(f"data:{mime};base64,QQ==")],
        }
        GEMINI.check(GEMINI_UP, body)
        sent = orjson.loads(GEMINI.request(GEMINI_UP, body, "r", {}).data)
        assert sent["contents"][0]["parts"] == [{"inlineData": {"mimeType": mime, "data": "QQ=="}}]


def test_gemini_inline_data_is_only_what_the_screen_decodes() -> None:
    """The screen decodes a data URL's payload only when it is standard, padded base64; Google
    also takes it unpadded or URL-safe, so a text file written that way would reach Gemini
    unread (here a CPF): such data is a 400 naming the part, standard base64 is sent."""
    text = base64.b64encode(b"meu CPF: 529.982.247-25 ok").decode()
    assert text.endswith("=")
    for data, sent in (
        (text, True),
        (text.rstrip("="), False),
        (base64.urlsafe_b64encode(b"\xfb\xff" + text.encode()).decode(), False),
        (text[:8] + "\n" + text[8:], False),
    ):
        file = {"type": "file", "file": {"file_data": f"data:text/plain;base64,{data}"}}
        body = {"model": "gemini-2.5-flash", "max_tokens": 5, "messages": [user(file)]}
        if sent:
            assert screen(body, redact=False).kinds == {"cpf"}
            GEMINI.check(GEMINI_UP, body)
            continue
        assert screen(body, redact=False).kinds == set()
        with pytest.raises(BadRequest) as caught:
            GEMINI.check(GEMINI_UP, body)
        assert (caught.value.status, caught.value.param) == (400, "file"), data
    with pytest.raises(BadRequest) as caught:
        GEMINI.check(GEMINI_UP, {**body, "messages": [image("data:image/png;base64,QQ")]})
    assert caught.value.param == "image_url"


def test_an_assistant_turn_without_tool_calls_maps_on_gemini() -> None:
    """An assistant turn of text alone (no tool_calls at all) is a model turn."""
    body = {
        "model": "gemini-2.5-flash",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "b"},
        ],
    }
    GEMINI.check(GEMINI_UP, body)
    sent = orjson.loads(GEMINI.request(GEMINI_UP, body, "r", {}).data)
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "a"}]},
        {"role": "model", "parts": [{"text": "ok"}]},
        {"role": "user", "parts": [{"text": "b"}]},
    ]


def test_a_replayed_refusal_is_the_model_turn_on_gemini() -> None:
    """An assistant turn that is only a refusal is what the model said (as on Anthropic and
    Bedrock): it is not dropped, which would merge the user turns around it."""
    body = {
        "model": "gemini-2.5-flash",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": None, "refusal": "Não posso ajudar."},
            {"role": "user", "content": "b"},
        ],
    }
    sent = orjson.loads(GEMINI.request(GEMINI_UP, body, "r", {}).data)
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "a"}]},
        {"role": "model", "parts": [{"text": "Não posso ajudar."}]},
        {"role": "user", "parts": [{"text": "b"}]},
    ]


@pytest.mark.parametrize("name", ["logprobs", "top_logprobs", "prediction", "seed"])
def test_bedrock_refuses_an_integer_beyond_64_bits_with_a_400(name: str) -> None:
    """The refusal quotes the value it refuses: an integer orjson cannot write is quoted too
    (it was a TypeError, a 500)."""
    body = {"model": "nova", "max_tokens": 5, "messages": [{"role": "user", "content": "oi"}]}
    with pytest.raises(BadRequest) as caught:
        BEDROCK.check(BEDROCK_UP, {**body, name: 2**64})
    assert (caught.value.status, caught.value.param) == (400, name)
    assert f"'{name}' = {2**64}" in caught.value.message


KEY = "gm-key-" + "h" * 24
ALIAS = "gemini-flash"
UPSTREAM = "gemini-2.5-flash"


def gemini_settings(configure: Any, mock: MockUpstream, **overrides: Any) -> Settings:
    """Settings in force with a Gemini route over the mock, which wants KEY (the OpenAI
    routes send it too)."""
    mock.configure(models=[UPSTREAM, "gpt-4.1-nano"], api_key=KEY)
    route = {
        "provider": "gemini",
        "api_key": KEY,
        "upstream_model": UPSTREAM,
        "base_url": mock.root + "/v1beta",
        "input_per_1m": "0.30",
        "output_per_1m": "2.50",
    }
    current: Settings = configure(
        openai_api_key=KEY,
        openai_base_url=mock.url,
        model_routes={ALIAS: route},
        **overrides,
    )
    return current


def client(router: Any) -> httpx2.AsyncClient:
    """An HTTP client on the broker in-process."""
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    return httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)


async def test_gemini_refusals_come_before_admission(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """Over the broker: each odd body is a 400 in OpenAI's error shape naming the parameter;
    the mock is never called and nothing is ledgered (nothing was reserved)."""
    current = gemini_settings(configure, mock)
    tenant = await create_tenant(current, allowed_models=(ALIAS,))
    async with client(router) as http:
        for extra, param in GEMINI_REFUSALS:
            body = {"model": ALIAS, "max_tokens": 5, **extra}
            body.setdefault("messages", [{"role": "user", "content": "oi"}])
            reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
            assert reply.status_code == 400, (extra, reply.text)
            error = reply.json()["error"]
            assert (error["code"], error["param"]) == ("parameter_not_supported", param)
        deep = with_call('{"a": ' + DEEP + "}", ALIAS)
        reply = await http.post("/v1/chat/completions", json=deep, headers=tenant.key_auth)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "messages"
    assert mock.stats()["requests"] == 0
    assert await ledger_rows(current, tenant.project_id) == []


@pytest.mark.parametrize("model", ["gpt-4.1-nano", ALIAS])
async def test_a_stream_is_over_at_its_end_though_the_upstream_does_not_hang_up(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any, model: str
) -> None:
    """An upstream that holds the connection open after its stream's end (usage and end
    read) does not hold the client: the stream ends there, completed and charged its usage,
    not after the idle timeout with an error after [DONE] and a `timeout` in the ledger."""
    current = gemini_settings(configure, mock, stream_idle_timeout=1.0)
    tenant = await create_tenant(current, allowed_models=(model,))
    mock.enqueue({"linger_ms": 4000})
    body = {
        "model": model,
        "max_tokens": 3,
        "stream": True,
        "messages": [{"role": "user", "content": "oi"}],
    }
    async with client(router) as http:
        reply = await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)
    assert reply.status_code == 200, reply.text
    events = [e for e in reply.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert "upstream_stream" not in reply.text
    [row] = await ledger_rows(current, tenant.project_id)
    assert (row["status"], row["http_status"], row["error_code"]) == ("success", 200, None)
    assert (row["completion_tokens"], row["streamed"]) == (3, True)
