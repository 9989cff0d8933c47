"""Serving the router with uvicorn (uvloop + httptools when installed).

Connections are guarded against slow and idle clients (common.serving): a request's head and
body each have a deadline, idle keep-alive connections close, and open connections are capped.
"""

from __future__ import annotations

import signal
from typing import Any

import uvicorn

from common.serving import uvicorn_options
from common.settings import Settings, get_settings


def serve(
    host: str,
    port: int,
    *,
    workers: int = 1,
    access_log: bool = False,
    settings: Settings | None = None,
) -> None:
    """Serve every function behind the path router until SIGINT/SIGTERM (exit 0 after a
    graceful shutdown, as gunicorn does for the images)."""
    # uvicorn re-raises the signal once it has shut down (lifespan: drain, flush, close); end
    # with a plain exit instead, which also unwinds the caller (`bradax dev` stops its servers).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "bradax_cli.router:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="auto",
        lifespan="on",
        access_log=access_log,
        log_level="warning",
        timeout_graceful_shutdown=10,
        # X-Forwarded-For is interpreted by the broker itself (TRUSTED_PROXIES), not here.
        proxy_headers=False,
        server_header=False,
        **uvicorn_options(settings or get_settings()),
    )


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)
