"""`bradax openapi`: the broker's merged OpenAPI 3.1 document, from every function's routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bradax_cli.routes import REPO_ROOT, RouteTable
from common import openapi
from common.function_asgi import load_module
from common.http import FunctionApp

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "openapi.json"


def function_apps(table: RouteTable | None = None) -> dict[str, FunctionApp]:
    """Each function's FunctionApp, loaded as the router loads it."""
    import os

    # Loading auth_token checks its signing key at import; documenting signs nothing.
    os.environ.setdefault("JWT_SECRET_KEY", "placeholder-for-openapi-generation-only-0123")
    table = table or RouteTable.load()
    apps: dict[str, FunctionApp] = {}
    for name, spec in table.functions.items():
        module, _ = load_module(REPO_ROOT / spec.source)
        found = [value for value in vars(module).values() if isinstance(value, FunctionApp)]
        if len(found) != 1:
            raise RuntimeError(f"{spec.source} must define exactly one FunctionApp")
        apps[name] = found[0]
    return apps


def merged() -> dict[str, Any]:
    """The whole broker's document."""
    apps = function_apps()
    return openapi.merge("bradax broker", (app.openapi() for app in apps.values()))


def render() -> bytes:
    """The merged document as committed (stable key order, indented)."""
    return orjson.dumps(merged(), option=orjson.OPT_INDENT_2) + b"\n"


def write(output: Path = DEFAULT_OUTPUT) -> Path:
    """Write the merged document; returns its path."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(render())
    return output
