"""Structured logs: the spec's JSON line, masked project ids, LOG_LEVEL, and no secret or prompt
text in any line a function prints, on success and error paths alike.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import secrets
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx2
import pytest

from common import logs
from common.logs import mask_project, request_id_var
from common.settings import Settings
from tests.conftest import (
    JWT_SECRET,
    MockUpstream,
    Process,
    Tenant,
    create_tenant,
    login,
    serve_function,
)

INVOKE = "/api/v1/llm/invoke"
PROMPT_WORD = "zanzibarquokka"
MESSAGES = [{"role": "user", "content": f"Explique {PROMPT_WORD} seguros"}]  # 10 tokens
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The broker logger's lines, written to a buffer at INFO for the test."""
    logger = logs.get_logger()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    level = logger.log_level
    logs.configure("INFO")
    yield buffer
    logger.setLevel(level)
    handler.setStream(previous)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every captured line, each parsed as one JSON object."""
    logs.get_logger().registered_handler.flush()  # lines are written once per loop turn
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("project_id", "masked"),
    [
        ("proj_inovacao_ia_chatbot_2025_a1b2c3d4", "proj_...c3d4"),
        ("proj_demo_project", "proj_...ject"),
        ("proj_test", "proj_..."),
        ("proj_abcdefg", "proj_..."),
        ("proj_abcdefghi", "proj_...fghi"),
        ("inovacao_ia_chatbot_2025", "in...2025"),
        ("chatbot-2025-a1b2c3d4", "ch...c3d4"),
        ("abc", "ab..."),
        (None, None),
        ("", ""),
    ],
)
def test_project_ids_are_masked_like_the_spec(project_id: str | None, masked: str | None) -> None:
    """Logs show a prefix and the last four characters, never enough to spell the whole id."""
    assert mask_project(project_id) == masked


def test_a_line_has_the_spec_shape(captured: io.StringIO) -> None:
    """One JSON object: timestamp, level, logger, message and extra with the request id first."""
    token = request_id_var.set("req_20250727_154500_abc123")
    try:
        logs.get_logger().info(
            "LLM request completed",
            project_token=mask_project("proj_inovacao_ia_chatbot_2025_a1b2c3d4"),
            model="gpt-4.1-nano",
            tokens_used=143,
            cost_usd="0.000025",
            latency_ms=1247,
            status="success",
        )
    finally:
        request_id_var.reset(token)
    (line,) = lines(captured)
    assert TIMESTAMP.fullmatch(line.pop("timestamp"))
    assert line == {
        "level": "INFO",
        "logger": "bradax.broker",
        "message": "LLM request completed",
        "extra": {
            "request_id": "req_20250727_154500_abc123",
            "project_token": "proj_...c3d4",
            "model": "gpt-4.1-nano",
            "tokens_used": 143,
            "cost_usd": 0.000025,
            "latency_ms": 1247,
            "status": "success",
        },
    }


def test_secret_named_fields_are_never_written(captured: io.StringIO) -> None:
    """A field named like a credential or client text is masked even if a caller passes it."""
    logs.get_logger().warning(
        "oops",
        api_key="bx_k_s3cret",
        access_token="eyJ.x.y",
        Authorization="Bearer eyJ",
        prompt=PROMPT_WORD,
        messages=[PROMPT_WORD],
        key_id="k1",
        cost_usd=Decimal("0.1"),
    )
    (line,) = lines(captured)
    assert line["extra"] == {
        "api_key": "***",
        "access_token": "***",
        "Authorization": "***",
        "prompt": "***",
        "messages": "***",
        "key_id": "k1",
        "cost_usd": 0.1,
    }


def test_exceptions_carry_their_traceback(captured: io.StringIO) -> None:
    """logger.exception adds the traceback under `exception`, at level ERROR."""
    try:
        raise ValueError("boom")
    except ValueError:
        logs.get_logger().exception("unhandled error", path="/x")
    (line,) = lines(captured)
    assert (line["level"], line["message"], line["extra"]) == (
        "ERROR",
        "unhandled error",
        {"path": "/x"},
    )
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: boom\n")


def test_the_level_filters_lines(captured: io.StringIO) -> None:
    """At WARNING, info lines are dropped and warnings kept."""
    logs.configure("WARNING")
    logs.get_logger().info("hidden")
    logs.get_logger().warning("shown")
    assert [line["message"] for line in lines(captured)] == ["shown"]


@pytest.fixture
async def broker(settings: Settings, configure: Any, mock: MockUpstream, router: Any) -> Any:
    """The whole broker in-process over the mock upstream."""
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url)
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    async with httpx2.AsyncClient(transport=transport, base_url="http://broker") as http:
        yield http, current


async def test_invoke_logs_one_spec_line_per_call(broker: Any, captured: io.StringIO) -> None:
    """A served call logs the spec's line under its request id; a denial logs why, masked."""
    http, settings = broker
    tenant = await login(
        http, await create_tenant(settings, "proj_inovacao_ia_chatbot_2025_a1b2c3d4")
    )
    logs.get_logger().registered_handler.flush()  # lines are written once per loop turn
    captured.truncate(0)
    captured.seek(0)
    ok = await http.post(
        INVOKE,
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"max_tokens": 5}},
        headers=tenant.auth,
    )
    denied = await http.post(
        INVOKE, json={"model": "gpt-4.1", "messages": MESSAGES}, headers=tenant.auth
    )
    assert (ok.status_code, denied.status_code) == (200, 403)
    served, refused = lines(captured)
    latency = served["extra"].pop("latency_ms")
    assert isinstance(latency, int)
    assert 0 <= latency < 5000
    assert (served["level"], served["logger"], served["message"]) == (
        "INFO",
        "bradax.broker",
        "LLM request completed",
    )
    assert served["extra"] == {
        "request_id": ok.headers["x-request-id"],
        "function": "llm_invoke",
        "project_token": "proj_...c3d4",
        "model": "gpt-4.1-nano",
        "tokens_used": 15,
        "cost_usd": 0.000003,
        "status": "success",
        "streamed": False,
        "cached": False,
        "method": "POST",
        "endpoint": "/api/v1/llm/invoke",
        "http_status": 200,
    }
    assert (refused["level"], refused["message"]) == ("INFO", "LLM request denied")
    assert isinstance(refused["extra"].pop("latency_ms"), float)
    assert refused["extra"] == {
        "request_id": denied.headers["x-request-id"],
        "function": "llm_invoke",
        "status": "model_not_allowed",
        "error_code": "model_not_allowed",
        "http_status": 403,
        "method": "POST",
        "endpoint": "/api/v1/llm/invoke",
        "project_token": "proj_...c3d4",
    }
    assert PROMPT_WORD not in captured.getvalue()


