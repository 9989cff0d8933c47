"""Tests of the OpenAI-compatible mock upstream (bradax_cli.mock), served for real."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from bradax_cli.mock import state as mock_state
from bradax_cli.mock.config import MockConfig
from bradax_cli.mock.server import build_app

REPO_ROOT = Path(__file__).resolve().parents[1]
USER: Any = [{"role": "user", "content": "hello there"}]  # prompt_tokens = 3 + 4 + 2 = 9
REPLY_12 = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11"
ALL_MODELS = ["gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini"]


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def base_url() -> AsyncIterator[str]:
    """One real mock server for the module (state is reset before each test)."""
    runner, url = await _start(build_app(MockConfig(seed=7)))
    yield url
    await runner.cleanup()


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client session; the mock is reset before each test."""
    async with aiohttp.ClientSession(base_url) as session:
        async with session.post("/_mock/reset") as resp:
            assert resp.status == 200
        yield session


async def _chat(http: aiohttp.ClientSession, body: dict[str, Any], **kw: Any) -> Any:
    async with http.post("/v1/chat/completions", json=body, **kw) as resp:
        return resp.status, await resp.json()


async def _control(http: aiohttp.ClientSession, path: str, body: Any = None) -> Any:
    if body is None and path == "/_mock/stats":
        async with http.get(path) as resp:
            assert resp.status == 200
            return await resp.json()
    async with http.post(path, json=body) as resp:
        return await resp.json() if resp.status == 200 else (resp.status, await resp.json())


async def _sse_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    """Each HTTP chunk of an SSE answer; asserts one complete event per chunk."""
    events: list[bytes] = []
    async for data, end_of_chunk in resp.content.iter_chunks():
        assert end_of_chunk, "an SSE event was split across or merged into HTTP chunks"
        assert data.startswith(b"data: ")
        assert data.endswith(b"\n\n")
        assert data.count(b"\n\n") == 1
        events.append(data[6:-2])
    return events


async def _collect_raw(resp: aiohttp.ClientResponse, out: list[bytes]) -> None:
    async for data, _ in resp.content.iter_chunks():
        out.append(data)


async def _collect_deltas(stream: Any, out: list[str]) -> None:
    async for chunk in stream:
        out.append(chunk.choices[0].delta.content or "")


def _sync_client(base_url: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0, **kw)


def _async_client(base_url: str, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0, **kw)


async def test_models_list(http: aiohttp.ClientSession) -> None:
    """GET /v1/models lists the configured models in OpenAI's list shape."""
    async with http.get("/v1/models") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ALL_MODELS
    assert body["data"][0] == {
        "id": "gpt-4.1",
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "mock",
    }


