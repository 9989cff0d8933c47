"""Migrations: applied in order, once each, recorded, safe to re-run and to run concurrently."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from common import migrate
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
            "WHERE column_name IN ('budget_monthly_usd', 'cost_usd')"
        )
    finally:
        await conn.close()
    assert {(r["table_name"], r["data_type"]) for r in rows} == {
        ("projects", "numeric"),
        ("usage_ledger", "numeric"),
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
