"""The ledger's monthly partitions: made before a month's first row, kept ready ahead."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

from common import deps, ledger_rows
from common.ledger import Drainer
from common.ledger_rows import months_ahead
from common.quota import UsageRecord
from common.settings import Settings
from tests.conftest import outbox


def record(request_id: str, month: str, at: datetime) -> UsageRecord:
    """A small usage record of budget month `month`."""
    return UsageRecord(
        request_id, "proj_part", None, "gpt-4.1-nano", None, 4, 2, Decimal("0.000001"), 7,
        "success", 200, None, False, False, month, int(at.timestamp() * 1000),
    )  # fmt: skip


async def test_a_month_without_a_partition_gets_one_before_its_rows(settings: Settings) -> None:
    """A record of a month no partition holds yet is written to a new partition of its own,
    not dead-lettered, and its duplicate is still skipped."""
    redis, db = deps.redis.get(), deps.db.get()
    at = datetime(2025, 3, 14, 9, tzinfo=UTC)
    for _ in range(2):
        await outbox(redis, record("req_march", "202503", at))
    await Drainer(redis, db, audit_enabled=False).drain_once()
    rows = await db.fetch("SELECT request_id, tableoid::regclass::text AS part FROM usage_ledger")
    assert [(r["request_id"], r["part"]) for r in rows] == [("req_march", "usage_ledger_202503")]
    assert await db.fetchval("SELECT count(*) FROM ledger_dead_letters") == 0
    assert await db.fetchval("SELECT sum(requests) FROM usage_hourly") == 1


async def test_the_drainer_keeps_next_months_partition_ready(settings: Settings) -> None:
    """A running drainer creates the current and the next month's partitions when missing."""
    db = deps.db.get()
    now = datetime.now(UTC)
    ahead = sorted(months_ahead(now))
    assert len(ahead) == 2
    nxt = ahead[1]
    await db.execute(f"DROP TABLE IF EXISTS usage_ledger_{nxt}")
    ledger_rows._partitions.discard(nxt)  # this process saw it exist before the drop
    drainer = Drainer(deps.redis.get(), db, audit_enabled=False)
    drainer.ensure_started()
    try:
        for _ in range(200):
            if await db.fetchval("SELECT to_regclass($1) IS NOT NULL", f"usage_ledger_{nxt}"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the next month's partition was never created")
    finally:
        await drainer.aclose()
