"""Amazon Bedrock's Converse API (`POST /model/{modelId}/converse` and `/converse-stream`):
JSON answers and AWS event streams, with the token arithmetic callers can assert.

* auth: a Bedrock API key (`Authorization: Bearer`, checked against `api_key` when set) or a
  SigV4 signature (verified with botocore when `aws_access_key_id` and
  `aws_secret_access_key` are configured); none at all is a 403;
* the model id (the path) must be one of the configured `models`; the body is validated as
  Converse does (known fields, alternating user / assistant turns starting with a user, no
  blank text, toolConfig whenever toolUse / toolResult blocks appear): a 400
  ValidationException otherwise;
* prompt = 3 + sum(4 + words) over system blocks and messages (+ toolConfig bytes / 4), of
  which `cache` reports reads / writes in cacheReadInputTokens / cacheWriteInputTokens
  (inputTokens is the rest, as Bedrock counts); the reply is "w0 w1 ..." capped by
  inferenceConfig.maxTokens (stopReason max_tokens), or the scripted text and tool arguments
  (a toolUse block `lookup`, stopReason tool_use; completion = its stream pieces);
* errors are AWS JSON (`{"message", "__type"}`, `x-amzn-ErrorType`): 429 ThrottlingException,
  500 InternalServerException, 503 ServiceUnavailableException, ...; `stream_error` sends an
  exception message mid-stream; `cut_after_chunks` drops the connection halfway through a
  message; `malformed` truncates a JSON answer or breaks a stream message's CRC;
  `oversize_bytes` pads an answer or one stream message (in its `p` field, as AWS pads).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Final

import orjson
from aiohttp import web

from bradax_cli.mock import bedrock_wire as aws
from bradax_cli.mock import faults
from bradax_cli.mock.behaviours import ABSENT, HONEST, Behaviour
from bradax_cli.mock.http import Refused, Route, abort, read_json_object
from bradax_cli.mock.state import MockState

_MALFORMED: Final = b'{"output":{"message":{"role":"assistant","content":[{"text":'
_HIDDEN: Final = ("authorization", "x-amz-security-token")
Plan = tuple[list[tuple[str, str]], int, str]
"""(pieces as (kind "text" | "tool", text), completion tokens, stopReason)."""


class Converse:
    """Both Converse endpoints over one mock's state."""

    def __init__(self, state: MockState) -> None:
        self.state = state
        self.record = functools.partial(state.record, protocol="bedrock")

    async def converse(self, request: web.Request) -> web.StreamResponse:
        """POST /model/{modelId}/converse."""
        return await self.handle(request, stream=False)

    async def converse_stream(self, request: web.Request) -> web.StreamResponse:
        """POST /model/{modelId}/converse-stream."""
        return await self.handle(request, stream=True)

    async def handle(self, request: web.Request, stream: bool) -> web.StreamResponse:
        state = self.state
        state.requests += 1
        model = request.match_info["model_id"]
        try:
            body = await read_json_object(request, state.body_timeout)
        except Refused as refused:
            self.record(request, model, stream, refused.outcome)
            if refused.outcome == "400":
                return aws.error(400, "The request body is not a JSON object.")
            return refused.response
        denied = aws.auth_error(state.config, request, await request.read())
        if denied is not None:
            self.record(request, model, stream, "403")
            return denied
        self._keep(request, body)
        if model not in state.models:
            self.record(request, model, stream, "400")
            return aws.error(400, "The provided model identifier is invalid.")
        problem = aws.invalid(body)
        if problem is not None:
            self.record(request, model, stream, "400")
            return aws.error(400, problem)
        prompt = aws.prompt_tokens(body)
        plan = self._plan(body)
        act = state.next_behaviour()
        status = act.status
        if not act.echo_headers:
            act.status = 0  # answered below in Bedrock's shape, after the common faults
        faulted = await faults.before_answer(
            state, request, act, lambda outcome: self.record(request, model, stream, outcome)
        )
        if faulted is not None:
            return faulted
        if status:
            self.record(request, model, stream, str(status))
            return self._status(status, act)
        if stream:
            return await self._stream(request, model, prompt, plan, act)
        return self._json(request, model, prompt, plan, act)

    def _keep(self, request: web.Request, body: dict[str, Any]) -> None:
        """The last request, for tests (credentials left out; the signature's scope kept)."""
        state = self.state
        state.last_body = body
        messages = body.get("messages")
        state.last_messages = messages if isinstance(messages, list) else None
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in _HIDDEN}
        scope = request.headers.get("Authorization", "").partition("Credential=")[2]
        if scope:
            headers["authorization-scope"] = scope.split(",")[0].partition("/")[2]
        state.last_headers = headers

    def _plan(self, body: dict[str, Any]) -> Plan:
        script = self.state.script
        if script is not None:
            pieces = [
                ("tool" if name == "tool_arguments" else "text", piece)
                for name, piece in script.pieces()
                if name != "refusal"
            ]
            return pieces, len(pieces), "tool_use" if script.tool_arguments else "end_turn"
        words = self.state.config.reply_words
        cap = (body.get("inferenceConfig") or {}).get("maxTokens")
        stop = "end_turn"
        if cap is not None and cap < words:
            words, stop = cap, "max_tokens"
        return [("text", f" w{i}" if i else "w0") for i in range(words)], words, stop

    def _status(self, status: int, act: Behaviour) -> web.Response:
        headers = None
        if status == 429 and act.retry_after is not None:
            seconds = act.retry_after
            headers = {"Retry-After": str(int(seconds) if float(seconds).is_integer() else seconds)}
        message = {429: "Too many requests, please wait before trying again. (mock)"}
        return aws.error(status, message.get(status, f"Mock error {status}."), headers=headers)

    def _usage(self, prompt: int, completion: int, act: Behaviour) -> object:
        read, write = act.cache_split(prompt)
        if act.usage is not HONEST:
            return act.usage
        usage: dict[str, Any] = {
            "inputTokens": prompt - read - write,
            "outputTokens": completion,
            "totalTokens": prompt + completion,
        }
        if act.cache != (0, 0):
            usage["cacheReadInputTokens"] = read
            usage["cacheWriteInputTokens"] = write
        return usage

    def _json(
        self, request: web.Request, model: str, prompt: int, plan: Plan, act: Behaviour
    ) -> web.Response:
        pieces, completion, stop = plan
        cache = act.cache_split(prompt)
        if act.cut_after >= 0:
            self.record(request, model, False, "cut", prompt, 0, cache)
            abort(request)
            return web.Response()
        if act.malformed:
            self.record(request, model, False, "malformed", prompt, completion, cache)
            return web.Response(body=_MALFORMED, content_type="application/json")
        outcome = "oversize" if act.oversize else "ok"
        self.record(request, model, False, outcome, prompt, completion, cache)
        content: list[dict[str, Any]] = []
        text = "".join(piece for kind, piece in pieces if kind == "text")
        if text:
            content.append({"text": text})
        arguments = "".join(piece for kind, piece in pieces if kind == "tool")
        if arguments:
            content.append({"toolUse": _tool_use(arguments)})
        payload: dict[str, Any] = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": self._usage(prompt, completion, act),
            "metrics": {"latencyMs": 1},
        }
        if act.usage == ABSENT:
            del payload["usage"]
        if act.oversize:
            payload["padding"] = "x" * act.oversize
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def _stream(
        self, request: web.Request, model: str, prompt: int, plan: Plan, act: Behaviour
    ) -> web.StreamResponse:
        """messageStart, content deltas (a toolUse block after the text), messageStop and
        metadata; cut, broken or interrupted as `act` says."""
        pieces, completion, stop = plan
        cache = act.cache_split(prompt)
        resp = web.StreamResponse(headers={"Content-Type": aws.EVENT_STREAM_CT})
        error_at = act.error_at
        cut_at = act.cut_after if not act.stream_error else -1
        sent = 0
        try:
            await resp.prepare(request)
            await resp.write(aws.event("messageStart", {"role": "assistant"}))
            if act.oversize:
                padded = {"contentBlockIndex": 0, "delta": {"text": ""}, "p": "x" * act.oversize}
                await resp.write(aws.event("contentBlockDelta", padded))
            block, kind_open = 0, ""
            for kind, piece in pieces:
                if sent in (cut_at, error_at):
                    break
                if kind != kind_open:
                    if kind_open:
                        await resp.write(_block_stop(block))
                        block += 1
                    kind_open = kind
                    if kind == "tool":
                        start = {"toolUse": {"toolUseId": "tooluse_mock", "name": "lookup"}}
                        data = {"contentBlockIndex": block, "start": start}
                        await resp.write(aws.event("contentBlockStart", data))
                delta = {"text": piece} if kind == "text" else {"toolUse": {"input": piece}}
                data = {"contentBlockIndex": block, "delta": delta}
                message = aws.event("contentBlockDelta", data)
                if act.malformed and sent == 0:  # the message CRC no longer matches
                    message = message[:-4] + bytes(byte ^ 0xFF for byte in message[-4:])
                if act.chunk_delay:
                    await asyncio.sleep(act.chunk_delay)
                await resp.write(message)
                sent += 1
            if cut_at >= 0:
                self.record(request, model, True, "cut", prompt, sent, cache)
                ending = aws.event("messageStop", {"stopReason": stop})
                await resp.write(ending[: len(ending) // 2])
                abort(request)
                return resp
            if error_at >= 0:
                self.record(request, model, True, "stream_error", prompt, sent, cache)
                await resp.write(aws.exception(act.stream_error or "", "Mock stream error."))
                await resp.write_eof()
                return resp
            if kind_open:
                await resp.write(_block_stop(block))
            await resp.write(aws.event("messageStop", {"stopReason": stop}))
            metadata: dict[str, Any] = {"metrics": {"latencyMs": 1}}
            if act.usage != ABSENT:
                metadata["usage"] = self._usage(prompt, completion, act)
            await resp.write(aws.event("metadata", metadata))
            if act.zero_tail:
                zero = {"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}
                await resp.write(aws.event("metadata", {**metadata, "usage": zero}))
            if act.linger:
                await asyncio.sleep(act.linger)
            await resp.write_eof()
        except ConnectionError:
            self.record(request, model, True, "disconnected", prompt, sent, cache)
            return resp
        outcome = "malformed" if act.malformed else "oversize" if act.oversize else "ok"
        self.record(request, model, True, outcome, prompt, completion, cache)
        return resp


def _block_stop(block: int) -> bytes:
    return aws.event("contentBlockStop", {"contentBlockIndex": block})


def _tool_use(arguments: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = {"arguments": arguments}
    return {"toolUseId": "tooluse_mock", "name": "lookup", "input": parsed}


def routes(state: MockState) -> list[Route]:
    """The routes of Bedrock's Converse API."""
    converse = Converse(state)
    return [
        ("POST", "/model/{model_id}/converse", converse.converse),
        ("POST", "/model/{model_id}/converse-stream", converse.converse_stream),
    ]
