"""A function as production serves it: functions-framework's ASGI app, plus the broker's lifespan.

`load(source, target)` builds exactly what `functions-framework --asgi` builds for a
function's main.py (its Starlette app, routes and middleware); the image server, `bradax
serve`/`bradax dev`, the integration tests and the benchmark all serve these apps, so there
is one server path. functions-framework gives a function no lifespan hooks, so the app is
wrapped: at start-up, objects alive are frozen out of the GC's scans; at shutdown (SIGTERM
under gunicorn or uvicorn) the process' background work is drained and its connections
closed (`deps.aclose`). Durability never depends on that: usage intents are in Redis before
each upstream call.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from common import deps

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# The methods functions-framework's HTTP routes accept.
FRAMEWORK_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"})


def load_module(source: Path) -> tuple[Any, Any]:
    """Import a function's main.py by path under a name of its own (many can share a process)."""
    module_name = f"bradax_function_{source.parent.name}"
    found = sys.modules.get(module_name)
    spec = importlib.util.spec_from_file_location(module_name, source)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {source}")
    if found is not None:
        return found, spec
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module, spec


def load(source: Path, target: str) -> ASGIApp:
    """The function's functions-framework ASGI app, with the broker's lifespan."""
    from functions_framework.aio import create_asgi_app_from_module

    module, spec = load_module(source)
    app: ASGIApp = create_asgi_app_from_module(  # type: ignore[no-untyped-call]
        target, str(source), "http", module, spec
    )
    return BrokerLifespan(app, getattr(module, target))


class BrokerLifespan:
    """Answers the ASGI lifespan protocol for an app that has none; passes the rest through.

    functions-framework's routes accept only the common methods and answer any other with
    a plain-text 405, and their catch-all path pattern does not match a path holding a
    newline (a plain-text 404, say for GET /v1/models/a%0Ab); those requests go straight to
    the function instead, which answers them in the broker's JSON error shape (and counts
    them).
    """

    def __init__(self, app: ASGIApp, function: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = app
        self.function = function

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http" and (
            scope["method"] not in FRAMEWORK_METHODS or "\n" in scope["path"]
        ):
            response = await self.function(Request(scope, receive))
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def lifespan(receive: Receive, send: Send) -> None:
    """Start-up: freeze long-lived objects out of GC scans. Shutdown: drain and close."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            gc.collect()
            gc.freeze()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await deps.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
