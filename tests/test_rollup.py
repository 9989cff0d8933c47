"""The hourly rollup: kept by every ledger write, equal to the raw rows, read by /metrics and
the budget rebuild."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from common import deps, keyspace, ledger, reports, services
from common.ledger import Drainer
from common.quota import UsageRecord, budget_keys, budget_month, month_end, to_nano
from common.settings import Settings
from tests.conftest import outbox, outbox_backlog

MODELS = ("gpt-4.1-nano", "gpt-4.1-mini", "gpt-4o")
STATUSES = ("success", "success", "usage_unverified", "upstream_error", "reconciled")
# Everything the rollup holds, recomputed from the raw rows.
RAW_ROLLUP = """
    SELECT project_id, date_trunc('hour', created_at, 'UTC') AS hour, model, budget_month,
           count(*) AS requests,
           count(*) FILTER (WHERE status IN ('success', 'usage_unverified')) AS successful,
           count(*) FILTER (WHERE status NOT IN ('success', 'usage_unverified')) AS failed,
           count(*) FILTER (WHERE cached) AS cached,
           count(*) FILTER (WHERE NOT cached) AS timed,
           coalesce(sum(latency_ms) FILTER (WHERE NOT cached), 0) AS latency_ms_sum,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(cost_usd) AS cost_usd
    FROM usage_ledger GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""
ROLLUP = """
    SELECT project_id, hour, model, budget_month, requests, successful, failed, cached, timed,
           latency_ms_sum, prompt_tokens, completion_tokens, cost_usd
    FROM usage_hourly WHERE requests <> 0 ORDER BY 1, 2, 3, 4
"""


def record(rng: random.Random, n: int, project_id: str, at: datetime) -> UsageRecord:
    """A plausible usage record created at `at`."""
    return UsageRecord(
        request_id=f"req_{project_id}_{n}",
        project_id=project_id,
        key_id=None,
        model=rng.choice(MODELS),
        upstream_model=None,
        prompt_tokens=rng.randint(0, 5000),
        completion_tokens=rng.randint(0, 5000),
        cost_usd=Decimal(rng.randint(0, 10**9)) / Decimal(10**13),
        latency_ms=rng.randint(0, 30_000),
        status=rng.choice(STATUSES),
        http_status=200,
        error_code=None,
        streamed=rng.random() < 0.3,
        cached=rng.random() < 0.2,
        budget_month=budget_month(at),
        created_at_ms=int(at.timestamp() * 1000),
    )


async def raw_usage(
    conn: asyncpg.Connection, project_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """The /metrics figures computed straight from the ledger rows (the reference)."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS total,
               count(*) FILTER (WHERE status IN ('success', 'usage_unverified')) AS ok,
               coalesce(avg(latency_ms) FILTER (WHERE NOT cached), 0) AS latency,
               coalesce(sum(cost_usd), 0) AS cost,
               coalesce(sum(prompt_tokens), 0) AS prompt,
               coalesce(sum(completion_tokens), 0) AS completion,
               count(*) FILTER (WHERE cached) AS cached
        FROM usage_ledger WHERE project_id = $1 AND created_at >= $2 AND created_at < $3
        """,
        project_id,
        start,
        end,
    )
    models = await conn.fetch(
        "SELECT model, count(*) AS n FROM usage_ledger "
        "WHERE project_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY model",
        project_id,
        start,
        end,
    )
    cost = Decimal(row["cost"])
    return {
        "total_requests": row["total"],
        "successful_requests": row["ok"],
        "failed_requests": row["total"] - row["ok"],
        "average_latency_ms": round(float(row["latency"])),
        "total_cost_usd": float(cost),
        "total_cost_usd_exact": reports.usd(cost),
        "models_usage": {r["model"]: r["n"] for r in sorted(models, key=lambda r: r["model"])},
        "tokens": {"prompt": int(row["prompt"]), "completion": int(row["completion"])},
        "cached_requests": row["cached"],
    }


async def drain_all(drainer: Drainer) -> None:
    """Drain until the ledger stream is empty."""
    redis = deps.redis.get()
    for _ in range(100):
        await drainer.drain_once()
        if await outbox_backlog(redis) == 0:
            return
    raise AssertionError("the ledger stream was never emptied")


