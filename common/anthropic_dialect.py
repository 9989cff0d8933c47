"""The Anthropic Messages dialect (`POST <base_url>/messages`, api.anthropic.com/v1 by default).

A chat body is translated to a Messages request (`common.anthropic_body`: what maps, what is
refused before admission, what is dropped) and the answer back to a chat completion: text
blocks joined as the content, `tool_use` blocks as tool calls (the input as JSON arguments),
thinking blocks left out; stop reasons end_turn / stop_sequence / pause_turn -> stop,
max_tokens -> length, tool_use -> tool_calls, refusal -> content_filter. The key travels in
`x-api-key`; the client's `anthropic-version` (else 2023-06-01) and `anthropic-beta` go on
unchanged. Usage: prompt tokens are input + cache creation + cache read tokens (Anthropic
bills all three, the cache ones at their own prices), completion tokens the output tokens.
Streams are translated by `common.anthropic_events`. Error bodies name `error.type`.

Anthropic adds a hidden system prompt when tools are given (a few hundred tokens, more with
each model generation): the reservation adds TOOL_OVERHEAD prompt tokens for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from common.anthropic_body import messages_body
from common.anthropic_events import AnthropicTranslator, finish_reason
from common.catalog import Upstream
from common.dialect import Answer, SSEFraming, Translator, WireRequest, unsupported
from common.upstream_errors import answer_object, malformed
from common.wire import completion, count, dumps, error_object, tool_call, usage

VERSION = "2023-06-01"
# Prompt tokens billed beyond the body: the tool-use system prompt (about 350 tokens on
# current models, generously covered), else a small framing allowance.
TOOL_OVERHEAD = 1000
BASE_OVERHEAD = 10


def read_usage(found: object) -> tuple[int, int, int, int] | None:
    """(prompt, completion, cache read, cache write) of a Messages usage object, or None if a
    count is not a plain non-negative integer (a missing cache count is 0)."""
    if not isinstance(found, dict):
        return None
    given, output = count(found.get("input_tokens")), count(found.get("output_tokens"))
    caches = []
    for name in ("cache_read_input_tokens", "cache_creation_input_tokens"):
        value = found.get(name)
        caches.append(0 if value is None else count(value))
    read, write = caches
    if given is None or output is None or read is None or write is None:
        return None
    return given + read + write, output, read, write


def _hour_long_breakpoint(body: dict[str, Any]) -> str | None:
    """Where the body asks for a one-hour prompt-cache write (`cache_control.ttl` 1h), if it
    does."""
    places: list[tuple[str, object]] = [
        (f"tools[{i}]", tool) for i, tool in enumerate(body.get("tools") or ())
    ]
    for i, message in enumerate(body.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            places += [(f"messages[{i}].content[{j}]", part) for j, part in enumerate(content)]
    for where, part in places:
        hint = part.get("cache_control") if isinstance(part, dict) else None
        if isinstance(hint, dict) and hint.get("ttl") == "1h":
            return f"{where}.cache_control.ttl"
    return None


def _prices_hour_writes(upstream: Upstream) -> bool:
    """Does the route price cache writes at least at the one-hour rate (2x input)?"""
    write = upstream.price.cache_write_per_1m
    return write is not None and write >= 2 * upstream.price.input_per_1m


class AnthropicDialect(SSEFraming):
    """The `Dialect` of Anthropic's Messages API."""

    def check(self, upstream: Upstream, body: dict[str, Any]) -> None:
        """BadRequest naming the first feature that does not map to Messages, or a one-hour
        cache write on a route whose cache-write price does not cover it."""
        messages_body(body)
        hour = _hour_long_breakpoint(body)
        if hour is not None and not _prices_hour_writes(upstream):
            raise unsupported(
                hour,
                "a one-hour cache write (billed at twice the input price) on a route whose "
                "cache_write_per_1m is priced for five-minute writes",
                "Anthropic Messages",
            )

    def prompt_overhead(self, body: dict[str, Any]) -> int:
        """The hidden tool-use system prompt when tools are given, else a small allowance."""
        return TOOL_OVERHEAD if body.get("tools") else BASE_OVERHEAD

    def request(
        self,
        upstream: Upstream,
        body: dict[str, Any],
        request_id: str,
        forward: Mapping[str, str],
    ) -> WireRequest:
        """The Messages request, with the key in x-api-key and the client's version headers."""
        body_bytes = dumps(messages_body(body))
        return WireRequest(
            f"{upstream.base_url}/messages", self.headers(upstream, request_id, forward), body_bytes
        )

    def headers(
        self, upstream: Upstream, request_id: str, forward: Mapping[str, str]
    ) -> dict[str, str]:
        """JSON, our request id, the key in x-api-key, the client's version and beta headers."""
        headers = {
            "Content-Type": "application/json",
            "X-Request-ID": request_id,
            "User-Agent": "bradax/1.0",
            "anthropic-version": forward.get("anthropic-version") or VERSION,
        }
        beta = forward.get("anthropic-beta")
        if beta:
            headers["anthropic-beta"] = beta
        if upstream.api_key:
            headers["x-api-key"] = upstream.api_key
        return headers

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        """A Messages `message` as a chat completion; UpstreamBadResponse if it is not one."""
        data = answer_object(upstream, body, "a Messages message")
        if data.get("type") != "message" or not isinstance(data.get("content"), list):
            raise malformed(upstream, "upstream answer is not a Messages message", "shape")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in data["content"]:
            if not isinstance(block, dict):
                raise malformed(upstream, "upstream answer has a content block that is not one")
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                try:
                    arguments = dumps(block.get("input") or {}).decode()
                except RecursionError:
                    raise malformed(
                        upstream, "upstream tool input is nested too deep", "shape"
                    ) from None
                calls.append(
                    tool_call(None, str(block.get("id") or ""), str(block.get("name")), arguments)
                )
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        if calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = calls
        found = data.get("usage")
        counts = read_usage(found)
        answer_id = data.get("id") if isinstance(data.get("id"), str) else "msg_unknown"
        model = data.get("model") if isinstance(data.get("model"), str) else upstream.model
        reason = finish_reason(data.get("stop_reason"))
        used = usage(*counts) if counts is not None else None
        chat = completion(str(answer_id), str(model), message, reason, used)
        if counts is None:
            return Answer(chat, None, None, found is not None, body=dumps(chat))
        prompt, output, read, write = counts
        return Answer(chat, prompt, output, False, read, write, dumps(chat))

    def error_tokens(self, body: bytes) -> Iterable[object]:
        """`error.type` of a Messages error body."""
        error = error_object(body)
        return (error.get("type"),) if error is not None else ()

    def translator(self, upstream: Upstream) -> Translator:
        """A new stream's Messages-to-chat translator."""
        return AnthropicTranslator(upstream.model)


ANTHROPIC = AnthropicDialect()


class AnthropicCountDialect(AnthropicDialect):
    """`POST <base_url>/messages/count_tokens`: the exact input tokens of a Messages request
    (free at Anthropic, and not billed here). The answer is `{"input_tokens": n}`."""

    def request(
        self,
        upstream: Upstream,
        body: dict[str, Any],
        request_id: str,
        forward: Mapping[str, str],
    ) -> WireRequest:
        """The counted parts of the Messages request (no max_tokens, sampling or stream)."""
        counted = {k: v for k, v in messages_body(body).items() if k in COUNTED}
        url = f"{upstream.base_url}/messages/count_tokens"
        return WireRequest(url, self.headers(upstream, request_id, forward), dumps(counted))

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        """The count; UpstreamBadResponse unless it is a plain non-negative integer."""
        tokens = count(answer_object(upstream, body, "a token count").get("input_tokens"))
        if tokens is None:
            raise malformed(upstream, "upstream answer is not a token count", "shape")
        return Answer({"input_tokens": tokens}, tokens, 0, False)


# What count_tokens counts of a Messages request.
COUNTED = frozenset({"model", "system", "messages", "tools", "tool_choice"})
ANTHROPIC_COUNT = AnthropicCountDialect()
