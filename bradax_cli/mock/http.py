"""HTTP helpers shared by the mock's protocols and control API: OpenAI-shaped error answers,
request bodies read within a time limit, dropped connections, and the route type."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]
"""(method, path, handler), as given to `app.router.add_route`."""

JSON_CT: Final = "application/json"
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
SSE_DONE: Final = b"data: [DONE]\n\n"

_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class Refused(Exception):
    """A request answered early (`response`), counted in the stats under `outcome`."""

    def __init__(self, response: web.StreamResponse, outcome: str) -> None:
        super().__init__(outcome)
        self.response = response
        self.outcome = outcome


def error_body(
    status: int,
    message: str,
    *,
    err_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """An OpenAI error object; its type follows from the status unless given."""
    if err_type is None:
        err_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    )


def error(
    status: int,
    message: str,
    *,
    err_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON answer carrying an OpenAI error object."""
    body = error_body(status, message, err_type=err_type, code=code, param=param)
    return web.Response(status=status, body=body, content_type=JSON_CT, headers=headers)


def dumps(obj: Any) -> str:
    """`obj` as JSON text (orjson), the `dumps` given to `web.json_response`."""
    return orjson.dumps(obj).decode()


def abort(request: web.Request) -> None:
    """Drop the TCP connection without (finishing) a response."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def read_json_object(request: web.Request, timeout: float) -> dict[str, Any]:
    """The request's JSON object body.

    Raises `Refused` with a 408 (sent, connection dropped) when the body is not received within
    `timeout` seconds, or a 400 when it is not JSON or not an object."""
    try:
        raw = await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        response = error(408, "The request body was not received in time.")
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        abort(request)  # without waiting for the rest of a body that is not coming
        raise Refused(response, "408") from None
    except ConnectionError:  # the client went away mid-body (a load tool stopping): no answer
        abort(request)
        raise Refused(web.Response(status=400), "client_gone") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refused(
            error(400, "We could not parse the JSON body of your request."), "400"
        ) from None
    if not isinstance(body, dict):
        raise Refused(error(400, "The request body must be a JSON object."), "400")
    return body