async def test_rollup_equals_raw_rows_without_duplicates_or_dead_letters(
    settings: Settings,
) -> None:
    """Records drained with duplicates (in a batch and across batches) and poison rows give a
    rollup equal to the raw rows, and /metrics figures equal to raw sums for any window."""
    rng = random.Random(16)
    redis, db = deps.redis.get(), deps.db.get()
    now = datetime.now(UTC)
    base = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    spread = 5 * 86400
    good = [
        record(rng, n, project, base - timedelta(hours=36, seconds=-rng.randint(0, spread)))
        for project in ("proj_a", "proj_b")
        for n in range(150)
    ]
    poison = [
        UsageRecord(**{**vars(good[0]), "request_id": "req_p_big", "prompt_tokens": 3_000_000_000}),
        UsageRecord(**{**vars(good[1]), "request_id": "req_p_nul", "model": "gpt\x00nano"}),
    ]
    first, second = good[:200], good[200:]
    drainer = Drainer(redis, db, audit_enabled=False)
    for item in [*first[:100], *first[:20]]:  # duplicates inside one batch
        await outbox(redis, item)
    await drain_all(drainer)
    for item in [*first[100:], *first[150:170], poison[0]]:  # the same, beside a poison row
        await outbox(redis, item)
    await drain_all(drainer)
    for item in [*second, *first[50:90], poison[1], *second[:10]]:  # and across batches
        await outbox(redis, item)
    await drain_all(drainer)
    # A writer outside the drainer (a deferred settle) replays records already ledgered.
    async with db.connection() as conn, conn.transaction():
        assert await ledger.write(conn, good[:30], with_audit=False) == []

    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM usage_ledger") == len(good)
        assert await conn.fetchval("SELECT count(*) FROM ledger_dead_letters") == 2
        assert [dict(r) for r in await conn.fetch(ROLLUP)] == [
            dict(r) for r in await conn.fetch(RAW_ROLLUP)
        ]
        assert await conn.fetchval("SELECT sum(requests) FROM usage_hourly") == len(good)
        windows = [
            (base, month_end(now)),
            (base - timedelta(days=3), base + timedelta(days=3)),
            (base - timedelta(minutes=90, microseconds=7), base + timedelta(hours=5, seconds=1)),
            (base + timedelta(minutes=10), base + timedelta(minutes=50)),
        ]
        for _ in range(8):
            start = base - timedelta(hours=40) + timedelta(seconds=rng.randint(0, 86400))
            windows.append((start, start + timedelta(seconds=rng.randint(1, 4 * 86400))))
        for project in ("proj_a", "proj_b"):
            for start, end in windows:
                expected = await raw_usage(conn, project, start, end)
                assert await reports.project_usage(db, project, start, end) == expected
        spend = await reports.month_spend_of(db, budget_month(now), ["proj_a", "proj_b"])
        for project in ("proj_a", "proj_b"):
            assert spend[project] == await conn.fetchval(
                "SELECT sum(cost_usd) FROM usage_ledger WHERE project_id = $1 "
                "AND budget_month = $2",
                project,
                budget_month(now),
            )


async def test_concurrent_writers_of_the_same_records_count_them_once(
    settings: Settings,
) -> None:
    """Several transactions inserting overlapping batches at once count each row once."""
    rng = random.Random(7)
    db = deps.db.get()
    now = datetime.now(UTC)
    records = [record(rng, n, "proj_c", now - timedelta(minutes=n)) for n in range(120)]

    async def writer(seed: int) -> None:
        batch = random.Random(seed).sample(records, 80)
        async with db.connection() as conn, conn.transaction():
            await ledger.write(conn, batch, with_audit=False)

    await asyncio.gather(*(writer(seed) for seed in range(6)))
    await writer(99)
    async with db.connection() as conn:
        rows = await conn.fetch(RAW_ROLLUP)
        assert [dict(r) for r in await conn.fetch(ROLLUP)] == [dict(r) for r in rows]
        total = await conn.fetchval("SELECT sum(requests) FROM usage_hourly")
        assert total == await conn.fetchval("SELECT count(*) FROM usage_ledger")


async def test_budget_rebuild_sums_the_rollup_and_adds_orphans_once(settings: Settings) -> None:
    """A lost month's spend is rebuilt from the rollup; a call both in the ledger and in the
    orphans hash (settled while the spend was missing) is counted once."""
    rng = random.Random(3)
    db, redis = deps.db.get(), deps.redis.get()
    now = datetime.now(UTC)
    month = budget_month(now)
    records = [record(rng, n, "proj_r", now - timedelta(seconds=n)) for n in range(40)]
    async with db.connection() as conn, conn.transaction():
        await ledger.write(conn, records, with_audit=False)
    # Another month's spend and another project's are not this month's.
    other = record(rng, 900, "proj_r", now - timedelta(days=40))
    stranger = record(rng, 901, "proj_s", now)
    async with db.connection() as conn, conn.transaction():
        await ledger.write(conn, [other, stranger], with_audit=False)
    orphan_in_ledger, orphan_not_yet = records[0], "req_proj_r_pending"
    orphans = keyspace.budget_orphans("proj_r", month)
    await redis.call(
        "HSET", orphans, orphan_in_ledger.request_id, to_nano(orphan_in_ledger.cost_usd)
    )
    await redis.call("HSET", orphans, orphan_not_yet, 5_000)
    await redis.call("DEL", budget_keys("proj_r", month)[0])
    spent = await services.governor.get().rebuild("proj_r", month)
    in_month = [r for r in records if r.budget_month == month]
    expected = (
        to_nano(sum((r.cost_usd for r in in_month if r is not orphan_in_ledger), Decimal(0)))
        + to_nano(orphan_in_ledger.cost_usd)
        + 5_000
    )
    assert spent == expected


async def test_changes_outside_the_writer_keep_the_rollup_equal(settings: Settings) -> None:
    """An operator's insert (a fixed dead letter), correction and deletion of ledger rows
    are applied to the rollup by the table's triggers, in the same transaction."""
    rng = random.Random(5)
    db = deps.db.get()
    now = datetime.now(UTC)
    records = [record(rng, n, "proj_o", now - timedelta(minutes=7 * n)) for n in range(30)]
    async with db.connection() as conn, conn.transaction():
        await ledger.write(conn, records, with_audit=False)
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO usage_ledger (request_id, project_id, model, prompt_tokens, "
            "completion_tokens, cost_usd, latency_ms, status, http_status, budget_month, "
            "created_at) VALUES ('req_fixed', 'proj_o', 'gpt-4o', 3, 4, 0.5, 9, 'success', "
            "200, $1, $2)",
            budget_month(now),
            now,
        )
        await conn.execute(
            "UPDATE usage_ledger SET created_at = created_at - interval '3 hours', "
            "cost_usd = cost_usd * 2 WHERE request_id LIKE 'req_proj_o_1%'"
        )
        await conn.execute("DELETE FROM usage_ledger WHERE request_id LIKE 'req_proj_o_2%'")
        assert [dict(r) for r in await conn.fetch(ROLLUP)] == [
            dict(r) for r in await conn.fetch(RAW_ROLLUP)
        ]
        assert await conn.fetchval("SELECT sum(requests) FROM usage_hourly") == 20
