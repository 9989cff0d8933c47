"""Serving the router with uvicorn (uvloop + httptools when installed)."""

from __future__ import annotations

import uvicorn


def serve(host: str, port: int, *, workers: int = 1, access_log: bool = False) -> None:
    """Serve every function behind the path router until interrupted."""
    uvicorn.run(
        "bradax_cli.router:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="auto",
        http="auto",
        lifespan="on",
        access_log=access_log,
        log_level="warning",
        timeout_graceful_shutdown=10,
        # X-Forwarded-For is interpreted by the broker itself (TRUSTED_PROXIES), not here.
        proxy_headers=False,
        server_header=False,
    )
