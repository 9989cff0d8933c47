"""Serving: each function alone under functions-framework, the dev router, and `bradax dev`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import redis as sync_redis

from bradax_cli.routes import RouteTable
from common.settings import Settings
from tests.conftest import (
    MockUpstream,
    closed_within,
    create_tenant,
    free_port,
    serve_broker,
    serve_function,
    trickled_until_closed,
    wait_http,
)

# One cheap request per function that proves it answers on its own route.
PROBES = {
    "health": ("GET", "/live", 200),
    "auth_token": ("GET", "/.well-known/jwks.json", 200),
    "llm_invoke": ("GET", "/v1/models", 401),
    "metrics": ("GET", "/metrics", 401),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROBES))
def test_each_function_starts_alone(settings: Settings, tmp_path: Path, name: str) -> None:
    """Each function, served alone as its image serves it (functions-framework's ASGI flavour),
    answers on its own route."""
    method, path, status = PROBES[name]
    proc = serve_function(name, settings, probe=path, tmp=tmp_path)
    try:
        reply = httpx2.request(method, proc.url + path, timeout=10)
        assert reply.status_code == status
        assert reply.headers["x-request-id"].startswith("req_")
        other = httpx2.get(proc.url + "/not/a/route", timeout=10)
        assert other.status_code == 404
        assert other.json()["error"]["code"] == "not_found"
    finally:
        proc.stop()


def test_the_route_table_covers_the_spec_paths() -> None:
    """The route table sends each spec path to its function and nothing else anywhere."""
    table = RouteTable.load()
    expected = {
        "/api/v1/auth/token": "auth_token",
        "/api/v1/auth/refresh": "auth_token",
        "/.well-known/jwks.json": "auth_token",
        "/api/v1/llm/invoke": "llm_invoke",
        "/v1/chat/completions": "llm_invoke",
        "/v1/models": "llm_invoke",
        "/health": "health",
        "/health/detailed": "health",
        "/ready": "health",
        "/live": "health",
        "/metrics": "metrics",
        "/prometheus": "metrics",
        "/healthz": None,
        "/v1": "llm_invoke",
        "/v10/x": None,
        "/metrics/x": None,
        "/": None,
    }
    assert {path: table.match(path) for path in expected} == expected


@pytest.mark.slow
def test_the_dev_router_serves_every_function(settings: Settings, tmp_path: Path) -> None:
    """`bradax serve` answers each function's probe route and 404s unknown paths in JSON."""
    proc = serve_broker(settings, tmp=tmp_path)
    try:
        for method, path, status in PROBES.values():
            assert httpx2.request(method, proc.url + path, timeout=10).status_code == status
        unknown = httpx2.get(proc.url + "/nope", timeout=10)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "not_found"
    finally:
        proc.stop()


@pytest.mark.slow
def test_bradax_dev_starts_embedded_services(tmp_path: Path) -> None:
    """`bradax dev` with nothing set starts embedded PostgreSQL, Redis and the mock, says so
    with their URLs, limits wrong keys (401, then 429), serves the demo project every face on
    every dialect of the mock (the official SDKs unchanged), lets `bradax project list` in the
    same directory administer it, and stops everything it started on SIGTERM."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "JWT_SECRET_KEY", "MODEL_ROUTES")
        and not key.startswith(("TEST_", "BRADAX_"))
    }
    env["AUTH_FAILURES_PER_PROJECT"] = "3"
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bradax_cli.cli", "dev", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/live", timeout=90, proc=proc)
        ready = httpx2.get(f"{base}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        health = httpx2.get(f"{base}/health", timeout=10).json()
        assert health["services"] == {
            "database": "healthy",
            "redis": "healthy",
            "openai": "healthy",
        }
        wrong = {"project_id": "proj_demo", "api_key": "bx_0123456789abcdef_" + "w" * 43}
        statuses = [
            httpx2.post(f"{base}/api/v1/auth/token", json=wrong, timeout=10).status_code
            for _ in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        printed = re.search(r"with API key (bx_\S+)", (tmp_path / "dev.log").read_text())
        assert printed is not None
        key = printed.group(1)
        claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
        for model in ("mock-claude", "mock-claude-bedrock", "mock-gemini", "gpt-4.1-nano"):
            message = claude.messages.create(
                model=model, max_tokens=3, messages=[{"role": "user", "content": "oi"}]
            )
            assert (message.content[0].type, message.usage.output_tokens) == ("text", 3), model
        gpt = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        for model in ("mock-claude", "mock-gemini"):
            answer = gpt.responses.create(model=model, input="oi", max_output_tokens=3)
            assert answer.usage is not None
            assert (answer.status, answer.usage.output_tokens) == ("incomplete", 3), model
        listed = subprocess.run(
            [sys.executable, "-m", "bradax_cli.cli", "project", "list"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert [p["id"] for p in json.loads(listed.stdout)["projects"]] == ["proj_demo"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
    output = (tmp_path / "dev.log").read_text()
    head = output.splitlines()[:6]
    assert any("DATABASE_URL not set: using an embedded PostgreSQL" in line for line in head)
    assert any("REDIS_URL not set: using an embedded Redis" in line for line in head)
    assert any("OPENAI_API_KEY not set: using the bundled mock upstream" in line for line in head)
    assert any(line.startswith("bradax dev:   REDIS_URL=unix://") for line in head)
    assert "Redis server: Valkey" in output
    assert "created demo project proj_demo with API key bx_" in output
    assert "`bradax project list` in this directory" in output
    assert code == 0, output
    time.sleep(0.5)
    data = tmp_path / ".bradax"
    assert not (data / "postgres" / "postmaster.pid").exists(), "embedded PostgreSQL left running"
    assert not (data / "redis" / "redis.sock").exists(), "embedded Redis left running"
    assert not (data / "dev.json").exists()


# -- slow and idle clients -----------------------------------------------------------------

SLOW_CLIENT_ENV = {
    "HEADER_TIMEOUT_SECONDS": "1",
    "BODY_TIMEOUT_SECONDS": "1",
    "KEEPALIVE_TIMEOUT_SECONDS": "1",
    "MAX_HEADER_BYTES": "8192",
}


def _response(sock: socket.socket) -> bytes:
    """One whole HTTP response (head and Content-Length body) read from `sock`."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _check_slow_clients(url: str, body_path: str, probe: str) -> None:
    """Silent, slowloris, oversize-head, stalled-body and idle keep-alive connections are all
    closed within about a second, and a client that keeps to the limits is served twice."""
    port = int(url.rsplit(":", 1)[1])
    address = ("127.0.0.1", port)
    with socket.create_connection(address) as silent:
        took, answer = closed_within(silent, 5)
        assert took < 3
        assert answer == b""
    with socket.create_connection(address) as slow:
        head = f"GET {probe} HTTP/1.1\r\nHost: b\r\nX-Slow: ".encode()
        took, answer = trickled_until_closed(slow, head, 6)
        assert took < 3
        assert answer.startswith(b"HTTP/1.1 408")
    with socket.create_connection(address) as big:
        big.sendall(f"GET {probe} HTTP/1.1\r\nHost: b\r\nX-Big: ".encode() + b"a" * 20_000)
        took, answer = closed_within(big, 5)
        assert answer.startswith(b"HTTP/1.1 431")
    with socket.create_connection(address) as stalled:
        stalled.sendall(
            f"POST {body_path} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            'Content-Length: 200\r\n\r\n{"project_id":'.encode()
        )
        took, answer = closed_within(stalled, 5)
        assert took < 3
        assert answer.startswith(b"HTTP/1.1 408")
    with socket.create_connection(address) as early:
        # Answered (413) before its body is sent: the rest of the body is dropped quietly.
        early.sendall(
            f"POST {body_path} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            "Content-Length: 5000000\r\n\r\n".encode()
        )
        assert _response(early).startswith(b"HTTP/1.1 413")
        early.sendall(b" " * 100_000)
        took, answer = closed_within(early, 5)
        assert took < 3
        assert answer == b""  # no second answer (a 431 for the body bytes, say)
    with socket.create_connection(address) as polite:
        request = f"GET {probe} HTTP/1.1\r\nHost: b\r\n\r\n".encode()
        polite.sendall(request[:10])
        time.sleep(0.3)
        polite.sendall(request[10:])
        assert _response(polite).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)  # idle, but less than the keep-alive timeout
        polite.sendall(request)
        assert _response(polite).startswith(b"HTTP/1.1 200")
        took, answer = closed_within(polite, 5)  # then idle past the keep-alive timeout
        assert took < 3
        assert answer == b""


