"""The Google Gemini dialect: `models/{model}:generateContent` and its server-sent stream.

The request is the chat body translated (`common.gemini_request` says what maps, what is
refused and what is dropped), posted to `<base_url>/models/<model>:generateContent`, or
`:streamGenerateContent?alt=sse` for a stream, with the key in `x-goog-api-key` (never in the
URL: URLs get logged). Gemini documents no hidden prompt: what it bills is in the body.

An answer's `candidates[0].content.parts` become the chat message: text parts (but thoughts)
its content, `functionCall` parts its tool calls (the part's id, else `call_<n>`; the
arguments as JSON). finishReason STOP is stop (tool_calls when there were calls),
MAX_TOKENS length, the safety and policy blocks content_filter; a prompt blocked
(`promptFeedback.blockReason`, no candidates) is an empty answer, content_filter, billed by
its usage. Usage (`usageMetadata`, a claim): prompt = promptTokenCount (cached content
included) + toolUsePromptTokenCount, completion = candidatesTokenCount + thoughtsTokenCount
(thinking is billed as output), cache reads = cachedContentTokenCount; Gemini reports no
cache writes. Without promptTokenCount there is no usage.

A stream is `data:` lines, each a whole GenerateContentResponse with the next parts; usage
rides on every chunk, the last being final. There is no [DONE]: the chunk carrying a
finishReason (or a blocked prompt) is the end, and its usage the final one (an end without
usage leaves the stream without it: charged at its bound, never at an earlier chunk's
partial count). An error object in the stream stops it, the end unseen.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from common import wire
from common.catalog import Upstream
from common.dialect import Answer, SSEFraming, StreamTally, Translator, WireRequest
from common.gemini_request import check, generate_request
from common.upstream_errors import answer_object, malformed

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "OTHER": "content_filter",
}


@dataclass(frozen=True)
class Usage:
    """A usageMetadata as read: the counts, or none (`invalid` when it was unreadable)."""

    prompt: int | None = None
    completion: int = 0
    cache_read: int = 0
    invalid: bool = False


def read_usage(meta: object) -> Usage:
    """The billed tokens a usageMetadata claims; missing fields are 0 but promptTokenCount,
    without which there is no usage."""
    if meta is None:
        return Usage()
    if not isinstance(meta, dict):
        return Usage(invalid=True)
    if "promptTokenCount" not in meta:
        return Usage()
    names = (
        "promptTokenCount",
        "toolUsePromptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "cachedContentTokenCount",
    )
    counts = [wire.count(meta.get(name, 0)) for name in names]
    if any(found is None for found in counts):
        return Usage(invalid=True)
    prompt, tool_use, candidates, thoughts, cached = (int(found or 0) for found in counts)
    return Usage(prompt + tool_use, candidates + thoughts, cached)


def finish_reason(reason: object, calls: int) -> str:
    """The chat finish reason of a Gemini one (stop when unknown)."""
    found = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if found == "stop" and calls else found


def candidate_of(data: dict[str, Any]) -> dict[str, Any] | None:
    """The first candidate of a response, if it has one."""
    candidates = data.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    return first if isinstance(first, dict) else None


def blocked(data: dict[str, Any]) -> bool:
    """Was the prompt blocked (a block reason and no candidate)?"""
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def parts_of(candidate: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A candidate's parts that are objects."""
    content = candidate.get("content") if candidate else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def text_of(part: dict[str, Any]) -> str:
    """A part's answer text ("" for thoughts and parts that are not text)."""
    text = part.get("text")
    return text if isinstance(text, str) and part.get("thought") is not True else ""


def call_of(part: dict[str, Any], index: int) -> tuple[str, str, str] | None:
    """(id, name, arguments as JSON) of a functionCall part, or None."""
    call = part.get("functionCall")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = f"call_{index}"
    args = call.get("args")
    return call_id, call["name"], wire.dumps({} if args is None else args).decode()


def answer_id(data: dict[str, Any]) -> str:
    """The chat id of an answer: Gemini's responseId when it gives one."""
    found = data.get("responseId")
    if not isinstance(found, str) or not found:
        found = uuid.uuid4().hex
    return f"chatcmpl-{found}"


# The longest wait a RetryInfo may ask for that is relayed (Retry-After) or honoured.
MAX_RETRY_DELAY = 3600.0


