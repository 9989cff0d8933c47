"""The mock's Gemini protocol as Google answers (auth, validation, errors, usage), and the
Gemini dialect's reading of answers, chunks and error bodies the mock does not send."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx2
import orjson
import pytest

from common.catalog import Upstream
from common.errors import UpstreamBadResponse
from common.gemini_dialect import GEMINI
from common.pricing import Price
from common.upstream_errors import SAFE_ERROR_TOKENS
from tests.conftest import MockUpstream, Tally

MODEL = "gemini-2.5-flash"
KEY = "gm-key-" + "w" * 24
UPSTREAM = Upstream("g", "https://gemini.test/v1beta", KEY, MODEL, Price(Decimal(1), Decimal(1)))
REQUEST = {"contents": [{"role": "user", "parts": [{"text": "oi tudo bem"}]}]}


@pytest.fixture
def gemini(mock: MockUpstream) -> MockUpstream:
    """The reset mock, serving MODEL and wanting KEY."""
    mock.configure(models=[MODEL], api_key=KEY)
    return mock


def post(mock: MockUpstream, method: str, body: object, **headers: str) -> httpx2.Response:
    """A request to the mock's Gemini endpoint (`method`: model:method?query)."""
    return httpx2.post(
        f"{mock.root}/v1beta/models/{method}",
        content=orjson.dumps(body),
        headers={"x-goog-api-key": KEY, **headers},
        timeout=10,
    )


def test_the_mock_checks_the_key_as_google_does(gemini: MockUpstream) -> None:
    """No x-goog-api-key: 403 PERMISSION_DENIED; a wrong one: 400 INVALID_ARGUMENT with the
    ErrorInfo reason API_KEY_INVALID; a Bearer token is not a Gemini key."""
    missing = httpx2.post(f"{gemini.root}/v1beta/models/{MODEL}:generateContent", json=REQUEST)
    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"
    wrong = post(gemini, f"{MODEL}:generateContent", REQUEST, **{"x-goog-api-key": "nope"})
    assert wrong.status_code == 400
    error = wrong.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["details"][0]["reason"] == "API_KEY_INVALID"
    bearer = httpx2.post(
        f"{gemini.root}/v1beta/models/{MODEL}:generateContent",
        json=REQUEST,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert bearer.status_code == 403
    assert gemini.stats()["requests"] == 3


def test_the_mock_validates_requests(gemini: MockUpstream) -> None:
    """Unknown models and methods are 404 NOT_FOUND; a request without contents, a bad cap
    or a stream without alt=sse is 400 INVALID_ARGUMENT."""
    for method, body, status in (
        ("gemini-9:generateContent", REQUEST, 404),
        (f"{MODEL}:countTokens", REQUEST, 404),
        (f"{MODEL}:generateContent", {"contents": []}, 400),
        (f"{MODEL}:generateContent", {"contents": [{"role": "system", "parts": []}]}, 400),
        (f"{MODEL}:generateContent", {**REQUEST, "generationConfig": {"maxOutputTokens": 0}}, 400),
        (f"{MODEL}:streamGenerateContent", REQUEST, 400),
    ):
        reply = post(gemini, method, body)
        assert reply.status_code == status, (method, body)
        error = reply.json()["error"]
        assert error["status"] == ("NOT_FOUND" if status == 404 else "INVALID_ARGUMENT")
    assert gemini.stats()["by_outcome"] == {"404": 2, "400": 4}


def test_the_mock_answers_and_bills(gemini: MockUpstream) -> None:
    """A GenerateContentResponse with the reply capped by maxOutputTokens, its cache reads in
    cachedContentTokenCount (part of promptTokenCount), recorded as billed."""
    gemini.enqueue({"cache": {"read": 4, "write": 2}})
    body = {
        **REQUEST,
        "systemInstruction": {"parts": [{"text": "seja breve"}]},
        "generationConfig": {"maxOutputTokens": 3},
    }
    reply = post(gemini, f"{MODEL}:generateContent", body)
    assert reply.status_code == 200
    data = reply.json()
    assert data["candidates"][0]["content"] == {"role": "model", "parts": [{"text": "w0 w1 w2"}]}
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"
    # 3 + (4 + 2) system + (4 + 3) user
    usage = data["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"]) == (16, 3)
    assert usage["cachedContentTokenCount"] == 4
    [call] = gemini.stats()["calls"]
    assert (call["prompt_tokens"], call["completion_tokens"]) == (16, 3)
    assert (call["cache_read_tokens"], call["cache_write_tokens"], call["protocol"]) == (
        4,
        0,
        "gemini",
    )


