"""An Anthropic Messages stream read back as chat-completion chunks, and its usage counted.

Events (`event: <type>` + `data: {...}`): `message_start` carries the message id, the model
and the input side of the usage (input, cache creation and cache read tokens);
`content_block_start` opens a text or a `tool_use` block (a tool call's id and name);
`content_block_delta` carries text (`text_delta`) or a piece of a tool call's JSON input
(`input_json_delta`), thinking and signature deltas are not relayed; `message_delta` carries
the stop reason and the usage so far (`output_tokens` is the cumulative final count; counts
it repeats from the input side replace those of `message_start`); `message_stop` ends the
stream. Usage is set only at `message_stop`, once every count is final; a stream that ends
before it, or with an `error` event, is left unfinished (the broker charges its bound).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from common.dialect import StreamTally
from common.wire import DONE, Chunks, count, usage

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_USAGE_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def finish_reason(stop_reason: object) -> str:
    """The chat finish_reason of an Anthropic stop_reason (an unknown one is a stop)."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def parse_event(event: bytes) -> tuple[str, dict[str, Any]] | None:
    """(type, data) of one server-sent event, or None when it carries no JSON object."""
    name = ""
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"data:"):
            data.append(line[5:].strip())
    if not data:
        return None
    try:
        payload = orjson.loads(b"\n".join(data))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    kind = payload.get("type")
    return (kind if isinstance(kind, str) else name), payload


class AnthropicTranslator:
    """One Messages stream's events turned into chat chunk events (see the module docstring)."""

    def __init__(self, model: str) -> None:
        self.chunks = Chunks("msg_unknown", model)
        self.started = False
        self.failed = False
        self.finished = False
        self.tools: dict[int, int] = {}  # content block index -> chat tool call index
        # The usage counts so far by Anthropic field (None: not said); `bad`: one was unusable.
        self.counts: dict[str, int | None] = dict.fromkeys((*_USAGE_FIELDS, "output_tokens"))
        self.bad = False

    def feed(self, event: bytes, tally: StreamTally) -> Iterable[bytes]:
        """The chat events for one Anthropic event."""
        if self.failed or tally.done:
            return ()
        parsed = parse_event(event)
        if parsed is None:
            return ()
        kind, data = parsed
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            return ()  # ping, content_block_stop, and event types added later
        out: list[bytes] = handler(data, tally)
        return out

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        return [self.chunks.event({"role": "assistant", "content": ""})]

    def _on_message_start(self, data: dict[str, Any], tally: StreamTally) -> list[bytes]:
        message = data.get("message")
        if isinstance(message, dict):
            if isinstance(message.get("id"), str):
                self.chunks.id = message["id"]
            if isinstance(message.get("model"), str):
                self.chunks.model = message["model"]
            self._read_usage(message.get("usage"), _USAGE_FIELDS)
        return self._start()

    def _on_content_block_start(self, data: dict[str, Any], tally: StreamTally) -> list[bytes]:
        out = self._start()
        block = data.get("content_block")
        index = data.get("index")
        if not isinstance(block, dict):
            return out
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            tally.produced += 1
            out.append(self.chunks.event({"content": block["text"]}))
        elif block.get("type") == "tool_use" and isinstance(index, int):
            position = self.tools[index] = len(self.tools)
            call = {
                "index": position,
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {"name": str(block.get("name") or ""), "arguments": ""},
            }
            tally.produced += 1
            out.append(self.chunks.event({"tool_calls": [call]}))
        return out

    def _on_content_block_delta(self, data: dict[str, Any], tally: StreamTally) -> list[bytes]:
        out = self._start()
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return out
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            tally.produced += 1
            out.append(self.chunks.event({"content": delta["text"]}))
        elif kind == "input_json_delta":
            piece = delta.get("partial_json")
            index = data.get("index")
            position = self.tools.get(index) if isinstance(index, int) else None
            if position is not None and isinstance(piece, str) and piece:
                call = {"index": position, "function": {"arguments": piece}}
                tally.produced += 1
                out.append(self.chunks.event({"tool_calls": [call]}))
        return out  # thinking, signature and citation deltas are not part of a chat answer

    def _on_message_delta(self, data: dict[str, Any], tally: StreamTally) -> list[bytes]:
        out = self._start()
        self._read_usage(data.get("usage"), (*_USAGE_FIELDS, "output_tokens"))
        delta = data.get("delta")
        reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if reason is not None and not self.finished:
            self.finished = True
            out.append(self.chunks.event({}, finish_reason(reason)))
        return out

    def _on_message_stop(self, data: dict[str, Any], tally: StreamTally) -> list[bytes]:
        out = self._start()
        if not self.finished:
            self.finished = True
            out.append(self.chunks.event({}, "stop"))
        counts = self.counts
        given, output = counts["input_tokens"], counts["output_tokens"]
        if self.bad:
            tally.usage_invalid = True
        elif given is not None and output is not None:
            read = counts["cache_read_input_tokens"] or 0
            write = counts["cache_creation_input_tokens"] or 0
            tally.prompt_tokens = given + read + write
            tally.completion_tokens = output
            tally.cache_read, tally.cache_write = read, write
            if not tally.strip_usage:
                used = usage(tally.prompt_tokens, output, read, write)
                out.append(self.chunks.event(None, used=used))
        out.append(DONE)
        tally.done = True
        return out

    def _on_error(self, data: dict[str, Any], tally: StreamTally) -> list[bytes]:
        self.failed = True  # nothing more is relayed; the stream is unfinished
        return []

    def _read_usage(self, found: object, fields: tuple[str, ...]) -> None:
        """Take the counts a usage object gives (a later one replaces an earlier one)."""
        if found is None:
            return
        if not isinstance(found, dict):
            self.bad = True
            return
        for name in fields:
            value = found.get(name)
            if value is None:
                continue  # not said here: an earlier count stands
            if count(value) is None:
                self.bad = True
            else:
                self.counts[name] = value