@pytest.mark.slow
def test_bradax_serve_closes_slow_and_idle_clients(settings: Settings, tmp_path: Path) -> None:
    """`bradax serve` closes silent, slowloris, stalled-body and idle connections within its
    deadlines and refuses an oversize head, while serving clients that keep to them."""
    proc = serve_broker(settings, tmp=tmp_path, **SLOW_CLIENT_ENV)
    try:
        _check_slow_clients(proc.url, "/api/v1/auth/token", "/live")
    finally:
        proc.stop()


@pytest.mark.slow
def test_function_image_server_closes_slow_and_idle_clients(
    settings: Settings, tmp_path: Path
) -> None:
    """A function served as its image serves it closes slow and idle clients the same way."""
    proc = serve_function(
        "auth_token", settings, probe="/.well-known/jwks.json", tmp=tmp_path, **SLOW_CLIENT_ENV
    )
    try:
        _check_slow_clients(proc.url, "/api/v1/auth/token", "/.well-known/jwks.json")
    finally:
        proc.stop()


@pytest.mark.slow
def test_many_slow_header_connections_are_all_closed(settings: Settings, tmp_path: Path) -> None:
    """300 connections that each send half a request head are all closed by the head deadline,
    and the server answers a normal request meanwhile."""
    proc = serve_broker(settings, tmp=tmp_path, **SLOW_CLIENT_ENV)
    address = ("127.0.0.1", int(proc.url.rsplit(":", 1)[1]))
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(address)
            sock.sendall(b"GET /live HTTP/1.1\r\nHost: b\r\n")
            held.append(sock)
        assert httpx2.get(proc.url + "/live", timeout=5).status_code == 200
        started = time.monotonic()
        for sock in held:
            closed_within(sock, max(0.1, 6 - (time.monotonic() - started)))
        assert time.monotonic() - started < 6
    finally:
        for sock in held:
            sock.close()
        proc.stop()


