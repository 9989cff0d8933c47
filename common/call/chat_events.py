"""Re-speaking an upstream chat-completions SSE stream in another face's events.

The stream adapters of the translated faces (Responses, Anthropic Messages) share this
reader: it splits the relayed bytes into whole events, keeps the usage chunk (billing reads
the upstream's own usage, not this), and hands each choice, the end and an upstream error to
the face's own event writer.
"""

from __future__ import annotations

from typing import Any

import orjson

from common.call.model import Context
from common.llm import StreamCall


class ChatEventTranslator:
    """Base of a face's stream adapter; subclasses write their face's events."""

    def __init__(self, ctx: Context, stream: StreamCall) -> None:
        self.ctx = ctx
        self.stream = stream
        self.buffer = b""  # a chat event not yet whole
        self.started = False  # the face's opening events are out
        self.finish_reason: object = None
        self.usage_chunk: dict[str, Any] = {}
        self.ended = False

    def _charged(self) -> tuple[int, int]:
        """The tokens the call is charged (what the settle will find)."""
        charge = self.ctx.charge(self.stream)
        return charge.prompt, charge.completion

    def _start(self) -> list[bytes]:
        """The face's opening events (once)."""
        raise NotImplementedError

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        """The events for one choice of a chat chunk."""
        raise NotImplementedError

    def _complete(self) -> list[bytes]:
        """The closing events, at the chat stream's [DONE]."""
        raise NotImplementedError

    def _upstream_error(self, error: dict[str, Any]) -> list[bytes]:
        """The events for an error the upstream sent in the stream."""
        raise NotImplementedError

    def feed(self, part: bytes) -> list[bytes]:
        """The face's events for a piece of the chat stream (whole events are parsed)."""
        out = self._start()
        self.buffer += part
        while not self.ended:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                break
            event, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            out += self._chat_event(event)
        return out

    def _chat_event(self, event: bytes) -> list[bytes]:
        out: list[bytes] = []
        for line in event.splitlines():
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return out + self._complete()
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("error"), dict):
                return out + self._upstream_error(chunk["error"])
            if isinstance(chunk.get("usage"), dict):
                self.usage_chunk = chunk
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict):
                    out += self._choice(choice)
        return out