def test_the_mock_streams_server_sent_chunks(gemini: MockUpstream) -> None:
    """alt=sse: a chunk per word with the usage so far; the last carries the finishReason."""
    body = {**REQUEST, "generationConfig": {"maxOutputTokens": 2}}
    reply = post(gemini, f"{MODEL}:streamGenerateContent?alt=sse", body)
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [orjson.loads(line[6:]) for line in reply.text.split("\r\n") if line]
    assert [e["candidates"][0]["content"]["parts"][0]["text"] for e in events] == ["w0", " w1"]
    assert [e["candidates"][0].get("finishReason") for e in events] == [None, "MAX_TOKENS"]
    assert [e["usageMetadata"]["candidatesTokenCount"] for e in events] == [1, 2]


def test_the_mock_errors_in_googles_shape(gemini: MockUpstream) -> None:
    """A 429 is RESOURCE_EXHAUSTED with a RetryInfo; a 503 UNAVAILABLE."""
    gemini.enqueue({"status": 429, "retry_after": 3}, {"status": 503})
    limited = post(gemini, f"{MODEL}:generateContent", REQUEST)
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}
    ]
    busy = post(gemini, f"{MODEL}:generateContent", REQUEST)
    assert (busy.status_code, busy.json()["error"]["status"]) == (503, "UNAVAILABLE")


def test_the_request_carries_the_key_in_its_header_only() -> None:
    """The key travels in x-goog-api-key, never in the URL; streams ask for alt=sse."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "oi"}], "max_tokens": 3}
    plain = GEMINI.request(UPSTREAM, body, "req_1", {})
    assert plain.url == f"https://gemini.test/v1beta/models/{MODEL}:generateContent"
    assert plain.headers["x-goog-api-key"] == KEY
    assert (plain.headers["X-Request-ID"], plain.headers["User-Agent"]) == ("req_1", "bradax/1.0")
    assert "Authorization" not in plain.headers
    streamed = GEMINI.request(UPSTREAM, {**body, "stream": True}, "req_2", {})
    assert streamed.url.endswith(f"/models/{MODEL}:streamGenerateContent?alt=sse")
    for wire in (plain, streamed):
        assert KEY not in wire.url
        assert KEY.encode() not in wire.data
    odd = GEMINI.request(UPSTREAM, {**body, "model": "models/a/../b?x"}, "req_3", {})
    assert odd.url == "https://gemini.test/v1beta/models/a%2F..%2Fb%3Fx:generateContent"


def answer(data: object) -> Any:
    """GEMINI's reading of a 200 body."""
    return GEMINI.answer(UPSTREAM, orjson.dumps(data))


def test_answers_skip_thoughts_and_keep_call_ids() -> None:
    """Thought parts are not content; a functionCall's own id is kept; thoughts and tool-use
    prompt tokens are billed."""
    read = answer(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "pensando", "thought": True},
                            {"text": "olá"},
                            {"functionCall": {"id": "fc-9", "name": "f", "args": {"a": 1}}},
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 10,
                "toolUsePromptTokenCount": 1,
                "candidatesTokenCount": 2,
                "thoughtsTokenCount": 5,
                "cachedContentTokenCount": 3,
            },
        }
    )
    message = read.data["choices"][0]["message"]
    assert message["content"] == "olá"
    assert message["tool_calls"] == [
        {"id": "fc-9", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert read.data["choices"][0]["finish_reason"] == "tool_calls"
    assert (read.prompt_tokens, read.completion_tokens, read.cache_read) == (11, 7, 3)
    assert read.data["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    assert orjson.loads(read.body) == read.data


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "content_filter"),
        ("STOP", "stop"),
    ],
)
def test_finish_reasons_map(reason: str, finish: str) -> None:
    """Gemini's finish reasons as chat's."""
    read = answer({"candidates": [{"finishReason": reason}], "usageMetadata": {}})
    assert read.data["choices"][0]["finish_reason"] == finish
    assert (read.prompt_tokens, read.usage_invalid) == (None, False)  # no promptTokenCount


def test_unusable_answers_and_usage() -> None:
    """No candidate and no block reason is the wrong shape; a usage that is not an object is
    invalid; a blocked prompt is an empty content_filter answer billed by its usage."""
    with pytest.raises(UpstreamBadResponse) as caught:
        answer({"usageMetadata": {"promptTokenCount": 3}})
    assert caught.value.reason == "shape"
    with pytest.raises(UpstreamBadResponse):
        GEMINI.answer(UPSTREAM, b"not json")
    bad = answer({"candidates": [{"content": {"parts": []}}], "usageMetadata": [1]})
    assert (bad.prompt_tokens, bad.usage_invalid) == (None, True)
    blocked = answer(
        {
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 4},
        }
    )
    assert blocked.data["choices"][0]["message"]["content"] == ""
    assert blocked.data["choices"][0]["finish_reason"] == "content_filter"
    assert (blocked.prompt_tokens, blocked.completion_tokens) == (4, 0)


