"""What every function does once per cold start: validate settings, set up logs and metrics.

`function_app(name, routes)` is called at import by each functions/<name>/main.py. It reads
the settings (a bad value stops the process with one line naming the variable) but opens
no connection: pools are created by the first request that needs them.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterable

from common import deps
from common.http import FunctionApp, Route, make_function
from common.logs import configure as configure_logs
from common.settings import ConfigError


def function_app(
    name: str, routes: Iterable[Route], *, openapi_path: str | None = None
) -> FunctionApp:
    """Build a function's app, failing fast (exit 2, one line) on a configuration error;
    its OpenAPI document is served at `openapi_path`."""
    try:
        settings = deps.settings()
    except ConfigError as exc:
        print(f"bradax {name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logs(settings.log_level)
    app = make_function(
        name, routes, telemetry=deps.telemetry.get, on_first_request=_freeze_startup
    )
    if openapi_path is not None:
        app.serve_openapi(openapi_path)
    return app


def _freeze_startup() -> None:
    # Objects alive at the first request live as long as the process: keep them out of GC
    # scans (measurably lower tail latency).
    gc.collect()
    gc.freeze()
