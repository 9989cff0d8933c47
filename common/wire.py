"""The chat shapes every dialect translates to: JSON bytes, chat completions, chat chunks.

A native dialect (Anthropic, Bedrock, Gemini) reads its provider's answer and gives back
what an OpenAI-compatible upstream would have: a `chat.completion` object, or a stream of
`chat.completion.chunk` events ending in `data: [DONE]`. The API faces then render either
as they render OpenAI's.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def dumps(value: Any, sort_keys: bool = False) -> bytes:
    """orjson, or the standard library for integers beyond 64 bits (valid JSON all the same)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except TypeError:
        import json

        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
        return text.encode()


def count(value: object) -> int | None:
    """A token count as a provider wrote it: a plain non-negative integer, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def usage(prompt: int, completion: int, cache_read: int, cache_write: int) -> dict[str, Any]:
    """An OpenAI usage object (cache reads as `cached_tokens`, writes in our own field)."""
    found: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cache_read or cache_write:
        found["prompt_tokens_details"] = {
            "cached_tokens": cache_read,
            "cache_write_tokens": cache_write,
        }
    return found


def completion(
    answer_id: str,
    model: str,
    message: dict[str, Any],
    finish_reason: str | None,
    used: dict[str, Any] | None,
) -> dict[str, Any]:
    """A chat.completion with one choice."""
    data: dict[str, Any] = {
        "id": answer_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if used is not None:
        data["usage"] = used
    return data


def tool_call(index: int | None, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A chat tool call (in a message when `index` is None, else in a chunk's delta)."""
    call: dict[str, Any] = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    return call if index is None else {"index": index, **call}


class Chunks:
    """Builds one stream's chat.completion.chunk events."""

    def __init__(self, answer_id: str, model: str) -> None:
        self.id = answer_id
        self.model = model
        self.created = int(time.time())

    def event(
        self,
        delta: dict[str, Any] | None,
        finish_reason: str | None = None,
        used: dict[str, Any] | None = None,
    ) -> bytes:
        """One chunk event: a delta (and maybe the finish reason), or usage alone."""
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if used is not None:
            chunk["usage"] = used
        return b"data: " + orjson.dumps(chunk) + b"\n\n"


def without_cache_hints(body: dict[str, Any]) -> dict[str, Any]:
    """The body without Anthropic's prompt-cache breakpoints (`cache_control` on content
    parts and tools), for upstreams that cache on their own and know no such field."""

    def parts(content: object) -> object:
        if not isinstance(content, list):
            return content
        return [
            {k: v for k, v in part.items() if k != "cache_control"}
            if isinstance(part, dict)
            else part
            for part in content
        ]

    out = dict(body)
    messages = body.get("messages")
    if isinstance(messages, list):
        out["messages"] = [
            {**m, "content": parts(m["content"])} if isinstance(m, dict) and "content" in m else m
            for m in messages
        ]
    if isinstance(body.get("tools"), list):
        out["tools"] = parts(body["tools"])
    return out


def json_object(raw: bytes) -> dict[str, Any] | None:
    """`raw` as a JSON object (an upstream's error body), or None if it is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def error_object(raw: bytes) -> dict[str, Any] | None:
    """The `error` object of an error body (OpenAI's, Anthropic's, Google's), if it has one."""
    error = (json_object(raw) or {}).get("error")
    return error if isinstance(error, dict) else None
