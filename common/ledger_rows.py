"""Writing usage records to PostgreSQL: ledger rows, their hourly rollup, their partitions.

`write` is the one writer of `usage_ledger` (the drainer and the deferred settles call it)
and runs in its caller's transaction: it makes sure the budget months' partitions exist,
inserts the rows (a request id already there is skipped), adds the rows actually inserted
to `usage_hourly`, and appends the audit decisions of the new ones.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from common import audit
from common.audit import AuditEvent
from common.db import HOLD_AT_MOST
from common.quota import UsageRecord, budget_month

CHUNK = 32
COLUMNS = (
    ("request_id", "text"),
    ("project_id", "text"),
    ("key_id", "text"),
    ("model", "text"),
    ("upstream_model", "text"),
    ("prompt_tokens", "int"),
    ("completion_tokens", "int"),
    ("total_tokens", "int"),
    ("cost_usd", "numeric"),
    ("latency_ms", "int"),
    ("status", "text"),
    ("http_status", "int"),
    ("error_code", "text"),
    ("streamed", "bool"),
    ("cached", "bool"),
    ("budget_month", "text"),
    ("created_at", "timestamptz"),
    ("cache_read_tokens", "int"),
    ("cache_write_tokens", "int"),
)
# Statuses the spec counts as successful requests (the rest are failed ones).
SUCCESSFUL = ("success", "usage_unverified")
ROLLUP_COLUMNS = (
    ("project_id", "text"),
    ("hour", "timestamptz"),
    ("model", "text"),
    ("budget_month", "text"),
    ("requests", "bigint"),
    ("successful", "bigint"),
    ("failed", "bigint"),
    ("cached", "bigint"),
    ("timed", "bigint"),
    ("latency_ms_sum", "bigint"),
    ("prompt_tokens", "bigint"),
    ("completion_tokens", "bigint"),
    ("cost_usd", "numeric"),
)
_SUMMED = [name for name, _ in ROLLUP_COLUMNS[4:]]
ROLLUP = (
    f"INSERT INTO usage_hourly AS h ({', '.join(name for name, _ in ROLLUP_COLUMNS)}) "
    "SELECT * FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(ROLLUP_COLUMNS, 1))
    + f") AS u({', '.join(name for name, _ in ROLLUP_COLUMNS)}) "
    'ORDER BY project_id COLLATE "C", hour, model COLLATE "C", budget_month '
    "ON CONFLICT (project_id, hour, model, budget_month) DO UPDATE SET "
    + ", ".join(f"{name} = h.{name} + EXCLUDED.{name}" for name in _SUMMED)
)
# This transaction's ledger inserts are in the rollup already: the insert trigger skips them.
ROLLUP_KEPT = "SELECT set_config('bradax.rollup_kept', 'on', true)"
# One statement per batch: every record as a column array, duplicates skipped.
_ARRAYS = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(COLUMNS, 1))
INSERT = (
    f"INSERT INTO usage_ledger ({', '.join(name for name, _ in COLUMNS)}) "
    f"SELECT * FROM unnest({_ARRAYS}) "
    "ON CONFLICT (request_id, budget_month) DO NOTHING RETURNING request_id, cost_usd"
)


def _row(record: UsageRecord) -> tuple[Any, ...]:
    return (
        record.request_id,
        record.project_id,
        record.key_id,
        record.model,
        record.upstream_model,
        record.prompt_tokens,
        record.completion_tokens,
        record.prompt_tokens + record.completion_tokens,
        record.cost_usd,
        record.latency_ms,
        record.status,
        record.http_status,
        record.error_code,
        record.streamed,
        record.cached,
        record.budget_month,
        datetime.fromtimestamp(record.created_at_ms / 1000, UTC),
        record.cache_read_tokens,
        record.cache_write_tokens,
    )


def decision(record: UsageRecord) -> AuditEvent:
    """The audit entry of an admitted call (what happened, never the prompt)."""
    return AuditEvent(
        "invoke",
        "allowed",
        record.project_id,
        f"key:{record.key_id}" if record.key_id else None,
        record.request_id,
        record.status,
        {
            "model": record.model,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "cost_usd": str(record.cost_usd),
            "cached": record.cached,
            "streamed": record.streamed,
        },
        datetime.fromtimestamp(record.created_at_ms / 1000, UTC),
    )


async def write(
    conn: asyncpg.Connection, records: list[UsageRecord], *, with_audit: bool
) -> list[UsageRecord]:
    """Insert records (duplicates ignored), their hourly rollup and their audit entries, in
    the caller's transaction; returns the new ones.

    Only the rows this call actually inserted reach the rollup. Locks are taken in one
    order by every writer (ledger rows by request id, then rollup rows by key), so
    concurrent writers of overlapping batches wait for each other but never deadlock.
    """
    # One record per request id (a batch can hold a replay of its own entry), in id order.
    unique = {record.request_id: record for record in reversed(records)}
    records = [unique[request_id] for request_id in sorted(unique)]
    # request id -> the cost as stored (the column's scale), for the rollup
    inserted: dict[str, Decimal] = {}
    if records:
        # Before any row: creating a partition locks the table, and must wait on nobody.
        await ensure_partitions(conn, {record.budget_month for record in records})
        await conn.execute(f"{HOLD_AT_MOST}; {ROLLUP_KEPT}")
    # Chunks keep each stretch of encoding short: the loop serves requests in between.
    for start in range(0, len(records), CHUNK):
        chunk = records[start : start + CHUNK]
        columns = list(zip(*(_row(record) for record in chunk), strict=True))
        for row in await conn.fetch(INSERT, *columns):
            inserted[row["request_id"]] = row["cost_usd"]
    fresh = [record for record in records if record.request_id in inserted]
    if fresh:
        await conn.execute(ROLLUP, *zip(*rollup_rows(fresh, inserted), strict=True))
    if with_audit and fresh:
        await audit.append(conn, [decision(r) for r in fresh])
    return fresh


# Budget months whose ledger partition this process has seen exist.
_partitions: set[str] = set()
_MONTH = re.compile(r"^[0-9]{4}(0[1-9]|1[0-2])$")


async def ensure_partitions(conn: asyncpg.Connection, months: set[str]) -> None:
    """Create the usage_ledger partitions of these budget months if they are missing.

    A value that is not a month gets none: its row is refused and dead-lettered.
    """
    for month in sorted(months - _partitions):
        if _MONTH.match(month) is None:
            continue
        created = await conn.fetchval("SELECT usage_ledger_partition($1)", month)
        if not created:  # it was there before this transaction: it cannot be rolled back
            _partitions.add(month)


def months_ahead(now: datetime) -> set[str]:
    """The current budget month and the next one (their partitions are kept ready)."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return {budget_month(start), budget_month(start + timedelta(days=32))}


def rollup_rows(records: list[UsageRecord], costs: dict[str, Decimal]) -> list[tuple[Any, ...]]:
    """usage_hourly increments of some records (`costs`: each one's cost as the ledger
    stored it), one per (project, hour, model, month), in key order (byte order, as the
    table's triggers lock them)."""
    sums: dict[tuple[str, int, str, str], list[Any]] = {}
    for r in records:
        key = (r.project_id, r.created_at_ms // 3_600_000, r.model, r.budget_month)
        row = sums.setdefault(key, [0, 0, 0, 0, 0, 0, 0, 0, Decimal(0)])
        ok = r.status in SUCCESSFUL
        row[0] += 1  # requests
        row[1] += ok  # successful
        row[2] += not ok  # failed
        row[3] += r.cached  # cached
        row[4] += not r.cached  # timed: the latency average counts calls that went upstream
        row[5] += 0 if r.cached else r.latency_ms
        row[6] += r.prompt_tokens
        row[7] += r.completion_tokens
        row[8] += costs[r.request_id]
    return [
        (project, datetime.fromtimestamp(hour * 3600, UTC), model, month, *values)
        for (project, hour, model, month), values in sorted(sums.items())
    ]
