"""Migrations: applied in order, once each, recorded, safe to re-run and to run concurrently."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from common import migrate
from common.ledger_rows import months_ahead
from tests.conftest import Services, with_database


@pytest.fixture
async def empty_db(services: Services) -> AsyncIterator[str]:
    """A brand-new, empty database (dropped afterwards)."""
    name = f"bradax_mig_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(services.admin_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    yield with_database(services.admin_dsn, name)
    admin = await asyncpg.connect(services.admin_dsn)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


async def test_fresh_database_gets_every_migration(empty_db: str) -> None:
    """A fresh database receives all migrations, recorded with their checksums."""
    applied = await migrate.migrate(empty_db)
    assert [m.version for m in applied] == [m.version for m in migrate.available()]
    conn = await asyncpg.connect(empty_db)
    try:
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert await migrate.current_version(conn) == migrate.latest_version()
    finally:
        await conn.close()
    assert [(r["version"], r["checksum"]) for r in rows] == [
        (m.version, m.checksum) for m in migrate.available()
    ]
    assert {"projects", "api_keys", "refresh_tokens", "usage_ledger", "audit_log"} <= tables


async def test_rerun_applies_nothing(empty_db: str) -> None:
    """Running migrations twice applies nothing the second time."""
    await migrate.migrate(empty_db)
    assert await migrate.migrate(empty_db) == []


async def test_concurrent_runs_apply_each_migration_once(empty_db: str) -> None:
    """Five concurrent runs together apply every migration exactly once (advisory lock)."""
    results = await asyncio.gather(*(migrate.migrate(empty_db) for _ in range(5)))
    applied = [m.version for result in results for m in result]
    assert sorted(applied) == [m.version for m in migrate.available()]
    conn = await asyncpg.connect(empty_db)
    try:
        count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    assert count == len(migrate.available())


async def test_a_changed_migration_is_refused(empty_db: str) -> None:
    """If an applied migration's checksum no longer matches, migrate refuses to continue."""
    await migrate.migrate(empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
    finally:
        await conn.close()
    with pytest.raises(migrate.MigrationError, match="was changed after it was applied"):
        await migrate.migrate(empty_db)


async def test_money_columns_are_numeric(empty_db: str) -> None:
    """Budgets and costs are NUMERIC columns, never floating point."""
    await migrate.migrate(empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE column_name IN ('budget_monthly_usd', 'cost_usd') "
            "AND table_name NOT LIKE 'usage\\_ledger\\_%'"  # the ledger's partitions
        )
    finally:
        await conn.close()
    assert {(r["table_name"], r["data_type"]) for r in rows} == {
        ("projects", "numeric"),
        ("usage_ledger", "numeric"),
        ("usage_hourly", "numeric"),
    }


def test_cli_migrate_prints_what_it_applied(empty_db: str) -> None:
    """`bradax migrate` applies pending migrations to DATABASE_URL and prints JSON."""
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": empty_db}
    first = subprocess.run(
        [sys.executable, "-m", "bradax_cli.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    assert '"applied": [\n    "0001_init"' in first.stdout
    again = subprocess.run(
        [sys.executable, "-m", "bradax_cli.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0
    assert '"applied": []' in again.stdout


def test_cli_migrate_unreachable_database_is_one_line() -> None:
    """`bradax migrate` against a closed port exits 1 with one line, no traceback."""
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://u:secretpw@127.0.0.1:9/x"}
    done = subprocess.run(
        [sys.executable, "-m", "bradax_cli.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "bradax: error: database unavailable"
    assert "secretpw" not in done.stderr + done.stdout


@pytest.mark.parametrize(("size", "named"), [(100, True), (0, False)])
async def test_statement_cache_size_is_honoured_by_the_pool(
    empty_db: str, redis_url: str, size: int, named: bool
) -> None:
    """DB_STATEMENT_CACHE_SIZE=0 leaves no named prepared statement on the server (PgBouncer)."""
    from common.db import Database
    from tests.conftest import make_settings

    await migrate.migrate(empty_db, statement_cache_size=size)
    db = Database(make_settings(empty_db, redis_url, db_statement_cache_size=size))
    try:
        async with db.connection() as conn:
            await conn.fetchval("SELECT count(*) FROM usage_ledger WHERE project_id = $1", "p")
            prepared = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
    finally:
        await db.close()
    assert (prepared > 0) is named


async def test_an_existing_ledger_is_rolled_up_and_partitioned(empty_db: str) -> None:
    """A ledger written before the rollup and the partitions existed keeps every row, is
    summed into the rollup and split into one partition per budget month (plus the
    current and the next), and a request id still gets one row."""
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(migrate.CREATE_TABLE)
        for m in migrate.available():
            if m.version < 4:
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
        await conn.execute(
            "INSERT INTO usage_ledger (request_id, project_id, model, prompt_tokens, "
            "completion_tokens, cost_usd, latency_ms, status, http_status, cached, "
            "budget_month, created_at) "
            "SELECT 'req_' || n, 'proj_' || (n % 3), 'gpt-4o', n, 2 * n, n * 0.001, n, "
            "CASE WHEN n % 4 = 0 THEN 'upstream_error' ELSE 'success' END, 200, n % 5 = 0, "
            "CASE WHEN n % 2 = 0 THEN '202610' ELSE '202611' END, "
            "timestamptz '2026-10-31 10:00Z' + n * interval '7 minutes' "
            "FROM generate_series(1, 200) AS n"
        )
        applied = await migrate.migrate(empty_db)
        assert [m.version for m in applied] == [4, 5, 6]
        partitions = await conn.fetch(
            "SELECT c.relname, count(l.*) AS n FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "LEFT JOIN usage_ledger l ON l.tableoid = c.oid "
            "WHERE i.inhparent = 'usage_ledger'::regclass GROUP BY 1 ORDER BY 1"
        )
        now = datetime.now(UTC)
        ahead = {f"usage_ledger_{m}" for m in months_ahead(now)}
        found = {r["relname"]: r["n"] for r in partitions}
        assert {"usage_ledger_202610": 100, "usage_ledger_202611": 100}.items() <= found.items()
        assert ahead <= set(found)
        duplicate = await conn.fetchval(
            "INSERT INTO usage_ledger (request_id, project_id, model, status, http_status, "
            "budget_month, created_at) VALUES ('req_7', 'proj_1', 'gpt-4o', 'success', 200, "
            "'202611', now()) ON CONFLICT (request_id, budget_month) DO NOTHING RETURNING 1"
        )
        assert duplicate is None
        rollup = await conn.fetch(
            "SELECT project_id, hour, sum(requests) AS n, sum(failed) AS failed, "
            "sum(cached) AS cached, sum(cost_usd) AS cost FROM usage_hourly "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        raw = await conn.fetch(
            "SELECT project_id, date_trunc('hour', created_at, 'UTC') AS hour, count(*) AS n, "
            "count(*) FILTER (WHERE status = 'upstream_error') AS failed, "
            "count(*) FILTER (WHERE cached) AS cached, sum(cost_usd) AS cost "
            "FROM usage_ledger GROUP BY 1, 2 ORDER BY 1, 2"
        )
    finally:
        await conn.close()
    assert [dict(r) for r in rollup] == [dict(r) for r in raw]
    assert sum(r["n"] for r in rollup) == 200
