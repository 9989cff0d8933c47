"""GET /metrics: the spec's per-project JSON, exact against the usage ledger, with its window,
its budget block and scope enforcement.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx2
import pytest

from common import reports
from common.quota import budget_month
from common.redis import RedisStore
from common.settings import Settings
from tests.conftest import (
    MockUpstream,
    Tenant,
    create_tenant,
    ledger_rows,
    login,
    outbox,
    outbox_backlog,
)

INVOKE = "/api/v1/llm/invoke"
MESSAGES = [{"role": "user", "content": "Explique seguros de vida"}]  # 11 prompt tokens
EMPTY = {
    "total_requests": 0,
    "successful_requests": 0,
    "failed_requests": 0,
    "average_latency_ms": 0,
    "total_cost_usd": 0.0,
    "total_cost_usd_exact": "0",
    "models_usage": {},
    "tokens": {"prompt": 0, "completion": 0},
    "cached_requests": 0,
}


async def invoke(http: httpx2.AsyncClient, tenant: Tenant, **body: Any) -> httpx2.Response:
    """POST /api/v1/llm/invoke (gpt-4.1-nano, max 5 tokens unless overridden)."""
    payload = {"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"max_tokens": 5}}
    payload.update(body)
    return await http.post(INVOKE, json=payload, headers=tenant.auth)


async def metrics(http: httpx2.AsyncClient, tenant: Tenant, query: str = "") -> httpx2.Response:
    """GET /metrics with the tenant's token."""
    return await http.get("/metrics" + query, headers=tenant.auth)


def figures(body: dict[str, Any]) -> dict[str, Any]:
    """The usage figures of a /metrics body (without project, window, budget and backlog)."""
    skip = ("project_id", "window", "budget", "pending_records")
    return {k: v for k, v in body.items() if k not in skip}


