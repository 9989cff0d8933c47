"""Anthropic Messages (`POST /v1/messages`): JSON and server-sent event answers in Anthropic's
own shapes, with the same one-shot behaviours as the chat endpoint.

* the key is checked in `x-api-key` (when the mock has one), `anthropic-version` is
  required, and the body is checked as the real API checks it (model, max_tokens,
  messages); errors are `{"type": "error", "error": {"type", "message"}}`;
* the reply is "w0 w1 w2 ..."; output_tokens = min(reply_words, max_tokens), stop_reason
  max_tokens when that cut it short, else end_turn; a scripted reply carries its text (and
  a `tool_use` block for its tool arguments, stop_reason tool_use), streamed in pieces of
  `chunk_chars` characters, output_tokens the number of pieces;
* a stream is message_start, content_block_start, ping, content_block_delta..., then
  content_block_stop, message_delta (stop reason, output_tokens) and message_stop;
* faults: latency, hang, redirect, `status` (429 rate_limit_error with Retry-After, 529
  overloaded_error, ...), echo_headers, cut_after_chunks (content deltas), malformed,
  oversize_bytes, `usage` (verbatim in place of the usage: the message's, or the stream's
  message_delta's; "absent" leaves it out) and `cache` (prompt tokens reported as cache
  reads and writes); `trailing_zero_usage` does not apply (a Messages stream reports
  usage once, cumulatively); see `anthropic_wire` for the token arithmetic.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
from typing import Any, Final

import orjson
from aiohttp import web

from bradax_cli.mock import anthropic_wire as wire
from bradax_cli.mock import faults
from bradax_cli.mock.behaviours import ABSENT, HONEST, Behaviour
from bradax_cli.mock.http import JSON_CT, SSE_HEADERS, Refused, Route, abort, read_json_object
from bradax_cli.mock.script import Script
from bradax_cli.mock.state import MockState

PATH: Final = "/v1/messages"
PROTOCOL: Final = "anthropic"
_MALFORMED: Final = b'{"id":"msg_x","type":"message","content":[{"type":"text",'
_HIDDEN: Final = ("x-api-key", "authorization")


class Messages:
    """The Messages endpoint over one mock's state."""

    def __init__(self, state: MockState) -> None:
        self.state = state
        self._record = functools.partial(state.record, protocol=PROTOCOL)

    async def _intake(self, request: web.Request) -> dict[str, Any] | web.StreamResponse:
        """A counted request's JSON body, or the answer refusing it (key, slow or bad body)."""
        state = self.state
        state.requests += 1
        key = state.config.api_key
        given = request.headers.get("x-api-key")
        if key is not None and (given is None or not hmac.compare_digest(given, key)):
            self._record(request, None, False, "401")
            return wire.error(401, "invalid x-api-key")
        try:
            return await read_json_object(request, state.body_timeout)
        except Refused as refused:
            self._record(request, None, False, refused.outcome)
            if refused.outcome == "400":
                return wire.error(400, "The request body is not a valid JSON object.")
            return refused.response

    def _remember(self, request: web.Request, body: dict[str, Any]) -> None:
        """Keep the request's body and headers (credentials left out) for the tests."""
        self.state.last_body = body
        self.state.last_headers = {
            name.lower(): value
            for name, value in request.headers.items()
            if name.lower() not in _HIDDEN
        }

    async def count(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/messages/count_tokens: the prompt tokens /v1/messages would bill (free)."""
        body = await self._intake(request)
        if not isinstance(body, dict):
            return body
        bad = wire.invalid({**body, "max_tokens": 1}, self.state.models)
        if bad is None and set(body) - COUNTED:
            bad = wire.error(
                400, f"{sorted(set(body) - COUNTED)[0]}: Extra inputs are not permitted"
            )
        if bad is not None:
            self._record(request, body.get("model"), False, str(bad.status))
            return bad
        self._remember(request, body)
        faulted = await self._fault(request, self.state.next_behaviour(), body["model"], False)
        if faulted is not None:
            return faulted
        self._record(request, body["model"], False, "count")
        return web.json_response({"input_tokens": wire.prompt_tokens(body)})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/messages."""
        state = self.state
        body = await self._intake(request)
        if not isinstance(body, dict):
            return body
        model = body.get("model")
        stream = body.get("stream") is True
        bad = (
            wire.error(400, "anthropic-version: header is required")
            if "anthropic-version" not in request.headers
            else wire.invalid(body, state.models)
        )
        if bad is not None:
            self._record(request, model, stream, str(bad.status))
            return bad
        state.last_messages = body["messages"]
        self._remember(request, body)
        model = str(model)  # checked by `invalid`
        act = state.next_behaviour()
        faulted = await self._fault(request, act, model, stream)
        if faulted is not None:
            return faulted
        prompt = wire.prompt_tokens(body)
        cache = act.cache_split(prompt)
        if state.script is not None:
            return await self._scripted(request, body, prompt, cache, stream)
        words = min(state.config.reply_words, body["max_tokens"])
        stop = "max_tokens" if words < state.config.reply_words else "end_turn"
        answer_id = f"msg_{state.rng.getrandbits(96):024x}"
        if stream:
            return await self._stream(request, answer_id, model, prompt, cache, words, stop, act)
        return self._json(request, answer_id, model, prompt, cache, words, stop, act)

    async def _fault(
        self, request: web.Request, act: Behaviour, model: object, stream: bool
    ) -> web.StreamResponse | None:
        """Latency, then a hang, redirect or error status in Anthropic's shape (or None)."""
        if act.latency_ms > 0:
            await asyncio.sleep(act.latency_ms / 1000)
        outcome = "hang" if act.hang else "redirect" if act.redirect else str(act.status or "")
        if outcome:
            self._record(request, model, stream, outcome)
        if act.hang:
            return await faults.hang(self.state, request)
        if act.redirect:
            return faults.redirect(request, act.redirect)
        if act.status:
            if act.echo_headers:
                return wire.echo_error(request, act.status)
            headers = None
            if act.status == 429 and act.retry_after is not None:
                headers = {"retry-after": f"{act.retry_after:g}"}
            return wire.error(act.status, headers=headers)
        return None

    def _json(
        self,
        request: web.Request,
        answer_id: str,
        model: str,
        prompt: int,
        cache: tuple[int, int],
        words: int,
        stop: str,
        act: Behaviour,
    ) -> web.Response:
        """A Messages `message` (or its cut, malformed, oversize or lying variant)."""
        if act.cut_after >= 0:
            self._record(request, model, False, "cut", prompt, 0, cache)
            abort(request)
            return web.Response()
        if act.malformed:
            self._record(request, model, False, "malformed", prompt, words, cache)
            return web.Response(body=_MALFORMED, content_type=JSON_CT)
        outcome = "oversize" if act.oversize else "ok"
        self._record(request, model, False, outcome, prompt, words, cache)
        text = " ".join(f"w{i}" for i in range(words))
        payload = _message(answer_id, model, [{"type": "text", "text": text}], stop)
        payload["usage"] = wire.usage(prompt, words, cache)
        if act.oversize:
            payload["padding"] = "x" * act.oversize
        act.report_usage(payload, "usage")
        return web.Response(body=orjson.dumps(payload), content_type=JSON_CT)

    async def _stream(
        self,
        request: web.Request,
        answer_id: str,
        model: str,
        prompt: int,
        cache: tuple[int, int],
        words: int,
        stop: str,
        act: Behaviour,
    ) -> web.StreamResponse:
        """The Messages events of the reply (cut, oversize or lying as `act` says)."""
        honest = wire.usage(prompt, words, cache)
        start_usage = None if act.usage == ABSENT else honest
        end_usage: object = {"output_tokens": words}
        if act.usage == ABSENT:
            end_usage = None
        elif act.usage is not HONEST:
            end_usage = act.usage
        resp = web.StreamResponse(headers=SSE_HEADERS)
        sent = 0
        try:
            await resp.prepare(request)
            await resp.write(wire.message_start(answer_id, model, start_usage))
            await resp.write(wire.block_start(0, {"type": "text", "text": ""}))
            await resp.write(wire.PING)
            if act.oversize:
                await resp.write(wire.text_delta(0, "x" * act.oversize))
            todo = words if act.cut_after < 0 else min(words, act.cut_after)
            for i in range(todo):
                if act.chunk_delay:
                    await asyncio.sleep(act.chunk_delay)
                await resp.write(wire.text_delta(0, f" w{i}" if i else "w0"))
                sent += 1
            if act.stream_error:
                error = {"type": act.stream_error, "message": "Mock stream error."}
                await resp.write(wire.event({"type": "error", "error": error}))
                self._record(request, model, True, "stream_error", prompt, sent, cache)
                return resp
            if act.cut_after >= 0:
                self._record(request, model, True, "cut", prompt, sent, cache)
                abort(request)
                return resp
            await resp.write(wire.block_stop(0))
            await resp.write(wire.message_end(stop, end_usage))
            if act.linger:
                await asyncio.sleep(act.linger)
        except ConnectionError:
            self._record(request, model, True, "disconnected", prompt, sent, cache)
            return resp
        outcome = "oversize" if act.oversize else "ok"
        self._record(request, model, True, outcome, prompt, words, cache)
        return resp

    async def _scripted(
        self,
        request: web.Request,
        body: dict[str, Any],
        prompt: int,
        cache: tuple[int, int],
        stream: bool,
    ) -> web.StreamResponse:
        """Answer with the scripted text and tool arguments (JSON, or events in pieces)."""
        state = self.state
        script = state.script
        assert isinstance(script, Script)
        pieces = script.pieces()
        model = body["model"]
        self._record(request, model, stream, "ok", prompt, len(pieces), cache)
        used = wire.usage(prompt, len(pieces), cache)
        stop = "tool_use" if script.tool_arguments else "refusal" if script.refusal else "end_turn"
        answer_id = f"msg_{state.rng.getrandbits(96):024x}"
        text = (script.text or "") + (script.refusal or "")
        if not stream:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            if script.tool_arguments is not None:
                blocks.append(_tool_use(script.tool_arguments))
            payload = {**_message(answer_id, model, blocks, stop), "usage": used}
            return web.Response(body=orjson.dumps(payload), content_type=JSON_CT)
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            await resp.write(wire.message_start(answer_id, model, used))
            index = 0
            if text:
                await resp.write(wire.block_start(0, {"type": "text", "text": ""}))
                for name, piece in pieces:
                    if name != "tool_arguments":
                        await resp.write(wire.text_delta(0, piece))
                await resp.write(wire.block_stop(0))
                index = 1
            if script.tool_arguments:
                start = {**_tool_use(""), "input": {}}
                await resp.write(wire.block_start(index, start))
                for name, piece in pieces:
                    if name == "tool_arguments":
                        await resp.write(wire.json_delta(index, piece))
                await resp.write(wire.block_stop(index))
            await resp.write(wire.message_end(stop, {"output_tokens": len(pieces)}))
        return resp


def _message(
    answer_id: str, model: str, content: list[dict[str, Any]], stop: str
) -> dict[str, Any]:
    return {
        "id": answer_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
    }


def _tool_use(arguments: str) -> dict[str, Any]:
    """The scripted tool call (`lookup`), its input parsed from the scripted arguments."""
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        value = {}
    return {"type": "tool_use", "id": "toolu_mock", "name": "lookup", "input": value}


def routes(state: MockState) -> list[Route]:
    """The routes of the Messages protocol."""
    messages = Messages(state)
    return [("POST", PATH, messages.handle), ("POST", PATH + "/count_tokens", messages.count)]


# What count_tokens takes of a Messages request.
COUNTED: Final = frozenset({"model", "system", "messages", "tools", "tool_choice", "thinking"})