# -- functions as processes ------------------------------------------------------------------


async def with_db_password(database_url: str) -> tuple[str, str | None]:
    """The test DSN with a password in it (added if the server ignores it), and that password."""
    parts = urlsplit(database_url)
    if parts.password:
        return database_url, parts.password
    password = "pgpw-" + secrets.token_hex(8)
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    candidate = urlunsplit(parts._replace(netloc=netloc))
    try:
        conn = await asyncpg.connect(candidate)
    except Exception:  # the server checks passwords: keep the DSN as it is
        return database_url, None
    await conn.close()
    return candidate, password


async def start(
    *specs: tuple[str, str, dict[str, str]], settings: Settings, tmp: Path
) -> list[Process]:
    """Start functions as processes, in parallel."""
    return list(
        await asyncio.gather(
            *(
                asyncio.to_thread(serve_function, name, settings, probe, tmp, **env)
                for name, probe, env in specs
            )
        )
    )


@pytest.mark.slow
async def test_no_secret_or_prompt_in_any_line(
    settings: Settings, configure: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    """Across every function's output, success and error paths, no credential or prompt shows."""
    database_url, db_password = await with_db_password(settings.database_url.get_secret_value())
    openai_key = "sk-proj-" + secrets.token_hex(16)
    current = configure(
        database_url=database_url, openai_api_key=openai_key, openai_base_url=mock.url
    )
    debug = {"LOG_LEVEL": "DEBUG"}
    procs = await start(
        ("auth_token", "/.well-known/jwks.json", debug),
        ("llm_invoke", "/v1/models", debug),
        ("metrics", "/prometheus", debug),
        settings=current,
        tmp=tmp_path,
    )
    auth, llm, metrics = (p.url for p in procs)
    try:
        tenant = await create_tenant(
            current,
            "proj_inovacao_ia_chatbot_2025_a1b2c3d4",
            compliance_rules=("lgpd", "pii_detection"),
        )
        wrong_key = tenant.api_key[:-6] + "ZZZZZZ"
        async with httpx2.AsyncClient(timeout=30) as http:
            token_url = auth + "/api/v1/auth/token"
            bad = await http.post(
                token_url, json={"project_id": tenant.project_id, "api_key": wrong_key}
            )
            pair = (
                await http.post(
                    token_url, json={"project_id": tenant.project_id, "api_key": tenant.api_key}
                )
            ).json()
            bearer = {"Authorization": f"Bearer {pair['access_token']}"}
            body = {"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"max_tokens": 4}}
            ok = await http.post(llm + INVOKE, json=body, headers=bearer)
            replies = [
                bad,
                ok,
                await http.post(llm + INVOKE, json={**body, "model": "gpt-4.1"}, headers=bearer),
                await http.post(
                    llm + INVOKE, json={**body, "messages": PROMPT_WORD}, headers=bearer
                ),
                await http.post(
                    llm + INVOKE,
                    json={
                        **body,
                        "messages": [{"role": "user", "content": f"{PROMPT_WORD} a@b.co"}],
                    },
                    headers=bearer,
                ),
            ]
            mock.enqueue({"status": 500})
            replies.append(await http.post(llm + INVOKE, json=body, headers=bearer))
            openai_body = {"model": "gpt-4.1-nano", "messages": MESSAGES, "max_tokens": 3}
            replies.append(
                await http.post(
                    llm + "/v1/chat/completions", json=openai_body, headers=tenant.key_auth
                )
            )
            replies.append(
                await http.post(
                    llm + "/v1/chat/completions",
                    json=openai_body,
                    headers={"Authorization": f"Bearer {wrong_key}"},
                )
            )
            replies.append(await http.get(metrics + "/metrics", headers=bearer))
            replies.append(
                await http.get(
                    metrics + "/metrics", headers={"Authorization": f"Bearer {JWT_SECRET}"}
                )
            )
            refreshed = await http.post(
                auth + "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
            )
            replies.append(refreshed)
            replies.append(
                await http.post(
                    auth + "/api/v1/auth/revoke",
                    json={"refresh_token": refreshed.json()["refresh_token"]},
                )
            )
            replies.append(await http.get(metrics + "/prometheus"))
        assert [r.status_code for r in replies] == [
            401, 200, 403, 400, 422, 502, 200, 401, 200, 401, 200, 200, 200,
        ]  # fmt: skip
    finally:
        for proc in procs:
            proc.stop()
    output = "".join(proc.output() for proc in procs)
    forbidden = {
        "API key": tenant.api_key,
        "API key secret": tenant.api_key.split("_", 2)[2],
        "wrong key": wrong_key.split("_", 2)[2],
        "access token": pair["access_token"],
        "refresh token": pair["refresh_token"],
        "refreshed access token": refreshed.json()["access_token"],
        "refreshed refresh token": refreshed.json()["refresh_token"],
        "JWT secret": JWT_SECRET,
        "OpenAI key": openai_key,
        "prompt": PROMPT_WORD,
        "personal data": "a@b.co",
        "answer": "w0 w1 w2",
    }
    if db_password:
        forbidden["database password"] = db_password
    for what, value in forbidden.items():
        assert value not in output, what
    ours = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    for line in ours:
        assert set(line) <= {"timestamp", "level", "logger", "message", "extra", "exception"}
        assert line["logger"] == "bradax.broker"
        assert TIMESTAMP.fullmatch(line["timestamp"])
        assert line["extra"]["request_id"].startswith("req_") or "request_id" not in line["extra"]
    completed = [line for line in ours if line["message"] == "LLM request completed"]
    assert len(completed) == 2
    assert completed[0]["extra"]["request_id"] == ok.headers["x-request-id"]
    assert completed[0]["extra"]["project_token"] == "proj_...c3d4"
    assert completed[0]["extra"]["tokens_used"] == 14
    ended = [line["extra"]["status"] for line in ours if line["message"] == "LLM request ended"]
    assert ended == ["upstream_error"]


@pytest.mark.slow
async def test_log_level_is_honoured(
    settings: Settings, configure: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    """LOG_LEVEL=WARNING silences a function's info lines; LOG_LEVEL=INFO prints them."""
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url)
    quiet, loud = await start(
        ("llm_invoke", "/v1/models", {"LOG_LEVEL": "WARNING"}),
        ("llm_invoke", "/v1/models", {"LOG_LEVEL": "INFO"}),
        settings=current,
        tmp=tmp_path,
    )
    try:
        tenant: Tenant = await create_tenant(current)
        body = {"model": "gpt-4.1-nano", "messages": MESSAGES, "max_tokens": 2}
        async with httpx2.AsyncClient(timeout=30) as http:
            for proc in (quiet, loud):
                reply = await http.post(
                    proc.url + "/v1/chat/completions", json=body, headers=tenant.key_auth
                )
                assert reply.status_code == 200
    finally:
        quiet.stop()
        loud.stop()

    def messages(proc: Process) -> list[str]:
        return [
            json.loads(line)["message"]
            for line in proc.output().splitlines()
            if line.startswith("{")
        ]

    assert messages(quiet) == []
    # the start-up probe (401 without credentials), then the call
    assert messages(loud) == ["request completed", "LLM request completed"]
