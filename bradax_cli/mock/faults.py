"""Faults decided before any content, the same for every protocol: latency, hanging requests,
redirects to another origin, error statuses (429 with Retry-After) and errors that echo the
request's headers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

import orjson
from aiohttp import web

from bradax_cli.mock.behaviours import Behaviour
from bradax_cli.mock.http import JSON_CT, abort, error
from bradax_cli.mock.state import MockState

ELSEWHERE: Final = "/_mock/elsewhere"
"""Where `{"redirect": true}` points (on `localhost`, another origin than 127.0.0.1)."""

_HANG_POLL_S: Final = 0.05
_ERROR_MESSAGES: Final = {
    429: "Rate limit reached for requests (mock).",
    500: "The server had an error while processing your request. (mock)",
    502: "Bad gateway. (mock)",
    503: "The engine is currently overloaded, please try again later. (mock)",
    504: "Gateway timeout. (mock)",
}


async def before_answer(
    state: MockState,
    request: web.Request,
    act: Behaviour,
    record: Callable[[str], None],
) -> web.StreamResponse | None:
    """Sleep the behaviour's latency, then the answer of its fault (counted through `record`),
    or None when the request is to be answered."""
    if act.latency_ms > 0:
        await asyncio.sleep(act.latency_ms / 1000)
    if act.hang:
        record("hang")
        return await hang(state, request)
    if act.redirect:
        record("redirect")
        return redirect(request, act.redirect)
    if act.status:
        record(str(act.status))
        if act.echo_headers:
            return echo_error(request, act.status)
        return status_error(act)
    return None


async def hang(state: MockState, request: web.Request) -> web.Response:
    """Never answer: wait until the client goes away or the server shuts down."""
    while not state.shutting_down.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.shutting_down.wait(), _HANG_POLL_S)
    abort(request)
    return web.Response()


def redirect(request: web.Request, target: str | bool) -> web.Response:
    """A 302 to `target`, or (for True) to /_mock/elsewhere on another origin of this server."""
    if isinstance(target, str):
        location = target
    else:
        port = request.url.port
        location = f"http://localhost:{port}{ELSEWHERE}/v1/chat/completions"
    return web.Response(status=302, headers={"Location": location})


def echo_error(request: web.Request, status: int) -> web.Response:
    """An error that echoes every request header (what a careless upstream may do)."""
    seen = dict(request.headers)
    auth = seen.get("Authorization", "") or seen.get("api-key", "")
    body = orjson.dumps(
        {
            "error": {
                "message": f"Request rejected. Headers received: {seen}",
                "type": auth,
                "code": auth,
                "param": auth,
            }
        }
    )
    return web.Response(status=status, body=body, content_type=JSON_CT, headers={"X-Echo": auth})


def status_error(act: Behaviour) -> web.Response:
    """The error answer of the behaviour's status (a 429 carries its Retry-After)."""
    status = act.status
    message = _ERROR_MESSAGES.get(status, f"Mock error {status}.")
    headers = None
    code = None
    if status == 429:
        code = "rate_limit_exceeded"
        if act.retry_after is not None:
            headers = {"Retry-After": _fmt_seconds(act.retry_after)}
    return error(status, message, code=code, headers=headers)


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
