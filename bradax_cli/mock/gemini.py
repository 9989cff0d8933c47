"""Google Gemini (`POST /v1beta/models/{model}:generateContent` and
`:streamGenerateContent?alt=sse`): JSON and server-sent answers in Gemini's shapes, its
`usageMetadata` and the token arithmetic of `gemini_wire`.

* the reply is "w0 w1 w2 ..."; candidatesTokenCount = min(reply_words, maxOutputTokens);
  finishReason is MAX_TOKENS when the cap cut the reply short, else STOP.
* a stream sends a chunk per word, each with the usage so far; the last chunk carries the
  finishReason and the final usage (there is no [DONE]).
* `cache`: that many prompt tokens are reported as `cachedContentTokenCount` (part of
  promptTokenCount); Gemini reports no cache writes, so none are recorded.
* a scripted reply carries its text (chunks of `chunk_chars` in a stream) and its tool
  arguments as one `functionCall` of `lookup` (with a thoughtSignature, as Gemini sends);
  its completion tokens are the number of chunks. A scripted refusal answers as Gemini's
  safety blocks: with no text, the prompt blocked (promptFeedback.blockReason, no
  candidate); with text, the candidate stopped with finishReason SAFETY.
* `malformed` sends a truncated body (a truncated event in a stream); streams need alt=sse.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final, cast

import orjson
from aiohttp import web

from bradax_cli.mock.behaviours import HONEST, Behaviour
from bradax_cli.mock.gemini_wire import (
    KEY_HEADER,
    auth_error,
    before_answer,
    google_error,
    invalid,
    max_output,
    prompt_tokens,
)
from bradax_cli.mock.http import JSON_CT, SSE_HEADERS, Refused, Route, abort, read_json_object
from bradax_cli.mock.script import Script
from bradax_cli.mock.state import MockState

PREFIX: Final = "/v1beta/models/"
METHODS: Final = ("generateContent", "streamGenerateContent")
_MALFORMED: Final = b'{"candidates":[{"content":{"parts":[{"text":'
_ZERO_USAGE: Final = {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0}


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """A usageMetadata object."""
    found: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if cached:
        found["cachedContentTokenCount"] = cached
    return found


class GenerateContent:
    """Both generate methods over one mock's state."""

    def __init__(self, state: MockState) -> None:
        self.state = state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """POST /v1beta/models/{model}:{method}."""
        state = self.state
        state.requests += 1
        model, _, method = request.match_info["tail"].rpartition(":")
        stream = method == "streamGenerateContent"

        def record(outcome: str, prompt: int = 0, completion: int = 0, cached: int = 0) -> None:
            state.record(
                request, model, stream, outcome, prompt, completion,
                cache=(cached, 0), protocol="gemini",
            )  # fmt: skip

        denied = auth_error(state.config, request)
        if denied is not None:
            record(str(denied.status))
            return denied
        try:
            body = await read_json_object(request, state.body_timeout)
        except Refused as refused:
            record(refused.outcome)
            if refused.outcome == "400":
                return google_error(400, "Invalid JSON payload received.")
            return refused.response
        if method not in METHODS or not model:
            record("404")
            return google_error(404, f"Method not found: {method}.")
        if model not in state.models:
            record("404")
            return google_error(
                404,
                f"models/{model} is not found for API version v1beta, or is not supported "
                f"for {method}. Call ListModels to see the list of available models.",
            )
        if stream and request.query.get("alt") != "sse":
            record("400")
            return google_error(400, "This mock streams server-sent events only (alt=sse).")
        problem = invalid(body)
        if problem is not None:
            record("400")
            return google_error(400, problem)
        state.last_messages = body["contents"]
        state.last_body = body
        state.last_headers = {
            name.lower(): value
            for name, value in request.headers.items()
            if name.lower() not in ("authorization", KEY_HEADER)
        }
        prompt = prompt_tokens(body)
        base = {"modelVersion": model, "responseId": f"{state.rng.getrandbits(64):016x}"}
        if state.script is not None:
            pieces = [p for p in state.script.pieces() if p[0] != "refusal"]
            record("ok", prompt, len(pieces))
            if stream:
                return await self._scripted_stream(request, base, prompt, pieces)
            return _json(scripted(state.script, base, prompt, len(pieces)))
        act = state.next_behaviour()
        faulted = await before_answer(state, request, act, record)
        if faulted is not None:
            return faulted
        words = state.config.reply_words
        limit = max_output(body)
        finish = "STOP"
        if limit is not None and limit < words:
            words, finish = limit, "MAX_TOKENS"
        cached = act.cache_split(prompt)[0]
        if stream:
            return await self._stream(request, base, prompt, words, finish, cached, act, record)
        if act.cut_after >= 0:
            record("cut", prompt, 0, cached)
            abort(request)
            return web.Response()
        if act.malformed:
            record("malformed", prompt, words, cached)
            return web.Response(body=_MALFORMED, content_type=JSON_CT)
        record("oversize" if act.oversize else "ok", prompt, words, cached)
        payload = {
            "candidates": [candidate([{"text": _reply(words)}], finish)],
            "usageMetadata": usage(prompt, words, cached),
            **base,
        }
        if act.oversize:
            payload["padding"] = "x" * act.oversize
        act.report_usage(payload, "usageMetadata")
        return _json(payload)

    async def _stream(
        self,
        request: web.Request,
        base: dict[str, Any],
        prompt: int,
        words: int,
        finish: str,
        cached: int,
        act: Behaviour,
        record: Callable[..., None],
    ) -> web.StreamResponse:
        """A chunk per word; the last with the finishReason and the final usage."""
        resp = web.StreamResponse(headers=SSE_HEADERS)
        sent = 0
        honest = act.usage is HONEST
        try:
            await resp.prepare(request)
            if act.oversize:
                await _send(resp, {"candidates": [candidate([{"text": "x" * act.oversize}])]})
            if act.malformed:
                await resp.write(b"data: " + _MALFORMED + b"\r\n\r\n")
                record("malformed", prompt, 0, cached)
                return resp
            todo = words if act.cut_after < 0 else min(words, act.cut_after)
            if act.stream_error:
                todo = min(words, act.error_at)
            for i in range(todo):
                if act.chunk_delay:
                    await asyncio.sleep(act.chunk_delay)
                last = i == words - 1 and act.cut_after < 0 and not act.stream_error
                chunk = {
                    "candidates": [candidate([{"text": _word(i)}], finish if last else None)],
                    **base,
                }
                if last:
                    chunk["usageMetadata"] = usage(prompt, words, cached)
                    act.report_usage(chunk, "usageMetadata")
                elif honest:
                    chunk["usageMetadata"] = usage(prompt, i + 1, cached)
                await _send(resp, chunk)
                sent += 1
            if act.stream_error:
                error = {"code": 500, "message": "Mock stream error.", "status": act.stream_error}
                await _send(resp, {"error": error})
                record("stream_error", prompt, sent, cached)
                return resp
            if act.cut_after >= 0:
                record("cut", prompt, sent, cached)
                abort(request)
                return resp
            if words == 0:
                chunk = {"candidates": [candidate([{"text": ""}], finish)], **base}
                chunk["usageMetadata"] = usage(prompt, 0, cached)
                act.report_usage(chunk, "usageMetadata")
                await _send(resp, chunk)
            if act.zero_tail:
                await _send(resp, {"usageMetadata": _ZERO_USAGE, **base})
            if act.linger:
                await asyncio.sleep(act.linger)
        except ConnectionError:
            record("disconnected", prompt, sent, cached)
            return resp
        record("oversize" if act.oversize else "ok", prompt, words, cached)
        return resp

    async def _scripted_stream(
        self,
        request: web.Request,
        base: dict[str, Any],
        prompt: int,
        pieces: list[tuple[str, str]],
    ) -> web.StreamResponse:
        """The scripted text in chunks, then its function call, the last chunk ending it."""
        script = cast(Script, self.state.script)
        final = scripted(script, base, prompt, len(pieces))
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        texts = [piece for name, piece in pieces if name == "content"]
        with contextlib.suppress(ConnectionError):
            if "candidates" in final:
                ending = final["candidates"][0]
                calls = [p for p in ending["content"]["parts"] if "functionCall" in p]
                steps: list[list[dict[str, Any]]] = [[{"text": t}] for t in texts]
                if calls:
                    steps.append(calls)
                for part in steps[:-1]:
                    await _send(resp, {"candidates": [candidate(part)], **base})
                ending["content"]["parts"] = steps[-1] if steps else [{"text": ""}]
            await _send(resp, final)
        return resp