@pytest.mark.slow
async def test_a_slow_answer_is_not_cut_by_client_deadlines(
    configure: Any, clean_state: None, mock: MockUpstream, tmp_path: Path
) -> None:
    """Deadlines cover receiving a request only: an upstream answer slower than the head and
    body deadlines together still reaches the client, JSON and streamed."""
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url)
    tenant = await create_tenant(current)
    mock.configure(latency_ms=2500)
    proc = serve_broker(current, tmp=tmp_path, **SLOW_CLIENT_ENV)
    try:
        async with httpx2.AsyncClient(timeout=30) as http:
            body = {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}]}
            reply = await http.post(
                proc.url + "/v1/chat/completions", headers=tenant.key_auth, json=body
            )
            assert reply.status_code == 200, reply.text
            async with http.stream(
                "POST",
                proc.url + "/v1/chat/completions",
                headers=tenant.key_auth,
                json={**body, "stream": True},
            ) as stream:
                lines = [line async for line in stream.aiter_lines() if line.startswith("data:")]
    finally:
        proc.stop()
    assert lines[-1] == "data: [DONE]"


@pytest.mark.slow
def test_connections_beyond_max_connections_get_503(settings: Settings, tmp_path: Path) -> None:
    """With MAX_CONNECTIONS open connections, a further request is answered 503 at once; when
    they close, requests are served again."""
    proc = serve_broker(settings, tmp=tmp_path, MAX_CONNECTIONS="5")
    address = ("127.0.0.1", int(proc.url.rsplit(":", 1)[1]))
    held = [socket.create_connection(address) for _ in range(5)]
    try:
        time.sleep(0.3)
        assert httpx2.get(proc.url + "/live", timeout=5).status_code == 503
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert httpx2.get(proc.url + "/live", timeout=5).status_code == 200
    finally:
        for sock in held:
            sock.close()
        proc.stop()


@pytest.mark.parametrize("server", ["bradax serve", "function image"])
def test_sigterm_flushes_counters_and_withdraws_gauges(
    settings: Settings, tmp_path: Path, server: str
) -> None:
    """On SIGTERM, under the router and under the function image's server alike, the process
    flushes what it counted since the last flush and withdraws its gauges before it exits."""
    if server == "bradax serve":
        proc = serve_broker(settings, tmp_path)
    else:
        proc = serve_function("health", settings, "/live", tmp_path)
    redis = sync_redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        for _ in range(5):
            assert httpx2.get(f"{proc.url}/live", timeout=5).status_code == 200
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0, proc.output()
        counters = {k.decode(): int(v) for k, v in redis.hgetall("bx:m:counters").items()}
        live = {name: n for name, n in counters.items() if "/live" in name and "requests" in name}
        assert sum(live.values()) >= 5, counters
        assert redis.keys("bx:m:gauge:*") == []
    finally:
        proc.stop()
        redis.close()
