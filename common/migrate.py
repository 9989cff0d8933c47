"""SQL migrations: ordered files in common/migrations, each applied once in a transaction.

Applied versions are recorded in schema_migrations with a checksum. A session-level advisory
lock makes concurrent runs safe: the second waits, then finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from common.db import UNAVAILABLE
from common.errors import ServiceUnavailable
from common.settings import redact_url

# An arbitrary, fixed 64-bit key for pg_advisory_lock ("bradax-migrate").
LOCK_KEY = 0x6272616478_01
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """A migration file is malformed, failed, or was changed after being applied."""


@dataclass(frozen=True)
class Migration:
    """One SQL file: its version, name, text and checksum."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migrations shipped with this code, ordered by version."""
    found: list[Migration] = []
    for entry in resources.files("common").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


def latest_version() -> int:
    """The highest version this code expects in the database."""
    migrations = available()
    return migrations[-1].version if migrations else 0


async def applied_versions(conn: asyncpg.Connection) -> dict[int, str]:
    """version -> checksum of what the database has applied (empty if never migrated)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def current_version(conn: asyncpg.Connection) -> int:
    """The highest applied version (0 when the database was never migrated)."""
    versions = await applied_versions(conn)
    return max(versions, default=0)


async def migrate(dsn: str, *, statement_cache_size: int = 100) -> list[Migration]:
    """Apply every pending migration to `dsn`; returns the ones applied by this call.

    `statement_cache_size` is DB_STATEMENT_CACHE_SIZE (0 through PgBouncer's transaction
    pooling). The session advisory lock needs a session: run it on a direct connection or
    through a session-pooled one.
    """
    try:
        conn = await asyncpg.connect(dsn, timeout=10, statement_cache_size=statement_cache_size)
    except UNAVAILABLE as exc:
        raise ServiceUnavailable("database unavailable") from exc
    except asyncpg.PostgresError as exc:  # no such database, bad password, no permission
        raise MigrationError(f"cannot connect to {redact_url(dsn)}: {exc}") from None
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(CREATE_TABLE)
            done = await applied_versions(conn)
            applied: list[Migration] = []
            for migration in available():
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} was changed "
                            "after it was applied"
                        )
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) "
                            "VALUES ($1, $2, $3)",
                            migration.version,
                            migration.name,
                            migration.checksum,
                        )
                except asyncpg.PostgresError as exc:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                    ) from None
                applied.append(migration)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()
