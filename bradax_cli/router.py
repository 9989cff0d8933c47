"""The path router: every function of the route table behind one ASGI app, for `bradax serve`.

Each function is the app its image serves (`common.function_asgi.load`: functions-framework's
ASGI app for its main.py, loaded by path as functions-framework loads it); the router only
picks the function that owns a request's path, so `bradax serve`/`bradax dev`, the tests and
the benchmark run the production server path, several functions in one process.
"""

from __future__ import annotations

from pathlib import Path

from bradax_cli.routes import REPO_ROOT, RouteTable
from common.errors import NotFound
from common.function_asgi import ASGIApp, Receive, Scope, Send, lifespan, load
from common.http import error_response, new_request_id


class Router:
    """ASGI app dispatching each path to the function the route table names."""

    def __init__(self, table: RouteTable, root: Path = REPO_ROOT) -> None:
        self.table = table
        self.apps: dict[str, ASGIApp] = {
            name: load(root / spec.source, spec.target) for name, spec in table.functions.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)  # one process: one drain and close for all of them
            return
        path: str = scope["path"]
        function = self.table.match(path) if scope["type"] == "http" else None
        if function is None:
            if scope["type"] == "http":
                response = error_response(NotFound(f"no route for {path}"), new_request_id(), path)
                await response(scope, receive, send)
            return
        await self.apps[function](scope, receive, send)


def create_app() -> Router:
    """The router over infra/routes.toml (uvicorn factory for `bradax serve`)."""
    return Router(RouteTable.load())