async def test_chat_json_shape_and_token_arithmetic(http: aiohttp.ClientSession) -> None:
    """A chat completion has OpenAI's exact shape and deterministic token counts."""
    messages = [
        {"role": "system", "content": "You are terse."},  # 4 + 3
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello big world"},  # 3
                {"type": "image_url", "image_url": {"url": "data:x"}},  # 0
                {"type": "text", "text": "again"},  # 1
            ],
        },  # 4 + 4
        {"role": "assistant", "content": None},  # 4 + 0
    ]
    status, body = await _chat(http, {"model": "gpt-4.1-mini", "messages": messages})
    assert status == 200
    assert set(body) == {
        "id", "object", "created", "model", "choices", "usage", "system_fingerprint",
    }  # fmt: skip
    assert body["id"].startswith("chatcmpl-")
    assert len(body["id"]) > len("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert abs(body["created"] - time.time()) < 5
    assert body["model"] == "gpt-4.1-mini"
    assert body["system_fingerprint"] == "fp_mock"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": REPLY_12, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 22, "completion_tokens": 12, "total_tokens": 34}


async def test_max_tokens_truncation(http: aiohttp.ClientSession) -> None:
    """max_completion_tokens (over max_tokens) truncates the reply with finish_reason length."""
    _, short = await _chat(http, {"model": "gpt-4o", "messages": USER, "max_tokens": 5})
    assert short["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4"
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"] == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}

    body = {"model": "gpt-4o", "messages": USER, "max_tokens": 2, "max_completion_tokens": 3}
    _, both = await _chat(http, body)
    assert both["choices"][0]["message"]["content"] == "w0 w1 w2"
    assert both["usage"]["completion_tokens"] == 3

    _, roomy = await _chat(http, {"model": "gpt-4o", "messages": USER, "max_tokens": 12})
    assert roomy["choices"][0]["finish_reason"] == "stop"
    assert roomy["usage"]["completion_tokens"] == 12

    status, bad = await _chat(http, {"model": "gpt-4o", "messages": USER, "max_tokens": 0})
    assert status == 400
    assert bad["error"]["type"] == "invalid_request_error"


async def test_sse_stream_without_usage(http: aiohttp.ClientSession) -> None:
    """A stream sends role, one chunk per word, a finish chunk and [DONE], one event per write."""
    body = {"model": "gpt-4o", "messages": USER, "stream": True, "max_tokens": 4}
    async with http.post("/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await _sse_events(resp)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len(chunks) == 1 + 4 + 1
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "gpt-4o" for c in chunks)
    assert all("usage" not in c for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": "", "refusal": None}
    assert [d["content"] for d in deltas[1:5]] == ["w0", " w1", " w2", " w3"]
    assert deltas[5] == {}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]


async def test_sse_stream_with_include_usage(http: aiohttp.ClientSession) -> None:
    """include_usage adds usage:null to every chunk and a final choices=[] usage chunk."""
    body = {
        "model": "gpt-4o-mini",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post("/v1/chat/completions", json=body) as resp:
        events = await _sse_events(resp)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len(chunks) == 1 + 12 + 1 + 1
    assert all(c["usage"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == REPLY_12
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    assert chunks[-1]["id"] == chunks[0]["id"]
    stats = await _control(http, "/_mock/stats")
    assert stats["calls"][-1]["outcome"] == "ok"
    assert stats["calls"][-1]["stream"] is True
    assert stats["completion_tokens"] == 12


async def test_lying_usage_is_reported_but_honest_usage_is_billed(
    http: aiohttp.ClientSession,
) -> None:
    """A one-shot `usage` replaces the reported usage ("absent" drops it), in JSON and SSE; a
    trailing zero-usage chunk follows the real one; the stats keep what was really billed."""
    lie = {"prompt_tokens": -7, "completion_tokens": "x"}
    await _control(http, "/_mock/enqueue", [{"usage": lie}, {"usage": "absent"}])
    _, lied = await _chat(http, {"model": "gpt-4o-mini", "messages": USER})
    assert lied["usage"] == lie
    _, absent = await _chat(http, {"model": "gpt-4o-mini", "messages": USER})
    assert "usage" not in absent
    await _control(http, "/_mock/enqueue", [{"trailing_zero_usage": True}])
    body = {
        "model": "gpt-4o-mini",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post("/v1/chat/completions", json=body) as resp:
        events = await _sse_events(resp)
    usages = [orjson.loads(e)["usage"] for e in events[:-1] if orjson.loads(e)["usage"]]
    assert usages == [
        {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    ]
    stats = await _control(http, "/_mock/stats")
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (27, 36)
    status, _ = await _control(http, "/_mock/enqueue", [{"trailing_zero_usage": 1}])
    assert status == 400


async def test_billed_parameters_count_as_prompt_tokens(http: aiohttp.ClientSession) -> None:
    """tools (and functions, response_format, prediction) bill a token per 4 bytes of JSON."""
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 400}}]
    _, answer = await _chat(http, {"model": "gpt-4o-mini", "messages": USER, "tools": tools})
    assert answer["usage"]["prompt_tokens"] == 9 + len(orjson.dumps(tools)) // 4


async def test_openai_sync_client(base_url: str, http: aiohttp.ClientSession) -> None:
    """The official sync client parses models, completions and streams from the mock."""

    def run() -> tuple[Any, Any, list[Any]]:
        with _sync_client(base_url) as client:
            models = client.models.list()
            done = client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=3)
            stream = client.chat.completions.create(
                model="gpt-4o",
                messages=USER,
                stream=True,
                stream_options={"include_usage": True},
            )
            return models, done, list(stream)

    models, done, chunks = await asyncio.to_thread(run)
    assert [m.id for m in models.data] == ALL_MODELS
    assert done.choices[0].message.content == "w0 w1 w2"
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (9, 3)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_12
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 21


async def test_openai_async_client(base_url: str, http: aiohttp.ClientSession) -> None:
    """The official async client parses completions and streams from the mock."""
    async with _async_client(base_url) as client:
        done = await client.chat.completions.create(
            model="gpt-4.1", messages=USER, max_completion_tokens=20
        )
        stream = await client.chat.completions.create(model="gpt-4.1", messages=USER, stream=True)
        chunks = [chunk async for chunk in stream]
    assert done.model == "gpt-4.1"
    assert done.choices[0].message.content == REPLY_12
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None
    assert done.usage.total_tokens == 21
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["w0", " w1", " w2"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY_12
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_429_with_retry_after(base_url: str, http: aiohttp.ClientSession) -> None:
    """A queued 429 carries its Retry-After, a config 429 the configured one or none."""
    await _control(http, "/_mock/enqueue", [{"status": 429, "retry_after": 2}])
    async with http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER}) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "2"
        assert await r.json() == {
            "error": {
                "message": "Rate limit reached for requests (mock).",
                "type": "rate_limit_error",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    await _control(http, "/_mock/config", {"fail_rate_429": 1.0})
    async with http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER}) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "1"
    await _control(http, "/_mock/config", {"retry_after": None})
    async with http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER}) as r:
        assert r.status == 429
        assert "Retry-After" not in r.headers
    await _control(http, "/_mock/config", {"fail_rate_429": 0, "retry_after": 3})
    await _control(http, "/_mock/enqueue", [{"status": 429}])
    async with _async_client(base_url) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.code == "rate_limit_exceeded"
    stats = await _control(http, "/_mock/stats")
    assert stats["by_outcome"] == {"429": 4}
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (0, 0)


