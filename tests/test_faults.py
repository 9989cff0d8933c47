"""Money under faults: a PostgreSQL outage mid-traffic, and upstream failures of every kind."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest

from bradax_cli.embedded import EmbeddedPostgres
from common import migrate
from common.settings import Settings
from tests.conftest import MockUpstream, create_tenant, ledger_rows, make_settings, serve_broker

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def own_postgres() -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL server of this test's own (embedded), migrated, that can be paused."""
    folder = Path(tempfile.mkdtemp(prefix="bradax-pg-"))
    server = EmbeddedPostgres(folder / "pg")
    url = server.start()
    asyncio.run(migrate.migrate(url))
    yield server, url
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


async def _invoke(http: httpx2.AsyncClient, url: str, access: str) -> httpx2.Response:
    return await http.post(
        url + "/api/v1/llm/invoke",
        headers={"Authorization": f"Bearer {access}"},
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"max_tokens": 5}},
    )


async def _ledger_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT request_id FROM usage_ledger ORDER BY request_id")
    finally:
        await conn.close()
    return [row["request_id"] for row in rows]


async def test_postgres_outage_loses_and_duplicates_no_usage_record(
    clean_state: None,
    redis_url: str,
    mock: MockUpstream,
    tmp_path: Path,
    own_postgres: tuple[EmbeddedPostgres, str],
) -> None:
    """PostgreSQL stops during a stream of invokes and comes back: every call the upstream
    served is in the ledger exactly once (checked against the upstream's own record)."""
    server, pg_url = own_postgres
    settings = make_settings(
        pg_url,
        redis_url,
        openai_api_key="mock-key",
        openai_base_url=mock.url,
        policy_cache_seconds=1.0,
    )
    tenant = await create_tenant(settings)
    broker = serve_broker(settings, tmp=tmp_path, POLICY_CACHE_SECONDS="1")
    statuses: list[int] = []
    try:
        async with httpx2.AsyncClient(timeout=30) as http:
            reply = await http.post(
                broker.url + "/api/v1/auth/token",
                json={"project_id": tenant.project_id, "api_key": tenant.api_key},
            )
            access = reply.json()["access_token"]
            for _ in range(10):
                statuses.append((await _invoke(http, broker.url, access)).status_code)
            server.pause()
            outage_started = time.monotonic()
            for _ in range(15):  # outlives the 1 s policy cache: stale policy keeps serving
                statuses.append((await _invoke(http, broker.url, access)).status_code)
                await asyncio.sleep(0.1)
            assert time.monotonic() - outage_started > 1.0
            server.resume()
            for _ in range(5):
                statuses.append((await _invoke(http, broker.url, access)).status_code)
        served = {c["request_id"] for c in mock.stats()["calls"] if c["outcome"] == "ok"}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(await _ledger_ids(pg_url)) < len(served):
            await asyncio.sleep(0.2)
    finally:
        broker.stop()
    assert statuses == [200] * 30
    ids = await _ledger_ids(pg_url)
    assert len(ids) == len(set(ids)) == 30
    assert set(ids) == served


async def test_upstream_faults_settle_exactly(
    settings: Settings, configure: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    """429, 500, a hang and a cut stream: each client gets its documented answer within the
    timeout, no reservation is left behind and the ledger matches what the upstream produced."""
    current = configure(
        openai_api_key="mock-key",
        openai_base_url=mock.url,
        openai_timeout=2.0,
        openai_max_retries=1,
    )
    tenant = await create_tenant(current)
    broker = serve_broker(current, tmp=tmp_path)
    try:
        async with httpx2.AsyncClient(timeout=30) as http:
            reply = await http.post(
                broker.url + "/api/v1/auth/token",
                json={"project_id": tenant.project_id, "api_key": tenant.api_key},
            )
            access = reply.json()["access_token"]
            mock.enqueue({"status": 429, "retry_after": 0})  # retried, then served
            retried = await _invoke(http, broker.url, access)
            mock.enqueue({"status": 500}, {"status": 500})  # both attempts fail
            failed = await _invoke(http, broker.url, access)
            mock.enqueue({"hang": True})
            started = time.monotonic()
            hung = await _invoke(http, broker.url, access)
            hang_seconds = time.monotonic() - started
            mock.enqueue({"cut_after_chunks": 2})
            async with http.stream(
                "POST",
                broker.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {tenant.api_key}"},
                json={"model": "gpt-4.1-nano", "messages": MESSAGES, "stream": True},
            ) as cut:
                tail = [line async for line in cut.aiter_lines() if line.startswith("data:")][-1]
    finally:
        broker.stop()
    assert retried.status_code == 200
    assert (failed.status_code, failed.json()["error"]["code"]) == (502, "upstream_error")
    assert (hung.status_code, hung.json()["error"]["code"]) == (504, "upstream_timeout")
    assert hang_seconds < 3.5
    assert '"upstream_stream_cut"' in tail
    rows = {r["request_id"]: r for r in await ledger_rows(current)}
    calls = mock.stats()["calls"]
    produced = {c["request_id"]: c for c in calls if c["outcome"] in ("ok", "cut")}
    assert len(rows) == 4
    for request_id, call in produced.items():
        row = rows[request_id]
        if call["outcome"] == "ok":
            assert row["prompt_tokens"] == call["prompt_tokens"]
            assert row["completion_tokens"] == call["completion_tokens"]
        else:  # a cut stream has no usage: charged at its bound (the project's cap)
            assert row["prompt_tokens"] >= call["prompt_tokens"]
            assert row["completion_tokens"] == 4096
    statuses = sorted(r["status"] for r in rows.values())
    assert statuses == ["cut", "success", "upstream_error", "upstream_error"]
    errors = {r["http_status"]: r for r in rows.values() if r["status"] == "upstream_error"}
    assert set(errors) == {502, 504}
    # A refusal (502) bills nothing; a call that timed out may still bill: its bound.
    assert errors[502]["cost_usd"] == 0
    assert errors[504]["cost_usd"] > 0
    assert errors[504]["completion_tokens"] == 5  # its max_tokens
    redis = __import__("redis").Redis.from_url(current.redis_url.get_secret_value())
    month = time.strftime("%Y%m", time.gmtime())
    assert redis.hget(f"bx:b:{{{tenant.project_id}}}:{month}", "reserved") == b"0"
    assert redis.zcard(f"bx:bres:{{{tenant.project_id}}}:{month}") == 0
    assert Decimal(0) <= sum(r["cost_usd"] for r in rows.values())
