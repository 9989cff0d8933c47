"""health: /health, /health/detailed, /ready and /live with dependencies up, down and hung."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from common import deps, migrate
from common.health import UpstreamProbe, http_get_status
from common.settings import Settings
from tests.conftest import make_settings


async def test_health_all_up_without_upstream_key(client: httpx2.AsyncClient) -> None:
    """With PostgreSQL and Redis up and no OPENAI_API_KEY, /health is degraded (200)."""
    reply = await client.get("/health")
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "degraded"
    assert body["services"] == {
        "database": "healthy",
        "redis": "healthy",
        "openai": "not_configured",
    }
    assert body["version"] == "1.0.0"
    assert body["timestamp"].endswith("Z")
    assert reply.headers["x-request-id"].startswith("req_")


async def test_health_is_healthy_with_a_live_upstream(
    settings: Settings, configure: Any, router: Any, mock_upstream: str
) -> None:
    """With the upstream answering GET /models, /health is healthy."""
    configure(openai_api_key="k", openai_base_url=mock_upstream)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=router), base_url="http://b"
    ) as http:
        reply = await http.get("/health")
    assert reply.json()["services"]["openai"] == "healthy"
    assert reply.json()["status"] == "healthy"


async def test_health_detailed_reports_latency_pool_and_schema(client: httpx2.AsyncClient) -> None:
    """/health/detailed adds per-check latency, pool figures and the schema version."""
    body = (await client.get("/health/detailed")).json()
    assert set(body["checks"]) == {"database", "redis", "openai"}
    assert 0 < body["checks"]["database"]["latency_ms"] < 1000
    assert body["checks"]["database"]["status"] == "healthy"
    latest = migrate.latest_version()
    assert body["schema"] == {"current": latest, "expected": latest}
    assert body["pools"]["database"]["max"] == 30
    assert "uptime_seconds" in body


async def test_ready_and_live_when_all_up(client: httpx2.AsyncClient) -> None:
    """/ready and /live answer 200 when PostgreSQL and Redis answer and migrations are current."""
    assert (await client.get("/ready")).json() == {"status": "ready"}
    assert (await client.get("/live")).json() == {"status": "alive"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def hung_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers (a hung dependency)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(port)
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


async def _probe(settings: Settings, router: Any, path: str) -> tuple[httpx2.Response, float]:
    deps.configure(settings)
    try:
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=router), base_url="http://b"
        ) as http:
            started = time.monotonic()
            reply = await http.get(path)
            return reply, time.monotonic() - started
    finally:
        await deps.aclose()


@pytest.mark.parametrize("kind", ["closed", "hung"])
async def test_redis_down_makes_ready_503_within_the_timeout(
    clean_state: None, database_url: str, router: Any, hung_server: int, kind: str
) -> None:
    """Redis unreachable or hung: /ready is 503 naming redis within ~1 s; /live stays 200."""
    port = _closed_port() if kind == "closed" else hung_server
    settings = make_settings(database_url, f"redis://127.0.0.1:{port}/0", redis_timeout=30)
    ready, elapsed = await _probe(settings, router, "/ready")
    assert ready.status_code == 503
    assert elapsed < 2.5
    body = ready.json()
    assert body["status"] == "not_ready"
    assert any(reason.startswith("redis:") for reason in body["reasons"])
    health, _ = await _probe(settings, router, "/health")
    assert health.status_code == 503
    assert health.json()["services"]["redis"] == "unhealthy"
    assert health.json()["status"] == "unhealthy"
    live, _ = await _probe(settings, router, "/live")
    assert live.status_code == 200


@pytest.mark.parametrize("kind", ["closed", "hung"])
async def test_postgres_down_makes_ready_503(
    clean_state: None, redis_url: str, router: Any, hung_server: int, kind: str
) -> None:
    """PostgreSQL unreachable or hung: /ready is 503 naming the database, /live stays 200."""
    port = _closed_port() if kind == "closed" else hung_server
    settings = make_settings(f"postgresql://u:pw@127.0.0.1:{port}/x", redis_url)
    ready, elapsed = await _probe(settings, router, "/ready")
    assert ready.status_code == 503
    assert elapsed < 2.5
    assert any(r.startswith("database:") for r in ready.json()["reasons"])
    assert "pw@" not in ready.text
    live, _ = await _probe(settings, router, "/live")
    assert live.status_code == 200


async def test_ready_503_when_migrations_are_behind(
    clean_state: None, services: Any, redis_url: str, router: Any
) -> None:
    """A database without the schema makes /ready 503 and says to run `bradax migrate`."""
    import secrets

    import asyncpg

    from tests.conftest import with_database

    name = f"bradax_bare_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(services.admin_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    try:
        settings = make_settings(with_database(services.admin_dsn, name), redis_url)
        ready, _ = await _probe(settings, router, "/ready")
    finally:
        admin = await asyncpg.connect(services.admin_dsn)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    assert ready.status_code == 503
    assert ready.json()["reasons"] == [
        f"database: schema at version 0, expected {migrate.latest_version()} (run `bradax migrate`)"
    ]


async def test_upstream_down_is_degraded_not_unhealthy(
    clean_state: None, database_url: str, redis_url: str, router: Any
) -> None:
    """An unreachable upstream makes /health degraded (200) with openai unhealthy."""
    broken = make_settings(
        database_url,
        redis_url,
        openai_api_key="k",
        openai_base_url=f"http://127.0.0.1:{_closed_port()}/v1",
    )
    reply, _ = await _probe(broken, router, "/health")
    assert reply.status_code == 200
    assert reply.json()["status"] == "degraded"
    assert reply.json()["services"]["openai"] == "unhealthy"


async def test_concurrent_probes_do_not_pile_up(client: httpx2.AsyncClient) -> None:
    """Twenty concurrent /health probes all answer."""
    replies = await asyncio.gather(*(client.get("/health") for _ in range(20)))
    assert {r.status_code for r in replies} == {200}


# -- the upstream probe's HTTP GET, against small real servers ----------------------------------


async def _serve(answer: bytes | None, seen: list[bytes] | None = None) -> asyncio.Server:
    """A TCP server on 127.0.0.1 that reads the request head, then writes `answer` and keeps
    writing body bytes until the client leaves (None: never answers at all)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        try:
            if answer is None:
                await reader.read()  # until the client gives up and closes
                return
            writer.write(answer)
            while True:  # an endless body: the probe must not read it
                writer.write(b"x" * 65536)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _url(server: asyncio.Server) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