async def test_500_and_other_statuses(base_url: str, http: aiohttp.ClientSession) -> None:
    """Queued 500/503 answer server_error bodies that the openai client maps to its errors."""
    await _control(http, "/_mock/enqueue", [{"status": 500}, {"status": 503}])
    status, body = await _chat(http, {"model": "gpt-4o", "messages": USER})
    assert status == 500
    assert body["error"]["type"] == "server_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    async with _async_client(base_url) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.status_code == 503
    stats = await _control(http, "/_mock/stats")
    assert stats["by_outcome"] == {"500": 1, "503": 1}


async def test_hang_client_times_out(base_url: str, http: aiohttp.ClientSession) -> None:
    """A hanging request never answers: clients time out and stats record a hang."""
    await _control(http, "/_mock/enqueue", [{"hang": True}, {"hang": True}])
    started = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        await _chat(
            http,
            {"model": "gpt-4o", "messages": USER},
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    assert 0.25 < time.perf_counter() - started < 2
    async with _async_client(base_url, timeout=0.3) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    stats = await _control(http, "/_mock/stats")
    assert stats["by_outcome"] == {"hang": 2}
    assert [c["stream"] for c in stats["calls"]] == [False, True]
    assert stats["prompt_tokens"] == 0
    # The server is still healthy afterwards.
    status, _ = await _chat(http, {"model": "gpt-4o", "messages": USER})
    assert status == 200


async def test_cut_stream_raw(http: aiohttp.ClientSession) -> None:
    """A cut stream sends role + N content chunks then drops the connection without [DONE]."""
    await _control(http, "/_mock/enqueue", [{"cut_after_chunks": 3}])
    body = {
        "model": "gpt-4o",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    received: list[bytes] = []
    async with http.post("/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await _collect_raw(resp, received)
    events = b"".join(received).split(b"\n\n")
    assert events[-1] == b""
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert len(chunks) == 4
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "w0", " w1", " w2"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    stats = await _control(http, "/_mock/stats")
    assert stats["calls"] == [
        {
            "request_id": None,
            "model": "gpt-4o",
            "stream": True,
            "outcome": "cut",
            "prompt_tokens": 9,
            "completion_tokens": 3,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "protocol": "openai",
        }
    ]


async def test_cut_stream_openai_client_and_non_stream(
    base_url: str, http: aiohttp.ClientSession
) -> None:
    """The openai client sees a connection error on cut streams; a cut JSON call gets nothing."""
    await _control(http, "/_mock/config", {"cut_rate": 1.0, "cut_after_chunks": 5})
    seen: list[str] = []
    async with _async_client(base_url) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        with pytest.raises(openai.APIConnectionError):
            await _collect_deltas(stream, seen)
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="gpt-4o", messages=USER)
    assert "".join(seen) == "w0 w1 w2 w3 w4"
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await _chat(http, {"model": "gpt-4o", "messages": USER})
    stats = await _control(http, "/_mock/stats")
    assert stats["by_outcome"] == {"cut": 3}
    assert [c["completion_tokens"] for c in stats["calls"]] == [5, 0, 0]
    assert stats["prompt_tokens"] == 27


async def test_api_key_enforced(base_url: str, http: aiohttp.ClientSession) -> None:
    """With api_key set, chat and models need the right Bearer token; control stays open."""
    cfg = await _control(http, "/_mock/config", {"api_key": "sk-secret"})
    assert cfg["api_key"] == "sk-secret"
    body = {"model": "gpt-4o", "messages": USER}
    status, err = await _chat(http, body)
    assert status == 401
    assert err["error"]["code"] == "invalid_api_key"
    status, _ = await _chat(http, body, headers={"Authorization": "Bearer nope"})
    assert status == 401
    status, ok = await _chat(http, body, headers={"Authorization": "Bearer sk-secret"})
    assert status == 200
    assert ok["usage"]["completion_tokens"] == 12
    async with http.get("/v1/models") as resp:
        assert resp.status == 401
    async with http.get("/v1/models", headers={"Authorization": "Bearer sk-secret"}) as resp:
        assert resp.status == 200
    async with _async_client(base_url) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    stats = await _control(http, "/_mock/stats")
    assert stats["by_outcome"] == {"401": 2, "ok": 1}
    reset = await _control(http, "/_mock/reset")
    assert reset["api_key"] is None
    status, _ = await _chat(http, body)
    assert status == 200


async def test_unknown_model_404(base_url: str, http: aiohttp.ClientSession) -> None:
    """A chat request for a model outside the list gets 404 model_not_found."""
    status, body = await _chat(http, {"model": "gpt-5-turbo", "messages": USER})
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error"
    async with _async_client(base_url) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-5-turbo", messages=USER)


async def test_invalid_requests_400(http: aiohttp.ClientSession) -> None:
    """Invalid JSON, a non-object body and missing or empty messages answer 400."""
    async with http.post("/v1/chat/completions", data=b"{not json") as resp:
        assert resp.status == 400
        body = await resp.json()
        assert body["error"]["type"] == "invalid_request_error"
    async with http.post("/v1/chat/completions", data=b"[1, 2]") as resp:
        assert resp.status == 400
    for bad in ({"model": "gpt-4o"}, {"model": "gpt-4o", "messages": []}):
        status, body = await _chat(http, bad)
        assert status == 400
        assert body["error"]["param"] == "messages"
    stats = await _control(http, "/_mock/stats")
    assert stats["requests"] == 4
    assert stats["by_outcome"] == {"400": 4}


async def test_config_partial_update(http: aiohttp.ClientSession) -> None:
    """POST /_mock/config changes only the given fields and returns the whole config."""
    cfg = await _control(http, "/_mock/config", {"reply_words": 3, "models": ["m-1"]})
    assert cfg == {
        "latency_ms": 0,
        "fail_rate_429": 0,
        "fail_rate_500": 0,
        "hang_rate": 0,
        "cut_rate": 0,
        "cut_after_chunks": 2,
        "reply_words": 3,
        "retry_after": 1,
        "api_key": None,
        "aws_access_key_id": None,
        "aws_secret_access_key": None,
        "models": ["m-1"],
        "seed": 7,
    }
    status, body = await _chat(http, {"model": "m-1", "messages": USER})
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "w0 w1 w2"
    status, _ = await _chat(http, {"model": "gpt-4o", "messages": USER})
    assert status == 404
    assert await _control(http, "/_mock/config", {"bogus": 1}) == (
        400,
        {
            "error": {
                "message": "unknown config fields: bogus",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    )
    status, _ = await _control(http, "/_mock/config", {"fail_rate_429": 0.7, "cut_rate": 0.7})
    assert status == 400


async def test_enqueue_runs_in_order_then_normal(http: aiohttp.ClientSession) -> None:
    """Queued one-shot behaviours apply to the next requests in order, then answers are normal."""
    queued = await _control(
        http,
        "/_mock/enqueue",
        [{"status": 429, "retry_after": 2}, {"status": 500}, {"latency_ms": 300}],
    )
    assert queued == {"queued": 3}
    body = {"model": "gpt-4o", "messages": USER}
    assert (await _chat(http, body))[0] == 429
    assert (await _chat(http, body))[0] == 500
    started = time.perf_counter()
    status, _ = await _chat(http, body)
    assert status == 200
    assert time.perf_counter() - started >= 0.29
    started = time.perf_counter()
    assert (await _chat(http, body))[0] == 200
    assert time.perf_counter() - started < 0.2
    status, _ = await _control(http, "/_mock/enqueue", [{"status": 200}])
    assert status == 400
    stats = await _control(http, "/_mock/stats")
    assert [c["outcome"] for c in stats["calls"]] == ["429", "500", "ok", "ok"]


async def test_config_latency_applies_to_streams(http: aiohttp.ClientSession) -> None:
    """latency_ms delays every answer, including a stream's first byte."""
    await _control(http, "/_mock/config", {"latency_ms": 200})
    started = time.perf_counter()
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    async with http.post("/v1/chat/completions", json=body) as resp:
        await resp.content.readuntil(b"\n\n")
        assert time.perf_counter() - started >= 0.19
        await resp.read()


async def test_reset_and_stats(http: aiohttp.ClientSession) -> None:
    """Stats record request ids and token sums; reset clears stats, queue and config."""
    body = {"model": "gpt-4o", "messages": USER, "max_tokens": 2}
    await _chat(http, body, headers={"X-Request-ID": "req-1"})
    await _chat(http, body, headers={"X-Request-ID": "req-2"})
    await _control(http, "/_mock/config", {"reply_words": 1})
    await _control(http, "/_mock/enqueue", [{"status": 500}])
    stats = await _control(http, "/_mock/stats")
    assert stats["requests"] == 2
    assert stats["by_outcome"] == {"ok": 2}
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (18, 4)
    assert [c["request_id"] for c in stats["calls"]] == ["req-1", "req-2"]
    assert stats["last_messages"] == USER
    assert stats["calls"][0] == {
        "request_id": "req-1",
        "model": "gpt-4o",
        "stream": False,
        "outcome": "ok",
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "protocol": "openai",
    }
    cfg = await _control(http, "/_mock/reset")
    assert cfg["reply_words"] == 12
    stats = await _control(http, "/_mock/stats")
    assert stats == {
        "requests": 0,
        "by_outcome": {},
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "queued": 0,
        "calls": [],
        "last_messages": None,
        "elsewhere": {"hits": 0, "with_authorization": 0},
    }
    status, answer = await _chat(http, body)  # the queued 500 is gone
    assert status == 200
    assert answer["usage"]["completion_tokens"] == 2


async def test_seeded_random_rates_repeat(http: aiohttp.ClientSession) -> None:
    """With a seed, random failure rates give the same outcome sequence after a reset."""
    body = {"model": "gpt-4o", "messages": USER}
    runs = []
    for _ in range(2):
        await _control(http, "/_mock/reset")
        await _control(http, "/_mock/config", {"fail_rate_429": 0.3, "fail_rate_500": 0.3})
        runs.append([(await _chat(http, body))[0] for _ in range(30)])
    assert runs[0] == runs[1]
    assert {200, 429, 500} == set(runs[0])


async def test_calls_list_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The calls list keeps only the newest MAX_CALLS entries while sums cover all calls."""
    monkeypatch.setattr(mock_state, "MAX_CALLS", 3)
    runner, url = await _start(build_app(MockConfig()))
    try:
        async with aiohttp.ClientSession(url) as http:
            for i in range(5):
                await _chat(
                    http, {"model": "gpt-4o", "messages": USER}, headers={"X-Request-ID": str(i)}
                )
            stats = await _control(http, "/_mock/stats")
    finally:
        await runner.cleanup()
    assert [c["request_id"] for c in stats["calls"]] == ["2", "3", "4"]
    assert (stats["requests"], stats["prompt_tokens"], stats["completion_tokens"]) == (5, 45, 60)


async def test_shutdown_releases_hanging_requests() -> None:
    """Stopping the server ends hanging requests promptly instead of waiting for them."""
    runner, url = await _start(build_app(MockConfig(hang_rate=1.0)))
    async with aiohttp.ClientSession(url) as http:
        pending = asyncio.ensure_future(_chat(http, {"model": "gpt-4o", "messages": USER}))
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await runner.cleanup()
        assert time.perf_counter() - started < 0.8
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(pending, 2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_exits_cleanly(sig: signal.Signals) -> None:
    """`python -m bradax_cli.mock_openai` prints its URL, serves, and exits 0 on a signal."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bradax_cli.mock_openai", "--port", "0", "--reply-words", "2"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        prefix = "mock-openai listening on http://127.0.0.1:"
        assert line.startswith(prefix)
        assert line.endswith("/v1")
        with _sync_client(line.removeprefix("mock-openai listening on ")[: -len("/v1")]) as c:
            done = c.chat.completions.create(model="gpt-4o", messages=USER)
        assert done.choices[0].message.content == "w0 w1"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == ""
    assert err == ""


# -- hostile behaviours --------------------------------------------------------------------


async def test_redirect_points_to_another_origin_that_counts_hits(
    http: aiohttp.ClientSession,
) -> None:
    """`redirect` answers 302 to /_mock/elsewhere on localhost, where hits (and whether they
    carried a key) are counted."""
    await _control(http, "/_mock/enqueue", [{"redirect": True}])
    body = {"model": "gpt-4o", "messages": USER}
    async with http.post("/v1/chat/completions", json=body, allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    assert location.startswith("http://localhost:")
    assert "/_mock/elsewhere/" in location
    stats = await _control(http, "/_mock/stats")
    assert stats["elsewhere"] == {"hits": 0, "with_authorization": 0}
    assert stats["by_outcome"] == {"redirect": 1}
    target = location.replace("localhost", "127.0.0.1")
    async with (
        aiohttp.ClientSession() as other,
        other.post(target, headers={"Authorization": "Bearer k"}) as followed,
    ):
        assert followed.status == 200
    stats = await _control(http, "/_mock/stats")
    assert stats["elsewhere"] == {"hits": 1, "with_authorization": 1}


async def test_echo_headers_error_repeats_the_authorization_header(
    http: aiohttp.ClientSession,
) -> None:
    """`echo_headers` answers the error status with every request header, the key included,
    in the message, code, type and a response header."""
    await _control(http, "/_mock/enqueue", [{"status": 400, "echo_headers": True}])
    headers = {"Authorization": "Bearer sk-echo-me-0123456789"}
    body = {"model": "gpt-4o", "messages": USER}
    async with http.post("/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert resp.headers["X-Echo"] == "Bearer sk-echo-me-0123456789"
    assert "sk-echo-me-0123456789" in error["message"]
    assert error["code"] == error["type"] == "Bearer sk-echo-me-0123456789"


async def test_oversize_answer_and_oversize_sse_event(http: aiohttp.ClientSession) -> None:
    """`oversize_bytes` pads a JSON answer, or sends one SSE event of at least that size before
    the usual rest of the stream."""
    await _control(http, "/_mock/enqueue", [{"oversize_bytes": 300_000}] * 2)
    async with http.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER}
    ) as resp:
        raw = await resp.read()
    assert resp.status == 200
    assert len(raw) > 300_000
    assert orjson.loads(raw)["usage"]["completion_tokens"] == 12
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    async with http.post("/v1/chat/completions", json=body) as resp:
        events = (await resp.read()).split(b"\n\n")
    sizes = sorted(len(e) for e in events)
    assert sizes[-1] > 300_000
    assert sizes[-2] < 1000
    assert events[-2] == b"data: [DONE]"
    stats = await _control(http, "/_mock/stats")
    assert stats["by_outcome"] == {"oversize": 2}


async def test_malformed_answers_a_truncated_200(http: aiohttp.ClientSession) -> None:
    """`malformed` answers 200 with a body that is not valid JSON, counted as malformed."""
    await _control(http, "/_mock/enqueue", [{"malformed": True}])
    async with http.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER}
    ) as resp:
        assert resp.status == 200
        raw = await resp.read()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    assert (await _control(http, "/_mock/stats"))["by_outcome"] == {"malformed": 1}


def test_cli_closes_slow_and_idle_clients() -> None:
    """The mock's server closes a silent connection, a trickled head, a stalled body and an
    idle keep-alive connection within its timeouts."""
    from tests.conftest import closed_within, trickled_until_closed

    proc = subprocess.Popen(
        [sys.executable, "-m", "bradax_cli.mock_openai", "--port", "0",
         "--keepalive-timeout", "1", "--body-timeout", "1"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1].removesuffix("/v1"))
        address = ("127.0.0.1", port)
        with socket.create_connection(address) as silent:
            assert closed_within(silent, 4)[0] < 3
        with socket.create_connection(address) as slow:
            took, _ = trickled_until_closed(slow, b"GET /v1/models HTTP/1.1\r\nHost: m\r\n", 5)
            assert took < 3
        with socket.create_connection(address) as stalled:
            stalled.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nContent-Length: 100\r\n\r\n{"
            )
            took, answer = closed_within(stalled, 4)
            assert took < 3
            assert answer.startswith(b"HTTP/1.1 408")
        with socket.create_connection(address) as idle:
            idle.sendall(b"GET /v1/models HTTP/1.1\r\nHost: m\r\n\r\n")
            took, answer = closed_within(idle, 4)
            assert answer.startswith(b"HTTP/1.1 200")
            assert took < 3
    finally:
        proc.terminate()
        proc.wait(10)


async def test_scripted_reply_json_and_stream(base_url: str, http: aiohttp.ClientSession) -> None:
    """/_mock/reply fixes the answer's text (JSON, or SSE chunks of chunk_chars) until cleared."""
    script = {"text": "CPF 529.982.247-25", "tool_arguments": '{"a": 1}', "chunk_chars": 4}
    async with http.post("/_mock/reply", json=script) as resp:
        assert resp.status == 200
    status, body = await _chat(http, {"model": "gpt-4.1", "messages": USER})
    assert status == 200
    message = body["choices"][0]["message"]
    assert message["content"] == "CPF 529.982.247-25"
    assert message["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(model="gpt-4.1", messages=USER, stream=True)
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(p or "" for p in pieces) == "CPF 529.982.247-25"
    assert "CPF " in pieces
    await client.close()
    async with http.post("/_mock/reply", json={"text": None}) as resp:
        assert (await resp.json()) == {"scripted": False}
    _, plain = await _chat(http, {"model": "gpt-4.1", "messages": USER, "max_tokens": 2})
    assert plain["choices"][0]["message"]["content"] == "w0 w1"


async def test_scripted_reply_rejects_bad_bodies(http: aiohttp.ClientSession) -> None:
    """A /_mock/reply body with unknown keys or wrong types is a 400."""
    for bad in ({"txt": "x"}, {"text": 1}, {"text": "x", "chunk_chars": 0}, [1]):
        async with http.post("/_mock/reply", json=bad) as resp:
            assert resp.status == 400, bad


async def test_last_request_is_the_body_as_received(http: aiohttp.ClientSession) -> None:
    """/_mock/last_request answers the last chat body exactly as it arrived."""
    body = {"model": "gpt-4.1", "messages": USER, "user": "u1", "metadata": {"k": "v"}}
    await _chat(http, body)
    async with http.get("/_mock/last_request") as resp:
        assert await resp.json() == body
