"""One function served the way its image serves it: functions-framework (ASGI) under gunicorn.

`python -m common.function_server --source functions/health/main.py --target health --port 8080`
loads the function exactly as `functions-framework --asgi` does (common.function_asgi, which
adds the broker's lifespan: SIGTERM drains and closes) and runs functions-framework's
gunicorn application with `GuardedUvicornWorker`: the same uvicorn workers, plus the deadlines
for slow and idle clients of common.serving, which the stock command line cannot set. WORKERS
and CLOUD_RUN_TIMEOUT_SECONDS keep their functions-framework meaning.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from uvicorn_worker import UvicornWorker

from common.function_asgi import load
from common.serving import ServerLimits, protocol_factory
from common.settings import ConfigError, load_settings


class GuardedUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """gunicorn's uvicorn worker with head/body deadlines, keep-alive and connection limits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = ServerLimits.from_settings(load_settings())
        config = self.config
        config.http = protocol_factory(limits)
        config.timeout_keep_alive = limits.keepalive_timeout
        config.limit_concurrency = limits.max_connections
        config.h11_max_incomplete_event_size = limits.max_header_bytes
        config.server_header = False


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="function_server", description="Serve one function (functions-framework, ASGI)."
    )
    parser.add_argument("--source", required=True, help="the function's main.py")
    parser.add_argument("--target", required=True, help="the async handler's name")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve the function until SIGTERM; returns the exit status."""
    args = _parse(argv)
    try:
        load_settings()  # a bad setting stops here with one line, not in every worker
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    from functions_framework._http.gunicorn import UvicornApplication

    app = load(Path(args.source).resolve(), args.target)
    UvicornApplication(  # type: ignore[no-untyped-call]
        app,
        args.host,
        args.port,
        False,
        worker_class="common.function_server.GuardedUvicornWorker",
    ).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