def _upstream_probe(base_url: str) -> UpstreamProbe:
    return UpstreamProbe(Settings(openai_api_key="sk-probe", openai_base_url=base_url))


async def test_probe_sends_the_key_to_models_and_reads_only_the_status_line() -> None:
    """The probe GETs {base}/models with the bearer key and is healthy on a 200 whose body
    never ends (it reads nothing past the status line)."""
    seen: list[bytes] = []
    server = await _serve(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", seen)
    async with server:
        check = await _upstream_probe(_url(server)).check(2.0)
    assert check.status == "healthy", check.error
    assert seen[0].startswith(b"GET /v1/models HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer sk-probe\r\n" in seen[0]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", "UpstreamStatusError"),
        (
            b"HTTP/1.1 301 Moved\r\nLocation: http://elsewhere.invalid/\r\n\r\n",
            "UpstreamStatusError",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "MalformedAnswer"),
        (b"HTTP/1.1 200 " + b"O" * 20000, "MalformedAnswer"),
    ],
)
async def test_probe_is_unhealthy_on_an_error_redirect_or_foreign_answer(
    answer: bytes, error: str
) -> None:
    """An error status, a redirect (never followed), a non-HTTP answer or a status line over
    the read limit make the upstream unhealthy, named by the error's class."""
    server = await _serve(answer)
    async with server:
        check = await _upstream_probe(_url(server)).check(2.0)
    assert check.status == "unhealthy"
    assert check.error is not None
    assert error in check.error


async def test_probe_of_a_silent_upstream_ends_at_its_timeout() -> None:
    """An upstream that accepts the connection and never answers is unhealthy at the timeout."""
    server = await _serve(None)
    async with server:
        started = time.monotonic()
        check = await _upstream_probe(_url(server)).check(0.3)
        elapsed = time.monotonic() - started
    assert check.status == "unhealthy"
    assert check.error is not None
    assert "did not answer within 0.3s" in check.error
    assert elapsed < 1.5


async def test_probe_refuses_a_header_that_would_split_the_request() -> None:
    """A key holding a line break is never written to the wire."""
    seen: list[bytes] = []
    server = await _serve(b"HTTP/1.1 200 OK\r\n\r\n", seen)
    async with server:
        with pytest.raises(ValueError, match="line break"):
            await http_get_status(_url(server) + "/models", {"Authorization": "a\r\nX-Evil: 1"})
    assert seen == []
