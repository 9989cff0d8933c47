"""What the Anthropic Messages mock says and checks: its error bodies, the request checks the
real API makes, the token arithmetic, the usage object and the server-sent events.

* prompt = 3 + sum over turns (the system prompt one of them) of (4 + whitespace-separated
  words of the text blocks and tool results), plus a token per 4 bytes of the `tools` JSON
  and, when tools are given, TOOL_PROMPT tokens of the hidden tool-use system prompt (as
  Anthropic bills it);
* of those, the `cache` behaviour's (read, write) are reported as cache reads and writes:
  input_tokens = prompt - read - write.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from bradax_cli.mock.http import JSON_CT

TOOL_PROMPT: Final = 346
"""The tool-use system prompt's tokens (Anthropic's figure for current models, auto choice)."""
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES: Final = {
    429: "Number of request tokens has exceeded your per-minute rate limit (mock).",
    500: "Internal server error (mock).",
    529: "Overloaded (mock).",
}


def error_body(status: int, message: str, err_type: str | None = None) -> bytes:
    """An Anthropic error object; its type follows from the status unless given."""
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    kind = err_type or ERROR_TYPES.get(status, fallback)
    return orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock"}
    )


def error(
    status: int, message: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer carrying an Anthropic error object."""
    text = message or _MESSAGES.get(status, f"Mock error {status}.")
    body = error_body(status, text)
    return web.Response(status=status, body=body, content_type=JSON_CT, headers=headers)


def echo_error(request: web.Request, status: int) -> web.Response:
    """An error that echoes every request header, the key among them (a careless upstream)."""
    seen = dict(request.headers)
    key = seen.get("x-api-key", "") or seen.get("X-Api-Key", "")
    body = orjson.dumps(
        {"type": "error", "error": {"type": key, "message": f"Rejected. Headers: {seen}"}}
    )
    return web.Response(status=status, body=body, content_type=JSON_CT, headers={"X-Echo": key})


def invalid(body: dict[str, Any], models: frozenset[str]) -> web.Response | None:
    """The 400 / 404 the real API gives a request it cannot take, or None."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error(400, "model: Field required")
    limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return error(400, "max_tokens: Field required (an integer >= 1)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error(400, "messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return error(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if not isinstance(message.get("content"), str | list):
            return error(400, f"messages.{i}.content: Field required")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return error(400, "system: Input should be a valid string or list of text blocks")
    if model not in models:
        return error(404, f"model: {model}")
    return None


def _words(content: object) -> int:
    """Words of a content: a string, or the text blocks and tool results of a block list."""
    if isinstance(content, str):
        return len(content.split())
    total = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            total += len(block["text"].split())
        elif block.get("type") == "tool_result":
            total += _words(block.get("content"))
    return total


def prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens the mock bills for a (valid) Messages request."""
    total = 3
    if body.get("system"):
        total += 4 + _words(body["system"])
    for message in body["messages"]:
        total += 4 + _words(message.get("content"))
    if body.get("tools"):
        total += len(orjson.dumps(body["tools"])) // 4 + TOOL_PROMPT
    return total


def usage(prompt: int, completion: int, cache: tuple[int, int]) -> dict[str, Any]:
    """An honest Messages usage object (the cache tokens are part of `prompt`)."""
    read, write = cache
    return {
        "input_tokens": prompt - read - write,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": completion,
        "service_tier": "standard",
    }


def event(data: dict[str, Any]) -> bytes:
    """One server-sent event (`event:` is the data's type)."""
    kind = str(data["type"]).encode()
    return b"event: " + kind + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_start(answer_id: str, model: str, used: dict[str, Any] | None) -> bytes:
    """The first event: the message with no content yet, and the input side of its usage."""
    message: dict[str, Any] = {
        "id": answer_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if used is not None:
        message["usage"] = {**used, "output_tokens": 1}
    return event({"type": "message_start", "message": message})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    """content_block_start for a text or tool_use block."""
    return event({"type": "content_block_start", "index": index, "content_block": block})


def text_delta(index: int, text: str) -> bytes:
    """A piece of a text block."""
    delta = {"type": "text_delta", "text": text}
    return event({"type": "content_block_delta", "index": index, "delta": delta})


def json_delta(index: int, piece: str) -> bytes:
    """A piece of a tool_use block's JSON input."""
    delta = {"type": "input_json_delta", "partial_json": piece}
    return event({"type": "content_block_delta", "index": index, "delta": delta})


def block_stop(index: int) -> bytes:
    """content_block_stop."""
    return event({"type": "content_block_stop", "index": index})


def message_end(stop_reason: str, used: object) -> bytes:
    """message_delta (the stop reason and the final usage, unless `used` is None), then
    message_stop."""
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if used is not None:
        delta["usage"] = used
    return event(delta) + event({"type": "message_stop"})


PING: Final = event({"type": "ping"})
