"""Reading Converse answers: usage and stop reasons, and ConverseStream's AWS event stream.

A ConverseStream body is `application/vnd.amazon.eventstream`: binary messages, each a
prelude (total length, headers length, CRC32), headers, a JSON payload and a CRC32 of the
whole. `EventStreamReader` frames them by their prelude within the limits every stream has
(`common.sse.ChunkReader`: idle timeout, a message over max_event or a stream over max_total
is oversize; a prelude too short to be one ends the stream as lost). `ConverseTranslator`
checks each message with botocore's decoder (CRCs included) and turns it into chat chunks by
its `:event-type`: messageStart, contentBlockStart (a tool call's id and name),
contentBlockDelta (text, or a piece of a tool call's JSON input), contentBlockStop,
messageStop (the stop reason) and metadata (the usage: the end, once messageStop was read;
before it, the stream is left unfinished). An exception message
(`:message-type` exception, e.g. throttlingException, modelStreamErrorException) or a message
that does not decode stops the translation: the stream never completes and is charged at its
bound.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

import orjson

from common import wire
from common.dialect import StreamTally
from common.sse import LOST, OVERSIZE, ChunkReader

# The smallest message: a 12-byte prelude and a 4-byte message CRC.
_MIN_MESSAGE: Final = 16
FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def usage_counts(usage: object) -> tuple[int, int, int, int] | None:
    """(prompt, completion, cache read, cache write) of a Bedrock usage object, or None when
    it is not readable (a count missing, negative or not an integer). Bedrock's inputTokens
    leaves the cached prompt tokens out: the prompt is inputTokens + cache reads + writes."""
    if not isinstance(usage, dict):
        return None
    fresh = wire.count(usage.get("inputTokens"))
    completion = wire.count(usage.get("outputTokens"))
    read = wire.count(usage.get("cacheReadInputTokens", 0))
    write = wire.count(usage.get("cacheWriteInputTokens", 0))
    if fresh is None or completion is None or read is None or write is None:
        return None
    return fresh + read + write, completion, read, write


def finish_reason(stop: object) -> str:
    """The chat finish_reason of a Converse stopReason."""
    return FINISH_REASONS.get(stop, "stop") if isinstance(stop, str) else "stop"


class EventStreamReader(ChunkReader):
    """The messages of one AWS event stream, framed by their prelude and bounded."""

    async def events(self) -> AsyncIterator[bytes]:
        """Whole messages as raw bytes (prelude to CRC), as they arrive; a partial message
        left when the body ends is not one."""
        pending = bytearray()
        async for chunk in self.chunks():
            pending += chunk
            while len(pending) >= 4:
                total = int.from_bytes(pending[:4], "big")
                if total > self.max_event:
                    self.end = OVERSIZE
                    return
                if total < _MIN_MESSAGE:
                    self.end = LOST  # no longer framed: nothing after this can be read
                    return
                if len(pending) < total:
                    break
                message = bytes(pending[:total])
                del pending[:total]
                yield message


def decode(frame: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(headers, payload) of one event-stream message, or None when it does not decode
    (a CRC mismatch, a bad length or header)."""
    from botocore.eventstream import EventStreamBuffer, ParserError

    buffer = EventStreamBuffer()
    buffer.add_data(frame)
    try:
        message = next(buffer)
    except (ParserError, StopIteration, ValueError, IndexError, struct.error):
        return None
    return dict(message.headers), bytes(message.payload)


class ConverseTranslator:
    """One ConverseStream's messages as chat chunk events (one per stream: keeps state)."""

    def __init__(self, answer_id: str, model: str) -> None:
        self.chunks = wire.Chunks(answer_id, model)
        self.started = False
        self.stopped = False
        self.over = False  # the end, an exception or an unreadable message: nothing more
        self.tools: dict[object, int] = {}  # content block index -> tool call index

    def feed(self, event: bytes, tally: StreamTally) -> Iterable[bytes]:
        """The chat events for one event-stream message."""
        if self.over:
            return ()
        decoded = decode(event)
        if decoded is None or decoded[0].get(":message-type") != "event":
            self.over = True
            return ()
        headers, payload = decoded
        data = orjson.loads(payload) if payload else {}
        if not isinstance(data, dict):
            return ()
        kind = headers.get(":event-type")
        out: list[bytes] = []
        if not self.started and kind in ("messageStart", "contentBlockStart", "contentBlockDelta"):
            self.started = True
            out.append(self.chunks.event({"role": "assistant", "content": ""}))
        if kind == "contentBlockStart":
            out.extend(self._start(data, tally))
        elif kind == "contentBlockDelta":
            out.extend(self._delta(data, tally))
        elif kind == "messageStop":
            self.stopped = True
            out.append(self.chunks.event({}, finish_reason(data.get("stopReason"))))
        elif kind == "metadata":
            out.extend(self._end(data, tally))
        return out

    def _start(self, data: dict[str, Any], tally: StreamTally) -> list[bytes]:
        start = data.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(use, dict):
            return []
        index = self.tools.setdefault(data.get("contentBlockIndex"), len(self.tools))
        tally.produced += 1
        call = wire.tool_call(index, str(use.get("toolUseId")), str(use.get("name")), "")
        return [self.chunks.event({"tool_calls": [call]})]

    def _delta(self, data: dict[str, Any], tally: StreamTally) -> list[bytes]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        text = delta.get("text")
        if isinstance(text, str) and text:
            tally.produced += 1
            return [self.chunks.event({"content": text})]
        use = delta.get("toolUse")
        piece = use.get("input") if isinstance(use, dict) else None
        if not isinstance(piece, str) or not piece:
            return []  # reasoning and other blocks are not relayed (their tokens are billed)
        index = self.tools.setdefault(data.get("contentBlockIndex"), len(self.tools))
        tally.produced += 1
        call = {"index": index, "function": {"arguments": piece}}
        return [self.chunks.event({"tool_calls": [call]})]

    def _end(self, data: dict[str, Any], tally: StreamTally) -> list[bytes]:
        """The usage (the last word), its chunk if the client wants it, and [DONE]; before
        messageStop, no end: nothing more is read and the stream stays unfinished."""
        self.over = True
        if not self.stopped:
            return []
        out = []
        usage = data.get("usage")
        counts = usage_counts(usage)
        if counts is None:
            tally.usage_invalid = usage is not None
        else:
            prompt, completion, read, write = counts
            tally.prompt_tokens, tally.completion_tokens = prompt, completion
            tally.cache_read, tally.cache_write = read, write
            if not tally.strip_usage:
                out.append(self.chunks.event(None, used=wire.usage(*counts)))
        out.append(wire.DONE)
        tally.done = True
        return out
