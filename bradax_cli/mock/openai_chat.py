"""OpenAI chat completions (`POST /v1/chat/completions`): JSON and Server-Sent Events answers,
their usage, and the token arithmetic callers can assert.

* prompt_tokens = 3 + sum over messages of (4 + whitespace-separated words of the text);
  list contents count the words of their `{"type": "text"}` parts; `tools`, `functions`,
  `response_format` and `prediction` add a token per 4 bytes of their JSON (as billed).
* the reply is "w0 w1 w2 ..."; completion_tokens = min(reply_words, max_completion_tokens or
  max_tokens); finish_reason is "length" when max tokens cut the reply short, else "stop".
* a scripted reply carries exactly its text; streams split it into chunks of `chunk_chars`
  characters and completion_tokens is the number of chunks.

The hot path avoids pydantic and per-request allocations it can precompute, and uses orjson.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final, cast

import orjson
from aiohttp import web

from bradax_cli.mock import faults
from bradax_cli.mock.behaviours import ABSENT, HONEST, Behaviour
from bradax_cli.mock.config import is_int
from bradax_cli.mock.http import (
    JSON_CT,
    SSE_DONE,
    SSE_HEADERS,
    Route,
    abort,
    error,
)
from bradax_cli.mock.openai_api import intake
from bradax_cli.mock.script import Script
from bradax_cli.mock.state import MockState

PATH: Final = "/v1/chat/completions"
_BILLED_PARAMS: Final = ("tools", "functions", "response_format", "prediction")
_MALFORMED: Final = b'{"id":"chatcmpl-x","choices":[{"index":0,'
_ZERO_USAGE: Final = b'{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}'


def prompt_tokens(messages: list[Any], body: dict[str, Any] | None = None) -> int | None:
    """3 + sum(4 + words) over messages, plus the billed parameters; None when a message is
    not an object."""
    total = 3
    for name in _BILLED_PARAMS:
        if body is not None and body.get(name) is not None:
            total += len(orjson.dumps(body[name])) // 4
    for msg in messages:
        if not isinstance(msg, dict):
            return None
        content = msg.get("content")
        total += 4
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text = part.get("text")
                    total += len(text.split()) if isinstance(text, str) else 0
    return total


class ChatCompletions:
    """The chat completions endpoint over one mock's state."""

    def __init__(self, state: MockState) -> None:
        self.state = state
        self._reply_cache: dict[int, str] = {}
        self._word_cache: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        state = self.state
        body = await intake(state, request)
        if not isinstance(body, dict):
            return body
        model = body.get("model")
        stream = body.get("stream") is True
        bad = self._validate(body, model)
        if bad is not None:
            state.record(request, model, stream, str(bad.status))
            return bad
        messages: list[Any] = body["messages"]
        state.last_messages = messages
        state.last_body = body
        state.last_headers = {
            name.lower(): value
            for name, value in request.headers.items()
            if name.lower() not in ("authorization", "api-key")
        }
        prompt = prompt_tokens(messages, body)
        if prompt is None:
            state.record(request, model, stream, "400")
            return error(400, "Each message must be an object.", param="messages")
        if state.script is not None:
            return await self._scripted(request, body, cast(str, model), prompt, stream)
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        if limit is not None and (not is_int(limit) or limit < 1):
            state.record(request, model, stream, "400")
            return error(400, "max_tokens must be an integer >= 1.", param="max_tokens")
        words = state.config.reply_words
        finish = "stop"
        if limit is not None and limit < words:
            words, finish = limit, "length"

        act = state.next_behaviour()
        faulted = await faults.before_answer(
            state, request, act, lambda outcome: state.record(request, model, stream, outcome)
        )
        if faulted is not None:
            return faulted
        model = cast(str, model)  # checked by _validate
        if stream:
            options = body.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream(request, model, prompt, words, finish, usage, act)
        return self._json(request, model, prompt, words, finish, act)

    def _validate(self, body: dict[str, Any], model: object) -> web.Response | None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error(
                400,
                "'messages' must be a non-empty array of message objects.",
                param="messages",
            )
        if not isinstance(model, str) or not model:
            return error(400, "you must provide a model parameter", param="model")
        if model not in self.state.models:
            return error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return None

    def _json(
        self,
        request: web.Request,
        model: str,
        prompt: int,
        words: int,
        finish: str,
        act: Behaviour,
    ) -> web.Response:
        """A chat.completion answer (or its cut/malformed/oversize/lying variant)."""
        state = self.state
        if act.cut_after >= 0:
            state.record(request, model, False, "cut", prompt, 0)
            abort(request)
            return web.Response()
        if act.malformed:
            state.record(request, model, False, "malformed", prompt, words)
            return web.Response(body=_MALFORMED, content_type=JSON_CT)
        cached = act.cache_split(prompt)[0]  # OpenAI caches by itself: reads, never writes
        outcome = "oversize" if act.oversize else "ok"
        state.record(request, model, False, outcome, prompt, words, cache=(cached, 0))
        payload = {
            "id": f"chatcmpl-{state.rng.getrandbits(96):024x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self._reply(words),
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": words,
                "total_tokens": prompt + words,
            },
            "system_fingerprint": "fp_mock",
        }
        if cached:
            payload["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}  # type: ignore[index]
        if act.oversize:
            payload["padding"] = "x" * act.oversize
        act.report_usage(payload, "usage")
        return web.Response(body=orjson.dumps(payload), content_type=JSON_CT)

    async def _stream(
        self,
        request: web.Request,
        model: str,
        prompt: int,
        words: int,
        finish: str,
        include_usage: bool,
        act: Behaviour,
    ) -> web.StreamResponse:
        """chat.completion.chunk events (cut, oversize or lying about usage as `act` says)."""
        state = self.state
        cut_after = act.cut_after
        oversize = act.oversize
        resp = web.StreamResponse(headers=SSE_HEADERS)
        head = b"".join(
            (
                b'data: {"id":"chatcmpl-',
                f"{state.rng.getrandbits(96):024x}".encode(),
                b'","object":"chat.completion.chunk","created":',
                str(int(time.time())).encode(),
                b',"model":',
                orjson.dumps(model),
                b',"system_fingerprint":"fp_mock","choices":[{"index":0,"delta":',
            )
        )
        tail = b',"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}\n\n' if include_usage else b"}\n\n"
        )
        sent = 0
        cached = act.cache_split(prompt)[0]
        try:
            await resp.prepare(request)
            await resp.write(head + b'{"role":"assistant","content":"","refusal":null}' + tail)
            if oversize:
                await resp.write(head + orjson.dumps({"content": "x" * oversize}) + tail)
            todo = words if cut_after < 0 else min(words, cut_after)
            if act.stream_error:
                todo = min(words, act.error_at)
            for i in range(todo):
                if act.chunk_delay:
                    await asyncio.sleep(act.chunk_delay)
                await resp.write(head + orjson.dumps({"content": self._word(i)}) + tail)
                sent += 1
            if act.stream_error:
                error = {"message": "Mock stream error.", "type": act.stream_error}
                await resp.write(b"data: " + orjson.dumps({"error": error}) + b"\n\n")
                state.record(request, model, True, "stream_error", prompt, sent)
                return resp
            if cut_after >= 0:
                state.record(request, model, True, "cut", prompt, sent)
                abort(request)
                return resp
            end = b',"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]'
            await resp.write(
                head + b"{}" + end + (b',"usage":null}\n\n' if include_usage else b"}\n\n")
            )
            if include_usage and act.usage != ABSENT:
                claimed: dict[str, Any] = {
                    "prompt_tokens": prompt,
                    "completion_tokens": words,
                    "total_tokens": prompt + words,
                }
                if cached:
                    claimed["prompt_tokens_details"] = {"cached_tokens": cached}
                if act.usage is not HONEST:
                    claimed = act.usage  # type: ignore[assignment]
                # Reuse the id/created/model prefix but with an empty choices list.
                prefix = head[: head.index(b',"choices":')]
                usage = orjson.dumps(claimed)
                await resp.write(prefix + b',"choices":[],"usage":' + usage + b"}\n\n")
                if act.zero_tail:
                    await resp.write(prefix + b',"choices":[],"usage":' + _ZERO_USAGE + b"}\n\n")
            await resp.write(SSE_DONE)
            if act.linger:
                await asyncio.sleep(act.linger)
        except ConnectionError:
            state.record(request, model, True, "disconnected", prompt, sent)
            return resp
        outcome = "oversize" if oversize else "ok"
        state.record(request, model, True, outcome, prompt, words, cache=(cached, 0))
        return resp

    async def _scripted(
        self, request: web.Request, body: dict[str, Any], model: str, prompt: int, stream: bool
    ) -> web.StreamResponse:
        """Answer with the scripted text (JSON, or SSE in chunks of `chunk_chars`)."""
        state = self.state
        script = cast(Script, state.script)
        pieces = script.pieces()
        completion = len(pieces)
        state.record(request, model, stream, "ok", prompt, completion)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        base = {
            "id": f"chatcmpl-{state.rng.getrandbits(96):024x}",
            "created": int(time.time()),
            "model": model,
        }
        if not stream:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": script.text,
                "refusal": script.refusal,
            }
            if script.tool_arguments is not None:
                message["tool_calls"] = [
                    {
                        "id": "call_mock",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": script.tool_arguments},
                    }
                ]
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            payload = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return web.Response(body=orjson.dumps(payload), content_type=JSON_CT)
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        with contextlib.suppress(ConnectionError):
            await send({"role": "assistant", "content": ""})
            for field_name, piece in pieces:
                if field_name == "tool_arguments":
                    call = {"index": 0, "function": {"arguments": piece}}
                    await send({"tool_calls": [call]})
                else:
                    await send({field_name: piece})
            await send({}, "stop")
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True:
                chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await resp.write(SSE_DONE)
        return resp

    def _reply(self, n: int) -> str:
        text = self._reply_cache.get(n)
        if text is None:
            text = " ".join(f"w{i}" for i in range(n))
            if len(self._reply_cache) < 4096:
                self._reply_cache[n] = text
        return text

    def _word(self, i: int) -> str:
        cache = self._word_cache
        while len(cache) <= i:
            k = len(cache)
            cache.append(f"w{k}" if k == 0 else f" w{k}")
        return cache[i]


def routes(state: MockState) -> list[Route]:
    """The routes of the chat completions protocol."""
    return [("POST", PATH, ChatCompletions(state).handle)]