def from_ledger(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What /metrics must say about these ledger rows."""
    cost = sum((r["cost_usd"] for r in rows), Decimal(0))
    timed = [r["latency_ms"] for r in rows if not r["cached"]]
    models: dict[str, int] = {}
    for row in rows:
        models[row["model"]] = models.get(row["model"], 0) + 1
    ok = sum(1 for r in rows if r["status"] == "success")
    exact = format(cost.normalize(), "f") if cost else "0"
    return {
        "total_requests": len(rows),
        "successful_requests": ok,
        "failed_requests": len(rows) - ok,
        "average_latency_ms": round(sum(timed) / len(timed)) if timed else 0,
        "total_cost_usd": float(cost),
        "total_cost_usd_exact": exact,
        "models_usage": dict(sorted(models.items())),
        "tokens": {
            "prompt": sum(r["prompt_tokens"] for r in rows),
            "completion": sum(r["completion_tokens"] for r in rows),
        },
        "cached_requests": sum(1 for r in rows if r["cached"]),
    }


async def wait_for_cache(settings: Settings) -> None:
    """Wait until the response cache holds an entry (it is written in the background)."""
    redis = RedisStore(settings)
    try:
        for _ in range(100):
            if await redis.call("KEYS", "bx:cache:*"):
                return
            await asyncio.sleep(0.02)
    finally:
        await redis.close()
    raise AssertionError("the response cache was never written")


async def test_figures_are_exact_against_the_ledger(broker: Any, mock: MockUpstream) -> None:
    """Successes, an upstream failure, a cache hit and a stream add up exactly as in the ledger."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings, "proj_m", cache_enabled=True))
    other = await login(http, await create_tenant(settings, "proj_other"))
    statuses = [(await invoke(http, tenant)).status_code for _ in range(2)]
    statuses.append((await invoke(http, tenant, model="gpt-4.1-mini", parameters={})).status_code)
    mock.enqueue({"status": 500})
    statuses.append((await invoke(http, tenant)).status_code)
    cached = {"parameters": {"max_tokens": 3, "temperature": 0}}
    statuses.append((await invoke(http, tenant, **cached)).status_code)
    await wait_for_cache(settings)
    hit = await invoke(http, tenant, **cached)
    assert hit.headers["x-bradax-cache"] == "HIT"
    statuses.append(hit.status_code)
    async with http.stream(
        "POST",
        INVOKE,
        json={
            "model": "gpt-4.1-nano",
            "messages": MESSAGES,
            "stream": True,
            "parameters": {"max_tokens": 4},
        },
        headers=tenant.auth,
    ) as reply:
        statuses.append(reply.status_code)
        assert [line async for line in reply.aiter_lines() if line][-1] == "data: [DONE]"
    statuses.append((await invoke(http, tenant, model="gpt-4.1")).status_code)
    statuses.append((await invoke(http, other)).status_code)
    assert statuses == [200, 200, 200, 502, 200, 200, 200, 403, 200]

    rows = await ledger_rows(settings, "proj_m")  # /metrics reads the ledger, never drains
    reply = await metrics(http, tenant)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    reports.UsageReport.model_validate(body)  # the documented shape, nothing more or less
    assert body["pending_records"] == 0
    assert figures(body) == from_ledger(rows)
    # 2 x (11 + 5 tokens) + mini (11 + 12) + (11 + 3) + cache hit (free) + stream (11 + 4)
    assert figures(body) == {
        "total_requests": 7,
        "successful_requests": 6,
        "failed_requests": 1,
        "average_latency_ms": from_ledger(rows)["average_latency_ms"],
        "total_cost_usd": 0.0000348,
        "total_cost_usd_exact": "0.0000348",
        "models_usage": {"gpt-4.1-mini": 1, "gpt-4.1-nano": 6},
        "tokens": {"prompt": 55, "completion": 29},
        "cached_requests": 1,
    }
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    assert body["project_id"] == "proj_m"
    assert body["window"] == {"from": start.isoformat(), "to": end.isoformat()}
    assert body["budget"] == {
        "month": budget_month(now),
        "monthly_usd": "100",
        "used_usd": "0.0000348",
        "reserved_usd": "0",
        "remaining_usd": "99.9999652",
    }


async def set_created_at(settings: Settings, moments: list[str]) -> None:
    """Move the ledger rows (oldest first) to the given instants."""
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        ids = [
            r["request_id"]
            for r in await conn.fetch(
                "SELECT request_id FROM usage_ledger ORDER BY created_at, request_id"
            )
        ]
        assert len(ids) == len(moments)
        for request_id, moment in zip(ids, moments, strict=True):
            await conn.execute(
                "UPDATE usage_ledger SET created_at = $2 WHERE request_id = $1",
                request_id,
                datetime.fromisoformat(moment),
            )
    finally:
        await conn.close()


async def test_the_window_is_half_open(broker: Any) -> None:
    """?from=&to= select [from, to): dates are UTC midnight, datetimes may carry an offset."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings))
    for _ in range(3):
        assert (await invoke(http, tenant)).status_code == 200
    await ledger_rows(settings)
    await set_created_at(
        settings,
        [
            "2025-03-31T23:59:59.999999+00:00",
            "2025-04-01T00:00:00+00:00",
            "2025-04-30T23:59:59+00:00",
        ],
    )
    april = (await metrics(http, tenant, "?from=2025-04-01&to=2025-05-01")).json()
    assert (april["total_requests"], april["total_cost_usd_exact"]) == (2, "0.0000062")
    assert april["window"] == {
        "from": "2025-04-01T00:00:00+00:00",
        "to": "2025-05-01T00:00:00+00:00",
    }
    # An unencoded '+' in a query string arrives as a space: the offset is still understood.
    shifted = (await metrics(http, tenant, "?from=2025-04-01T01:00:00+01:00&to=2025-04-30")).json()
    assert shifted["total_requests"] == 1
    assert shifted["window"]["from"] == "2025-04-01T00:00:00+00:00"  # echoed in UTC
    zulu = (await metrics(http, tenant, "?from=2025-03-31T23:59:59.999999Z&to=2025-04-01")).json()
    assert zulu["total_requests"] == 1
    naive = (await metrics(http, tenant, "?from=2025-03-01T00:00:00&to=2025-06-01")).json()
    assert naive["total_requests"] == 3
    empty = (await metrics(http, tenant, "?from=2020-01-01&to=2020-02-01")).json()
    assert figures(empty) == EMPTY
    this_month = (await metrics(http, tenant)).json()
    assert figures(this_month) == EMPTY
    assert this_month["budget"]["used_usd"] == "0.0000093"  # the budget month is not moved


@pytest.mark.parametrize(
    ("query", "param", "message"),
    [
        ("?from=2025-02-30", "from", "from: not an ISO date or datetime"),
        ("?from=", "from", "from: not an ISO date or datetime"),
        ("?to=yesterday", "to", "to: not an ISO date or datetime"),
        ("?from=0001-01-01T00:00:00%2B01:00", "from", "from: not an ISO date or datetime"),
        ("?from=2025-05-01&to=2025-04-01", "to", "'to' must be after 'from'"),
        ("?from=2025-05-01&to=2025-05-01", "to", "'to' must be after 'from'"),
    ],
)
async def test_a_bad_window_is_400(broker: Any, query: str, param: str, message: str) -> None:
    """An unparseable or inverted window is a 400 naming the parameter."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings))
    reply = await metrics(http, tenant, query)
    assert reply.status_code == 400
    assert reply.json() == {
        "error": {
            "code": "invalid_request",
            "message": message,
            "request_id": reply.headers["x-request-id"],
        }
    }
    assert message.startswith((param, f"'{param}'"))


async def test_reserved_budget_counts_against_the_remainder(
    broker: Any, mock: MockUpstream
) -> None:
    """During a call, its reservation is shown (as Redis holds it) and taken off the remainder."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings, budget_monthly_usd="1"))
    assert (await invoke(http, tenant)).status_code == 200
    mock.configure(latency_ms=1000)
    slow = asyncio.create_task(invoke(http, tenant))
    redis = RedisStore(settings)
    key = f"bx:b:{{{tenant.project_id}}}:{budget_month(datetime.now(UTC))}"
    try:
        for _ in range(100):  # until the call holds its reservation
            raw = await redis.call("HGET", key, "reserved")
            if raw and int(raw):
                break
            await asyncio.sleep(0.01)
        budget = (await metrics(http, tenant)).json()["budget"]
    finally:
        await redis.close()
    assert (await slow).status_code == 200
    reserved = Decimal(int(raw)) / Decimal(1_000_000_000)
    assert reserved > 0
    assert Decimal(budget["reserved_usd"]) == reserved
    assert budget["used_usd"] == "0.0000031"
    assert Decimal(budget["remaining_usd"]) == 1 - Decimal("0.0000031") - reserved
    after = (await metrics(http, tenant)).json()["budget"]
    assert (after["used_usd"], after["reserved_usd"], after["remaining_usd"]) == (
        "0.0000062",
        "0",
        "0.9999938",
    )


async def test_an_exhausted_budget_remains_zero(broker: Any) -> None:
    """A project with no budget shows zero remaining, never a negative amount."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings, budget_monthly_usd="0"))
    assert (await invoke(http, tenant)).status_code == 402
    budget = (await metrics(http, tenant)).json()["budget"]
    assert (budget["monthly_usd"], budget["used_usd"], budget["remaining_usd"]) == ("0", "0", "0")


async def test_read_metrics_scope_is_required(broker: Any) -> None:
    """Only a token with read_metrics reads /metrics; it needs no invoke_llm to do so."""
    http, settings = broker
    invoker = await login(http, await create_tenant(settings, "proj_i", scopes=("invoke_llm",)))
    reader = await login(http, await create_tenant(settings, "proj_r", scopes=("read_metrics",)))
    refused = await metrics(http, invoker)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    allowed = await metrics(http, reader)
    assert allowed.status_code == 200
    assert allowed.json()["project_id"] == "proj_r"
    assert (await invoke(http, reader)).status_code == 403
    assert (await http.get("/metrics")).status_code == 401
    as_key = await http.get("/metrics", headers=reader.key_auth)
    assert as_key.status_code == 401


async def test_total_cost_keeps_sub_nano_precision(broker: Any, configure: Any) -> None:
    """Costs below a nano-dollar are summed exactly from the ledger's NUMERIC column."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings))
    for _ in range(2):
        assert (await invoke(http, tenant)).status_code == 200
    rows = await ledger_rows(settings)
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        await conn.execute(
            "UPDATE usage_ledger SET cost_usd = $1 WHERE request_id = $2",
            Decimal("0.0000000001"),
            rows[0]["request_id"],
        )
    finally:
        await conn.close()
    body = (await metrics(http, tenant)).json()
    assert body["total_cost_usd_exact"] == "0.0000031001"
    assert body["total_cost_usd"] == 0.0000031001


@pytest.mark.parametrize(
    ("value", "moment"),
    [
        ("2025-04-01", "2025-04-01T00:00:00+00:00"),
        ("2025-04-01T01:30:00", "2025-04-01T01:30:00+00:00"),
        ("2025-04-01 01:30", "2025-04-01T01:30:00+00:00"),
        ("2025-04-01T01:30:00Z", "2025-04-01T01:30:00+00:00"),
        ("2025-04-01T01:30:00-03:00", "2025-04-01T04:30:00+00:00"),
        ("2025-04-01T01:30:00 03:00", "2025-03-31T22:30:00+00:00"),
        ("2025-04-01 01:30:00 03:00", "2025-03-31T22:30:00+00:00"),
    ],
)
def test_window_bounds_parse_as_utc(value: str, moment: str) -> None:
    """Dates are UTC midnight, naive times UTC; an offset whose '+' became a space still counts."""
    assert reports.parse_moment(value, "from") == datetime.fromisoformat(moment)


def test_the_function_documents_both_routes(settings: Settings, router: Any) -> None:
    """The metrics function's OpenAPI document describes /metrics (its report) and /prometheus."""
    app = sys.modules["bradax_function_metrics"]._app
    document = app.openapi()
    assert set(document["paths"]) == {"/metrics", "/prometheus"}
    report = document["paths"]["/metrics"]["get"]
    assert [p["name"] for p in report["parameters"]] == ["from", "to"]
    assert report["security"] == [{"bearer": []}]
    assert report["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UsageReport"
    }
    assert {"400", "401", "403", "503"} <= set(report["responses"])
    schema = document["components"]["schemas"]["UsageReport"]
    assert set(schema["required"]) == set(reports.UsageReport.model_fields)
    assert schema["properties"]["window"] == {"$ref": "#/components/schemas/ReportWindow"}
    window = document["components"]["schemas"]["ReportWindow"]
    assert set(window["properties"]) == {"from", "to"}
    scrape = document["paths"]["/prometheus"]["get"]
    assert set(scrape["responses"]["200"]["content"]) == {
        "text/plain; version=0.0.4; charset=utf-8"
    }
    assert "security" not in scrape


async def test_metrics_reports_pending_records_and_writes_nothing(broker: Any) -> None:
    """Records still in the ledger stream are counted as pending; reading /metrics leaves
    them there and writes no ledger row, and once drained they are in the figures."""
    from common.quota import UsageRecord

    http, settings = broker
    tenant = await login(http, await create_tenant(settings))
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    redis = RedisStore(settings)
    try:
        for n in range(3):
            record = UsageRecord(
                f"req_pending_{n}", tenant.project_id, None, "gpt-4.1-nano", None,
                10, 5, Decimal("0.001"), 20, "success", 200, None, False, False,
                budget_month(datetime.now(UTC)), now_ms,
            )  # fmt: skip
            await outbox(redis, record)
        replies = await asyncio.gather(*(metrics(http, tenant) for _ in range(4)))
        backlog = await outbox_backlog(redis)
    finally:
        await redis.close()
    assert {r.status_code for r in replies} == {200}
    assert [r.json()["pending_records"] for r in replies] == [3, 3, 3, 3]
    assert {r.json()["total_requests"] for r in replies} == {0}
    assert backlog == 3
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        assert await conn.fetchval("SELECT count(*) FROM usage_ledger") == 0
    finally:
        await conn.close()
    assert len(await ledger_rows(settings)) == 3
    after = (await metrics(http, tenant)).json()
    assert (after["pending_records"], after["total_requests"]) == (0, 3)
    assert after["total_cost_usd_exact"] == "0.003"
