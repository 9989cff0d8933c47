"""Serving: each function alone under functions-framework, the dev router, and `bradax dev`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from bradax_cli.routes import RouteTable
from common.settings import Settings
from tests.conftest import free_port, serve_broker, serve_function, wait_http

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
    """`bradax dev` with nothing set starts embedded PostgreSQL, Redis and the mock, says so,
    serves /ready, and stops cleanly on Ctrl-C."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "JWT_SECRET_KEY")
        and not key.startswith("TEST_")
    }
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bradax_cli.cli",
            "dev",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/live", timeout=90, proc=proc)
        ready = httpx2.get(f"http://127.0.0.1:{port}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        health = httpx2.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert health["services"] == {
            "database": "healthy",
            "redis": "healthy",
            "openai": "healthy",
        }
    finally:
        proc.send_signal(signal.SIGINT)
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
    assert "created demo project proj_demo with API key bx_" in output
    assert code == 0, output
    time.sleep(0.5)
    postmaster = tmp_path / "data" / "postgres" / "postmaster.pid"
    assert not postmaster.exists(), "embedded PostgreSQL was left running"
