"""Two broker processes on a real 3-primary Redis Cluster: governance stays exact."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest

from common.quota import budget_keys, budget_month, to_nano
from common.settings import Settings
from tests.conftest import MockUpstream, create_tenant, ledger_rows
from tests.test_governance_processes import spray, start_brokers, token, worst_case
from tests.test_redis_cluster import Cluster, cluster  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture
def on_cluster(
    configure: Any,
    settings: Settings,
    mock: MockUpstream,
    cluster: Cluster,  # noqa: F811
) -> Settings:
    """Settings in force for brokers whose REDIS_URL names one node of the cluster."""
    current: Settings = configure(
        openai_api_key="mock-key",
        openai_base_url=mock.url,
        redis_url=f"redis://127.0.0.1:{cluster.ports[0]}",
        redis_cluster=True,
    )
    return current


async def test_budget_limit_ledger_and_revocation_hold_on_a_cluster(
    on_cluster: Settings,
    mock: MockUpstream,
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
) -> None:
    """Over two processes on a 3-primary cluster: 40 concurrent calls under a budget that
    fits N spend no more than it, an hourly limit of 10 admits exactly 10, the ledger holds
    every upstream call, and a revoked token is refused at once."""
    budget = Decimal("0.0002")
    fits = int(to_nano(budget) // to_nano(worst_case(100)))
    spender = await create_tenant(on_cluster, "proj_spender", budget_monthly_usd=budget)
    hourly = await create_tenant(on_cluster, "proj_hourly", max_requests_per_hour=10)
    brokers = start_brokers(on_cluster, tmp_path, 2, REDIS_CLUSTER="true")
    urls = [b.url for b in brokers]
    try:
        mock.configure(latency_ms=800)  # every admission happens before any call settles
        spend_token = await token(urls[0], spender)
        hourly_token = await token(urls[1], hourly)
        spent_codes, hourly_codes = await asyncio.gather(
            spray(urls, spend_token, 40, 100), spray(urls, hourly_token, 20, 1)
        )
        mock.configure(latency_ms=0)
        async with httpx2.AsyncClient(timeout=30) as http:
            revoked = await http.post(
                urls[0] + "/api/v1/auth/revoke",
                json={"token": hourly_token},
                headers={"Authorization": f"Bearer {hourly_token}"},
            )
            assert revoked.status_code == 200, revoked.text
            after = [
                await http.post(
                    url + "/api/v1/llm/invoke",
                    headers={"Authorization": f"Bearer {hourly_token}"},
                    json={"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "x"}]},
                )
                for url in urls
            ]
    finally:
        for broker in brokers:
            broker.stop()
    assert spent_codes.count(200) == fits
    assert spent_codes.count(402) == 40 - fits
    assert hourly_codes.count(200) == 10
    assert hourly_codes.count(429) == 10
    assert [r.status_code for r in after] == [401, 401]
    served = {c["request_id"] for c in mock.stats()["calls"] if c["outcome"] == "ok"}
    assert len(served) == fits + 10
    rows = await ledger_rows(on_cluster)
    assert {r["request_id"] for r in rows} == served
    spent = sum((r["cost_usd"] for r in rows if r["project_id"] == "proj_spender"), Decimal(0))
    assert spent <= budget
    # The state is on the cluster, each project's on the primary of its slot.
    key = budget_keys("proj_spender", budget_month(datetime.now(UTC)))[0]
    held = cluster.node(cluster.owner(key)).hget(key, "spent")
    assert held is not None
    assert int(held) == to_nano(spent)


async def test_six_hundred_calls_leave_the_cluster_keyspace_flat(
    on_cluster: Settings,
    tmp_path: Path,
    cluster: Cluster,  # noqa: F811
) -> None:
    """600 calls over two processes leave the number of keys on the cluster's primaries
    where a first handful of calls left it (within 100), and every call is ledgered."""
    tenant = await create_tenant(on_cluster, "proj_flat")
    brokers = start_brokers(on_cluster, tmp_path, 2, REDIS_CLUSTER="true")
    urls = [b.url for b in brokers]

    def keys() -> int:
        return sum(int(cluster.node(port).dbsize()) for port in cluster.ports)

    try:
        access = await token(urls[0], tenant)
        assert await spray(urls, access, 20, 5) == [200] * 20
        before = keys()
        for _ in range(6):
            assert await spray(urls, access, 100, 5) == [200] * 100
        after = keys()
    finally:
        for broker in brokers:
            broker.stop()
    assert abs(after - before) <= 100, (before, after)
    assert len(await ledger_rows(on_cluster, "proj_flat")) == 620