class GeminiDialect(SSEFraming):
    """The `Dialect` of Gemini's generateContent (its streams: server-sent events)."""

    def check(self, upstream: Upstream, body: dict[str, Any]) -> None:
        """BadRequest naming the first feature with no Gemini equivalent."""
        check(body)

    def prompt_overhead(self, body: dict[str, Any]) -> int:
        """None: Gemini documents no prompt of its own around the body's."""
        return 0

    def request(
        self,
        upstream: Upstream,
        body: dict[str, Any],
        request_id: str,
        forward: Mapping[str, str],
    ) -> WireRequest:
        """The GenerateContentRequest, posted to the model's (stream) method."""
        model = quote(str(body["model"]).removeprefix("models/"), safe="")
        if body.get("stream") is True:
            url = f"{upstream.base_url}/models/{model}:streamGenerateContent?alt=sse"
        else:
            url = f"{upstream.base_url}/models/{model}:generateContent"
        headers = {
            "Content-Type": "application/json",
            "X-Request-ID": request_id,
            "User-Agent": "bradax/1.0",
        }
        if upstream.api_key:
            headers["x-goog-api-key"] = upstream.api_key
        return WireRequest(url, headers, wire.dumps(generate_request(body)))

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        """A GenerateContentResponse as a chat completion."""
        data = answer_object(upstream, body, "a GenerateContentResponse")
        candidate = candidate_of(data)
        if candidate is None and not blocked(data):
            raise malformed(upstream, "upstream answer has no candidate", "shape")
        text: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in parts_of(candidate):
            text.append(text_of(part))
            try:
                found = call_of(part, len(calls))
            except RecursionError:
                raise malformed(
                    upstream, "upstream function call is nested too deep", "shape"
                ) from None
            if found is not None:
                calls.append(wire.tool_call(None, *found))
        content = "".join(text)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content or (None if calls else ""),
        }
        if calls:
            message["tool_calls"] = calls
        reason = (
            finish_reason(candidate.get("finishReason"), len(calls))
            if candidate is not None
            else "content_filter"
        )
        usage = read_usage(data.get("usageMetadata"))
        used = None
        if usage.prompt is not None:
            used = wire.usage(usage.prompt, usage.completion, usage.cache_read, 0)
        model = data.get("modelVersion")
        found_model = model if isinstance(model, str) and model else upstream.model
        completion = wire.completion(answer_id(data), found_model, message, reason, used)
        encoded = wire.dumps(completion)
        if usage.prompt is None:
            return Answer(completion, None, None, usage.invalid, body=encoded)
        return Answer(
            completion, usage.prompt, usage.completion, False, usage.cache_read, 0, encoded
        )

    def error_tokens(self, body: bytes) -> Iterable[object]:
        """The ErrorInfo reasons (API_KEY_INVALID, ...), then the status (RESOURCE_EXHAUSTED,
        INVALID_ARGUMENT, ...) of a Google error body."""
        error = wire.error_object(body)
        if error is None:
            return ()
        details = error.get("details")
        reasons = (
            [d.get("reason") for d in details if isinstance(d, dict)]
            if isinstance(details, list)
            else []
        )
        return (*reasons, error.get("status"))

    def retry_delay(self, body: bytes) -> float | None:
        """The `retryDelay` of a RetryInfo detail ("30s", "1.5s"), at most MAX_RETRY_DELAY."""
        details = (wire.error_object(body) or {}).get("details")
        for detail in details if isinstance(details, list) else ():
            delay = detail.get("retryDelay") if isinstance(detail, dict) else None
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    seconds = float(delay[:-1])
                except ValueError:
                    return None
                if seconds != seconds:  # NaN
                    return None
                return min(max(seconds, 0.0), MAX_RETRY_DELAY)
        return None

    def translator(self, upstream: Upstream) -> Translator:
        """A new stream's chunk translator."""
        return GeminiStream(upstream)


class GeminiStream:
    """One Gemini stream's chunks as chat chunk events; ends at the finishReason."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.chunks: wire.Chunks | None = None
        self.calls = 0
        self.usage: object = None  # the usageMetadata of the last chunk read
        self.over = False  # ended, or failed: nothing more is read

    def feed(self, event: bytes, tally: StreamTally) -> Iterable[bytes]:
        """The chat events of one Gemini chunk."""
        if self.over:
            return ()
        lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
        if not lines:
            # Google writes an error met mid-stream as bare JSON lines, not as an event.
            self.over = b'"error"' in event
            return ()
        try:
            data = orjson.loads(b"\n".join(lines))
        except orjson.JSONDecodeError:
            return ()
        if not isinstance(data, dict):
            return ()
        if data.get("error") is not None:
            self.over = True  # an error event: the end is never seen, done stays False
            return ()
        out: list[bytes] = []
        if self.chunks is None:
            self.chunks = wire.Chunks(answer_id(data), self.upstream.model)
            out.append(self.chunks.event({"role": "assistant", "content": ""}))
        chunks = self.chunks
        # Only the end's own usage is final: an earlier chunk's count is partial.
        self.usage = data.get("usageMetadata")
        candidate = candidate_of(data)
        for part in parts_of(candidate):
            text = text_of(part)
            if text:
                out.append(chunks.event({"content": text}))
                tally.produced += 1
            try:
                found = call_of(part, self.calls)
            except RecursionError:
                self.over = True  # a call too deep to relay: the stream is left unfinished
                return out
            if found is not None:
                call = wire.tool_call(self.calls, *found)
                out.append(chunks.event({"tool_calls": [call]}))
                self.calls += 1
                tally.produced += 1
        reason = candidate.get("finishReason") if candidate is not None else None
        if reason:
            out.append(chunks.event({}, finish_reason(reason, self.calls)))
        elif candidate is None and blocked(data):
            out.append(chunks.event({}, "content_filter"))
        else:
            return out
        self.end(tally, out)
        return out

    def end(self, tally: StreamTally, out: list[bytes]) -> None:
        """The stream's end: its final usage in the tally (and for the client), then DONE."""
        usage = read_usage(self.usage)
        if usage.prompt is not None:
            tally.prompt_tokens, tally.completion_tokens = usage.prompt, usage.completion
            tally.cache_read, tally.cache_write = usage.cache_read, 0
            if not tally.strip_usage and self.chunks is not None:
                used = wire.usage(usage.prompt, usage.completion, usage.cache_read, 0)
                out.append(self.chunks.event(None, used=used))
        elif usage.invalid:
            tally.usage_invalid = True
        out.append(wire.DONE)
        tally.done = True
        self.over = True


GEMINI = GeminiDialect()