def event(data: object) -> bytes:
    """One server-sent event as Gemini frames it."""
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


def chunk(text: str, finish: str | None = None, **extra: Any) -> bytes:
    """A chunk with one text part."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    return event({"candidates": [candidate], **extra})


def test_a_stream_error_stops_it_unfinished() -> None:
    """An error object mid-stream (as an event, or as bare JSON lines) stops the translation:
    nothing more is emitted and the end is never seen."""
    for error in (event({"error": {"code": 500, "status": "INTERNAL"}}), b'{\n  "error": {\n'):
        translator = GEMINI.translator(UPSTREAM)
        tally = Tally()
        first = list(translator.feed(chunk("a", usageMetadata={"promptTokenCount": 3}), tally))
        assert len(first) == 2  # the role, then the text
        assert list(translator.feed(error, tally)) == []
        assert list(translator.feed(chunk("b", "STOP"), tally)) == []
        assert (tally.done, tally.prompt_tokens, tally.produced) == (False, None, 1)


def test_a_stream_ends_at_its_finish_with_the_final_usage() -> None:
    """The finish chunk ends the stream: the last usage in the tally, a usage chunk only when
    the client wants it, then [DONE]; nothing after is read."""
    for strip in (False, True):
        translator = GEMINI.translator(UPSTREAM)
        tally = Tally(strip_usage=strip)
        partial = {"promptTokenCount": 7, "candidatesTokenCount": 1}
        out = list(translator.feed(chunk("a", usageMetadata=partial), tally))
        assert tally.prompt_tokens is None  # a partial usage is never taken
        final = {"promptTokenCount": 7, "candidatesTokenCount": 2, "thoughtsTokenCount": 3}
        out += translator.feed(chunk("b", "MAX_TOKENS", usageMetadata=final), tally)
        assert out[-1] == b"data: [DONE]\n\n"
        chunks = [orjson.loads(e[6:]) for e in out[:-1]]
        finishes = [c["finish_reason"] for e in chunks for c in e["choices"]]
        assert finishes == [None, None, None, "length"]
        assert [e["usage"]["completion_tokens"] for e in chunks if "usage" in e] == (
            [] if strip else [5]
        )
        assert (tally.done, tally.prompt_tokens, tally.completion_tokens) == (True, 7, 5)
        zero = event({"usageMetadata": {"promptTokenCount": 0}})
        assert list(translator.feed(zero, tally)) == []
        assert tally.prompt_tokens == 7


def test_error_tokens_are_googles_status_and_reasons() -> None:
    """error_tokens names the ErrorInfo reasons, then the status: all safe to relay."""
    body = {
        "error": {
            "code": 400,
            "message": f"echo {KEY}",
            "status": "INVALID_ARGUMENT",
            "details": [{"@type": "x", "reason": "API_KEY_INVALID"}],
        }
    }
    tokens = tuple(GEMINI.error_tokens(orjson.dumps(body)))
    assert tokens == ("API_KEY_INVALID", "INVALID_ARGUMENT")
    assert set(tokens) <= SAFE_ERROR_TOKENS
    assert tuple(GEMINI.error_tokens(b"<html>")) == ()


@pytest.mark.parametrize(("model", "signed"), [("gemini-3-pro-preview", True), (MODEL, False)])
def test_replayed_calls_are_signed_for_gemini_3(model: str, signed: bool) -> None:
    """Gemini 3 refuses replayed function calls without a thought signature: the first call
    of each model turn carries the one Google documents for unsigned history."""
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {
        "model": model,
        "max_tokens": 3,
        "messages": [
            {"role": "user", "content": "oi"},
            {"role": "assistant", "tool_calls": [{**call, "id": "a"}, {**call, "id": "b"}]},
            {"role": "tool", "tool_call_id": "a", "content": "1"},
            {"role": "tool", "tool_call_id": "b", "content": "2"},
        ],
    }
    contents = orjson.loads(GEMINI.request(UPSTREAM, body, "r", {}).data)["contents"]
    parts = contents[1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == (
        ["skip_thought_signature_validator", None] if signed else [None, None]
    )
    assert [p["functionResponse"]["name"] for p in contents[2]["parts"]] == ["f", "f"]
