"""What the mock's Gemini protocol shares: Google's error answers, the `x-goog-api-key` check,
the request's validation and token arithmetic, and the faults decided before any content.

* prompt tokens = 3 + (4 + words of the system instruction's text, when there is one) + sum
  over contents of (4 + words of their text parts and of their function results' text);
  `tools` and a `responseJsonSchema` add a token per 4 bytes of their JSON (as billed).
* the key: none configured, anything goes; without `x-goog-api-key` a 403 PERMISSION_DENIED,
  a wrong one a 400 INVALID_ARGUMENT with the ErrorInfo reason API_KEY_INVALID (as Google
  answers both).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Any, Final

import orjson
from aiohttp import web

from bradax_cli.mock import faults
from bradax_cli.mock.behaviours import Behaviour
from bradax_cli.mock.config import MockConfig, is_int
from bradax_cli.mock.http import JSON_CT
from bradax_cli.mock.state import MockState

KEY_HEADER: Final = "x-goog-api-key"
STATUS_NAMES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES: Final = {
    429: "Resource has been exhausted (e.g. check quota). (mock)",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting (mock)",
    503: "The model is overloaded. Please try again later. (mock)",
    504: "The request timed out. Please try again. (mock)",
}
_KEY_INVALID: Final = {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
    "reason": "API_KEY_INVALID",
    "domain": "googleapis.com",
    "metadata": {"service": "generativelanguage.googleapis.com"},
}


def google_error(
    code: int,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    status: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON answer carrying a Google API error object (`status`: from the code unless given)."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or STATUS_NAMES.get(code, "INTERNAL" if code >= 500 else "UNKNOWN"),
    }
    if details:
        error["details"] = details
    body = orjson.dumps({"error": error})
    return web.Response(status=code, body=body, content_type=JSON_CT, headers=headers)


def auth_error(config: MockConfig, request: web.Request) -> web.Response | None:
    """Google's answer to a request without the configured key, or None."""
    if config.api_key is None:
        return None
    got = request.headers.get(KEY_HEADER)
    if got is None:
        return google_error(
            403,
            "Method doesn't allow unregistered callers (callers without established "
            "identity). Please use API Key or other form of API consumer identity to call "
            "this API.",
        )
    if not hmac.compare_digest(got.encode(), config.api_key.encode()):
        return google_error(
            400, "API key not valid. Please pass a valid API key.", details=[_KEY_INVALID]
        )
    return None


def invalid(body: dict[str, Any]) -> str | None:
    """What Google would find wrong with a GenerateContentRequest (None: nothing)."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
            where = f"GenerateContentRequest.contents[{index}].parts"
            return f"* {where}: contents.parts must not be empty"
        if content.get("role", "user") not in ("user", "model"):
            return f"Please use a valid role: user, model. (contents[{index}])"
    config = body.get("generationConfig")
    if config is not None and not isinstance(config, dict):
        return "Invalid value at 'generation_config'"
    limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
    if limit is not None and (not is_int(limit) or limit < 1):
        return "* GenerateContentRequest.generation_config.max_output_tokens: must be positive"
    return None


def _words(parts: object) -> int:
    total = 0
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            total += len(text.split())
        answer = part.get("functionResponse")
        result = answer.get("response") if isinstance(answer, dict) else None
        result = result.get("result") if isinstance(result, dict) else None
        if isinstance(result, str):
            total += len(result.split())
    return total


def prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens the mock bills for a (valid) request."""
    total = 3
    system = body.get("systemInstruction")
    if isinstance(system, dict):
        total += 4 + _words(system.get("parts"))
    for content in body["contents"]:
        total += 4 + _words(content["parts"])
    if body.get("tools") is not None:
        total += len(orjson.dumps(body["tools"])) // 4
    config = body.get("generationConfig")
    schema = config.get("responseJsonSchema") if isinstance(config, dict) else None
    if schema is not None:
        total += len(orjson.dumps(schema)) // 4
    return total


def max_output(body: dict[str, Any]) -> int | None:
    """The request's maxOutputTokens, if it set one."""
    config = body.get("generationConfig")
    limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
    return limit if is_int(limit) else None


async def before_answer(
    state: MockState, request: web.Request, act: Behaviour, record: Callable[[str], None]
) -> web.StreamResponse | None:
    """Sleep the behaviour's latency, then the answer of its fault in Google's shapes
    (counted through `record`), or None when the request is to be answered."""
    if act.latency_ms > 0:
        await asyncio.sleep(act.latency_ms / 1000)
    if act.hang:
        record("hang")
        return await faults.hang(state, request)
    if act.redirect:
        record("redirect")
        return faults.redirect(request, act.redirect)
    if not act.status:
        return None
    record(str(act.status))
    status = act.status
    if act.echo_headers:
        seen = dict(request.headers)
        key = seen.get(KEY_HEADER, "")
        message = f"Request rejected. Headers received: {seen}"
        return google_error(status, message, status=key, headers={"X-Echo": key})
    details: list[dict[str, Any]] = []
    if status == 429 and act.retry_after is not None:
        delay = act.retry_after
        seconds = str(int(delay)) if float(delay).is_integer() else str(delay)
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds}s"}
        )
    return google_error(status, _MESSAGES.get(status, f"Mock error {status}."), details=details)
