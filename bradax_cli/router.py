"""The dev router: every function of the route table behind one ASGI app.

It loads each function's main.py exactly as functions-framework would (by file path) and
sends each request to the function that owns its path, so `bradax dev` serves the same
handlers the per-function containers serve.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from bradax_cli.routes import REPO_ROOT, RouteTable
from common import deps
from common.errors import NotFound
from common.http import error_response, new_request_id

Handler = Callable[[Request], Awaitable[Response]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def load_handler(source: Path, target: str) -> Handler:
    """Import a function's main.py by path (as functions-framework does) and return its target."""
    module_name = f"bradax_function_{source.parent.name}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, source)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {source}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    handler: Handler = getattr(module, target)
    return handler


class Router:
    """ASGI app dispatching each path to the function the route table names."""

    def __init__(self, table: RouteTable, root: Path = REPO_ROOT) -> None:
        self.table = table
        self.handlers: dict[str, Handler] = {
            name: load_handler(root / spec.source, spec.target)
            for name, spec in table.functions.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        function = self.table.match(path)
        if function is None:
            response = error_response(NotFound(f"no route for {path}"), new_request_id(), path)
        else:
            response = await self.handlers[function](Request(scope, receive))
        await response(scope, receive, send)  # type: ignore[arg-type]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Start-up objects are long-lived: keep them out of the GC's scans (tail latency).
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await deps.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> Router:
    """The router over infra/routes.toml (uvicorn factory for `bradax serve`)."""
    return Router(RouteTable.load())
