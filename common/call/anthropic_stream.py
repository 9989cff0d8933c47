"""Chat completions translated to Anthropic Messages: the `message` object, and its events.

`AnthropicStream` is the stream adapter of the Messages face: from the upstream's chat
chunks (after the PII filter) it emits `message_start`, then per content block
`content_block_start` / `content_block_delta` (text_delta, input_json_delta) /
`content_block_stop`, and at the upstream's `[DONE]` `message_delta` with the stop reason
and the usage the call is charged (checked against the bound exactly as the settle checks
it), then `message_stop`. `message_start` cannot know the input tokens yet (a chat stream
reports usage last): it says 0, and `message_delta` carries the real count. A stream that
ends any other way ends with an `error` event.
"""

from __future__ import annotations

from typing import Any

import orjson

from common.call.chat_events import ChatEventTranslator
from common.call.model import Context
from common.llm import StreamCall
from common.wire import count

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _message_id(request_id: str) -> str:
    return f"msg_{request_id.removeprefix('req_')}"


def anthropic_usage(data: dict[str, Any], tokens: tuple[int, int]) -> dict[str, Any]:
    """Usage in Anthropic's fields: cached prompt tokens are cache reads and writes, not input."""
    prompt, completion = tokens
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    details = details if isinstance(details, dict) else {}
    cached, written = count(details.get("cached_tokens")), count(details.get("cache_write_tokens"))
    cached, written = cached or 0, written or 0
    if cached + written > prompt:
        cached = written = 0
    return {
        "input_tokens": prompt - cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def _arguments(raw: object) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) and raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def message_object(
    request_id: str, model: str, data: dict[str, Any], tokens: tuple[int, int]
) -> dict[str, Any]:
    """The `message` for a chat.completion; `tokens`: what the call was charged."""
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    assert isinstance(message, dict)
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            assert isinstance(function, dict)
            content.append(
                {
                    "type": "tool_use",
                    "id": str(call.get("id") or ""),
                    "name": str(function.get("name") or ""),
                    "input": _arguments(function.get("arguments")),
                }
            )
    body: dict[str, Any] = {
        "id": _message_id(request_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(data, tokens),
    }
    if "bradax" in data:
        body["bradax"] = data["bradax"]  # the PII redaction notice
    return body


class AnthropicStream(ChatEventTranslator):
    """The stream adapter of the Messages face (see the module docstring)."""

    def __init__(self, ctx: Context, stream: StreamCall) -> None:
        super().__init__(ctx, stream)
        self.block: int | None = None  # the open content block's index
        self.block_kind = ""
        self.blocks = 0
        self.tools: dict[int, int] = {}  # chat tool index -> block index

    @staticmethod
    def _event(kind: str, payload: dict[str, Any]) -> bytes:
        data = orjson.dumps({"type": kind, **payload})
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        message: dict[str, Any] = {
            "id": _message_id(self.ctx.request_id),
            "type": "message",
            "role": "assistant",
            "model": self.ctx.call.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [self._event("message_start", {"message": message})]

    def _upstream_error(self, error: dict[str, Any]) -> list[bytes]:
        return self._error(str(error.get("message") or "upstream error"))

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.block, self.block_kind = self.blocks, kind
        self.blocks += 1
        out.append(
            self._event("content_block_start", {"index": self.block, "content_block": block})
        )
        return out

    def _close(self) -> list[bytes]:
        if self.block is None:
            return []
        index, self.block = self.block, None
        return [self._event("content_block_stop", {"index": index})]

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        assert isinstance(delta, dict)
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self.block is None or self.block_kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out.append(
                self._event(
                    "content_block_delta",
                    {"index": self.block, "delta": {"type": "text_delta", "text": text}},
                )
            )
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            position = call.get("index") if isinstance(call.get("index"), int) else 0
            assert isinstance(position, int)
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            assert isinstance(function, dict)
            if position not in self.tools:
                block = {
                    "type": "tool_use",
                    "id": str(call.get("id") or f"toolu_{position}"),
                    "name": str(function.get("name") or ""),
                    "input": {},
                }
                out += self._open("tool", block)
                self.tools[position] = self.block if self.block is not None else 0
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments and self.block == self.tools[position]:
                delta_event = {"type": "input_json_delta", "partial_json": arguments}
                out.append(
                    self._event("content_block_delta", {"index": self.block, "delta": delta_event})
                )
        return out

    def _complete(self) -> list[bytes]:
        self.ended = True
        out = self._close()
        stop = STOP_REASONS.get(str(self.finish_reason), "end_turn")
        usage = anthropic_usage(self.usage_chunk, self._charged())
        out.append(
            self._event(
                "message_delta",
                {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage},
            )
        )
        out.append(self._event("message_stop", {}))
        return out

    def _error(self, message: str) -> list[bytes]:
        self.ended = True
        error = {"type": "api_error", "message": message}
        return [*self._close(), self._event("error", {"error": error})]

    def tail(self, outcome: str) -> list[bytes]:
        """The last events of a stream that did not complete (`outcome`: cut, timeout...)."""
        if self.ended:
            return []
        return [*self._start(), *self._error(f"upstream stream ended early ({outcome})")]
