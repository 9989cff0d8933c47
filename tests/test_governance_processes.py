"""Governance across real broker processes: shared limits, hard budgets, crashes, Redis loss."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from common.quota import to_nano
from common.settings import Settings
from tests.conftest import (
    MockUpstream,
    OwnRedis,
    Process,
    Tenant,
    create_tenant,
    ledger_rows,
    serve_broker,
)

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "hi"}]


def worst_case(max_tokens: int) -> Decimal:
    """What one gpt-4.1-nano call with MESSAGES reserves (the prompt bounded by the bytes of
    the whole forwarded body)."""
    body = {"max_tokens": max_tokens, "model": "gpt-4.1-nano", "messages": MESSAGES}
    prompt_bound = len(orjson.dumps(body))
    return (prompt_bound * Decimal("0.10") + max_tokens * Decimal("0.40")) / Decimal(1_000_000)


def start_brokers(settings: Settings, tmp: Path, count: int, **env: str) -> list[Process]:
    """`count` broker processes sharing PostgreSQL and Redis, started in parallel."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: serve_broker(settings, tmp=tmp, **env), range(count)))


@pytest.fixture
def upstream(settings: Settings, configure: Any, mock: MockUpstream) -> Settings:
    """Settings for broker processes that use the mock upstream."""
    current: Settings = configure(openai_api_key="mock-key", openai_base_url=mock.url)
    return current


async def token(url: str, tenant: Tenant) -> str:
    """An access token for the tenant from a broker process."""
    async with httpx2.AsyncClient() as http:
        reply = await http.post(
            url + "/api/v1/auth/token",
            json={"project_id": tenant.project_id, "api_key": tenant.api_key},
        )
    reply.raise_for_status()
    access: str = reply.json()["access_token"]
    return access


async def spray(urls: list[str], access: str, total: int, max_tokens: int) -> list[int]:
    """`total` concurrent invokes spread round-robin over the processes; their statuses."""
    limits = httpx2.Limits(max_connections=total)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as http:
        replies = await asyncio.gather(
            *(
                http.post(
                    urls[i % len(urls)] + "/api/v1/llm/invoke",
                    headers={"Authorization": f"Bearer {access}"},
                    json={
                        "model": "gpt-4.1-nano",
                        "messages": MESSAGES,
                        "parameters": {"max_tokens": max_tokens},
                    },
                )
                for i in range(total)
            )
        )
    odd = [r.text for r in replies if r.status_code not in (200, 402, 429)]
    if odd:
        print("UNEXPECTED", odd[:3])
    return [r.status_code for r in replies]


async def test_budget_holds_across_four_processes(
    upstream: Settings, mock: MockUpstream, tmp_path: Path
) -> None:
    """200 concurrent invokes over 4 processes: exactly the worst cases that fit reach upstream."""
    budget = Decimal("0.0010")
    fits = int(to_nano(budget) // to_nano(worst_case(100)))  # 20
    tenant = await create_tenant(upstream, budget_monthly_usd=budget)
    brokers = start_brokers(upstream, tmp_path, 4)
    try:
        mock.configure(latency_ms=1500)  # every admission happens before any call settles
        access = await token(brokers[0].url, tenant)
        codes = await spray([b.url for b in brokers], access, 200, 100)
    finally:
        for broker in brokers:
            broker.stop()
    assert codes.count(200) == fits
    assert codes.count(402) == 200 - fits
    assert mock.stats()["requests"] == fits
    rows = await ledger_rows(upstream)
    assert len(rows) == fits
    assert sum((r["cost_usd"] for r in rows), Decimal(0)) <= budget


async def test_hourly_limit_holds_across_four_processes(
    upstream: Settings, mock: MockUpstream, tmp_path: Path
) -> None:
    """100 concurrent invokes over 4 processes against 30 per hour: exactly 30 are admitted."""
    tenant = await create_tenant(upstream, max_requests_per_hour=30)
    brokers = start_brokers(upstream, tmp_path, 4)
    try:
        access = await token(brokers[0].url, tenant)
        codes = await spray([b.url for b in brokers], access, 100, 1)
    finally:
        for broker in brokers:
            broker.stop()
    assert codes.count(200) == 30
    assert codes.count(429) == 70
    assert mock.stats()["requests"] == 30


async def test_redis_loss_fails_closed_and_recovers(
    configure: Any, settings: Settings, mock: MockUpstream, tmp_path: Path, own_redis: OwnRedis
) -> None:
    """Redis down: 503, nothing reaches the upstream. Back (empty): the broker recovers by
    itself and rebuilds the month's spend from the ledger, so the budget still holds."""
    current = configure(
        openai_api_key="mock-key",
        openai_base_url=mock.url,
        redis_url=f"redis://127.0.0.1:{own_redis.port}/0",
    )
    # 0.0001 USD: each call costs 5.6 µUSD and reserves 13.2 µUSD; 16 calls fit.
    tenant = await create_tenant(current, budget_monthly_usd="0.0001")
    broker = serve_broker(current, tmp=tmp_path)
    try:
        access = await token(broker.url, tenant)
        before = [await _one(broker.url, access) for _ in range(10)]
        assert before == [200] * 10
        await ledger_rows(current)  # every settled call is in PostgreSQL
        own_redis.kill()
        during = [await _one(broker.url, access) for _ in range(3)]
        assert during == [503] * 3
        assert mock.stats()["requests"] == 10
        own_redis.start()  # empty: the month's spend is gone from Redis
        after = [await _one(broker.url, access) for _ in range(10)]
    finally:
        broker.stop()
    assert after == [200] * 6 + [402] * 4
    rows = await ledger_rows(current)
    assert len(rows) == 16
    assert sum((r["cost_usd"] for r in rows), Decimal(0)) <= Decimal("0.0001")


async def _one(url: str, access: str) -> int:
    async with httpx2.AsyncClient(timeout=30) as http:
        reply = await http.post(
            url + "/api/v1/llm/invoke",
            headers={"Authorization": f"Bearer {access}"},
            json={"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"max_tokens": 12}},
        )
    return reply.status_code
