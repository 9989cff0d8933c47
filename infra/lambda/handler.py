"""AWS Lambda entry point: API Gateway HTTP API (payload 2.0) events -> the function's handler.

`handler(event, context)` turns the event into a Starlette `Request`, awaits the target of the
function named by $FUNCTION (its functions/<name>/main.py loaded by path, as functions-framework
loads it) and returns the response as the HTTP API's result dict. One event loop lives as long
as the process, so the pools the function opens on first use survive warm invocations.

Limits of this transport (compared with the containers): the response is buffered, so a
streamed (SSE) answer reaches the client in one piece, and API Gateway gives up after 30 s.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Awaitable[Response]]
Message = dict[str, Any]

TEXT_TYPES = ("text/", "application/json", "application/problem+json", "application/x-ndjson")
_loop = asyncio.new_event_loop()
_handlers: dict[str, Handler] = {}


def _root() -> Path:
    """The folder holding functions/ (/app in the image; the repository when run from it)."""
    here = Path(__file__).resolve()
    for folder in here.parents:
        if (folder / "functions").is_dir():
            return folder
    raise RuntimeError(f"no functions/ folder above {here}")


def load(function: str) -> Handler:
    """The target named `function` from functions/<function>/main.py (loaded once)."""
    found = _handlers.get(function)
    if found is not None:
        return found
    source = _root() / "functions" / function / "main.py"
    spec = importlib.util.spec_from_file_location(f"bradax_function_{function}", source)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {source}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    target: Handler = getattr(module, function)
    _handlers[function] = target
    return target


def to_scope(event: dict[str, Any]) -> tuple[Message, bytes]:
    """The ASGI HTTP scope and the request body of an HTTP API payload 2.0 event."""
    http = event["requestContext"]["http"]
    path = event.get("rawPath") or http["path"]
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    if event.get("cookies"):
        headers["cookie"] = "; ".join(event["cookies"])
    raw = event.get("body") or ""
    body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
    host = headers.get("host", "lambda")
    port = int(headers.get("x-forwarded-port", "443"))
    scope: Message = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": http["method"].upper(),
        "scheme": headers.get("x-forwarded-proto", "https"),
        "path": path,
        "raw_path": path.encode(),
        "query_string": (event.get("rawQueryString") or "").encode(),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": (http.get("sourceIp", ""), 0),
        "server": (host, port),
    }
    return scope, body


def to_result(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, Any]:
    """The HTTP API result dict for a response (binary bodies base64-encoded)."""
    out: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "set-cookie":
            cookies.append(value)
        else:
            out[name] = f"{out[name]},{value}" if name in out else value
    content_type = out.get("content-type", "")
    text = not body or content_type.startswith(TEXT_TYPES) or "+json" in content_type
    result: dict[str, Any] = {
        "statusCode": status,
        "headers": out,
        "body": body.decode() if text else base64.b64encode(body).decode(),
        "isBase64Encoded": not text,
    }
    if cookies:
        result["cookies"] = cookies
    return result


async def invoke(target: Handler, event: dict[str, Any]) -> dict[str, Any]:
    """Run one event through `target` and collect the whole response."""
    scope, body = to_scope(event)
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects mid-invocation
        return {"type": "http.disconnect"}  # pragma: no cover - never reached

    started: Message = {}
    chunks: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    response = await target(Request(scope, receive))
    await response(scope, receive, send)
    return to_result(int(started["status"]), list(started.get("headers", [])), b"".join(chunks))


def handle(function: str, event: dict[str, Any]) -> dict[str, Any]:
    """Answer one event with the named function, on the process's event loop."""
    return _loop.run_until_complete(invoke(load(function), event))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point (image CMD `lambda_handler.handler`): the function in $FUNCTION."""
    return handle(os.environ["FUNCTION"], event)