def candidate(parts: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
    """The one candidate of an answer or chunk."""
    found: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        found["finishReason"] = finish
    return found


def scripted(script: Script, base: dict[str, Any], prompt: int, pieces: int) -> dict[str, Any]:
    """The whole scripted answer (a safety block for a refusal)."""
    if script.refusal is not None and not script.text:
        return {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt},
            **base,
        }
    parts: list[dict[str, Any]] = [{"text": script.text}] if script.text else []
    if script.tool_arguments is not None:
        try:
            args = orjson.loads(script.tool_arguments)
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            args = {"arguments": script.tool_arguments}  # Gemini's args are an object
        call = {"functionCall": {"name": "lookup", "args": args}, "thoughtSignature": "c2ln"}
        parts.append(call)
    finish = "SAFETY" if script.refusal is not None else "STOP"
    return {
        "candidates": [candidate(parts, finish)],
        "usageMetadata": usage(prompt, pieces),
        **base,
    }


def _json(payload: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type=JSON_CT)


async def _send(resp: web.StreamResponse, chunk: dict[str, Any]) -> None:
    await resp.write(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")


def _reply(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def _word(i: int) -> str:
    return f"w{i}" if i == 0 else f" w{i}"


def routes(state: MockState) -> list[Route]:
    """The routes of the Gemini protocol (the model and method share one path segment)."""
    return [("POST", PREFIX + "{tail}", GenerateContent(state).handle)]
