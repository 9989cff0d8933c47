"""Thin adapter over an asyncpg pool: created on first use, errors translated.

`Database.pool()` opens the pool lazily (functions have no start-up hook); every failure to
reach PostgreSQL surfaces as `ServiceUnavailable`, so callers fail closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from common.errors import ServiceUnavailable
from common.settings import Settings

# For transactions that take locks other writers wait on (the audit chain's, the rollup's
# rows): a writer that stops mid-transaction with its connection still open (a frozen process
# or Lambda environment) is ended by PostgreSQL after this long idle, its locks released.
# SET LOCAL: this transaction only (safe behind PgBouncer's transaction pooling).
HOLD_AT_MOST = "SET LOCAL idle_in_transaction_session_timeout = '30s'"

# Errors that mean "PostgreSQL cannot answer now" rather than "the query is wrong".
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.ConnectionRejectionError,
)


class Database:
    """A lazily opened asyncpg pool sized from DB_POOL_SIZE + DB_MAX_OVERFLOW.

    DB_STATEMENT_CACHE_SIZE sets asyncpg's prepared-statement cache per connection: 0 turns
    it off, which PgBouncer in transaction pooling mode needs (a prepared statement lives on
    one server connection, and the next transaction may run on another).
    """

    def __init__(self, settings: Settings, *, connect_timeout: float = 5.0) -> None:
        self._dsn = settings.database_url.get_secret_value()
        self._max_size = settings.db_pool_size + settings.db_max_overflow
        self._min_size = min(2, settings.db_pool_size)
        self._statement_cache_size = settings.db_statement_cache_size
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        """The pool, opened on first call; raises ServiceUnavailable if PostgreSQL is down."""
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=self._min_size,
                        max_size=self._max_size,
                        timeout=self._connect_timeout,
                        command_timeout=30,
                        max_inactive_connection_lifetime=60,
                        statement_cache_size=self._statement_cache_size,
                    )
                except UNAVAILABLE as exc:
                    raise ServiceUnavailable("database unavailable") from exc
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; connection-level failures become ServiceUnavailable."""
        pool = await self.pool()
        try:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise ServiceUnavailable("database unavailable") from exc

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of a query (ServiceUnavailable when PostgreSQL is down)."""
        async with self.connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """First row of a query or None."""
        async with self.connection() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(query, *args)
            return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        """First column of the first row."""
        async with self.connection() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; returns asyncpg's status string."""
        async with self.connection() as conn:
            status: str = await conn.execute(query, *args)
            return status

    def stats(self) -> dict[str, int]:
        """Pool figures for health and metrics: size, idle, in use, max."""
        if self._pool is None:
            return {"size": 0, "idle": 0, "in_use": 0, "max": self._max_size}
        size = self._pool.get_size()
        idle = self._pool.get_idle_size()
        return {"size": size, "idle": idle, "in_use": size - idle, "max": self._max_size}

    async def close(self) -> None:
        """Close the pool (tests, shutdown)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (TimeoutError, *UNAVAILABLE):
                pool.terminate()
