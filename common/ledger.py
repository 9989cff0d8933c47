"""The usage ledger: exactly one PostgreSQL row per request id, written off the hot path.

The settle script appends each usage record to its project's stream (the outbox, in the
project's cluster slot) in the atomic step that moves the money. `Drainer` (in the llm_invoke
and metrics functions, or `bradax drain`) reads every project's stream (keyspace.PROJECTS)
and copies the entries into PostgreSQL in batches with INSERT ... ON CONFLICT DO NOTHING,
acknowledging them only after the commit: a PostgreSQL outage leaves the entries pending in
Redis until it returns, and a replay can never create a second row. Entries a dead consumer
left pending are claimed after IDLE_MS. The audit stream is drained the same way.

One bad record cannot stop the ledger: a batch PostgreSQL refuses is retried row by row,
and a row it still refuses (or one that cannot be read) goes to `ledger_dead_letters` with
the reason, in the same transaction as the rows that fit, before the batch is acknowledged.
Audit events are drained the same way (dead letters of the audit stream have stream ids
prefixed `audit:`). The loop also runs the reconciler (`Governor.reconcile`), which settles
at their bound the calls whose instance died before settling them.

If Redis itself fails between the upstream call and the settle, `PendingSettles` writes the
row straight to PostgreSQL and keeps retrying the settle until Redis answers.

Rows are written by `common.ledger_rows.write` (with the hourly rollup and the month's
partition); the loop also keeps the next month's partition ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from redis.exceptions import RedisError

from common import audit, keyspace
from common.audit import AuditEvent
from common.background import stop_task
from common.db import Database
from common.errors import ServiceUnavailable, StoreError
from common.ledger_rows import ensure_partitions, months_ahead
from common.ledger_rows import write as write
from common.logs import get_logger
from common.quota import InvalidRecord, UsageRecord
from common.redis import RedisStore
from common.telemetry import COUNTERS

GROUP = "drainer"
BATCH = 500
CHUNK = 32
# After a partial batch, wait this long: records reach PostgreSQL within ~PACE_S, in
# batches, instead of one transaction per call when traffic is light.
PACE_S = 0.2
IDLE_MS = 30_000
SHUTDOWN_S = 3.0  # how long a stopping drainer may finish its pass, then make a last one
RECONCILE_EVERY_S = 1.0
PREPARE_EVERY_S = 3600.0
# What PostgreSQL (or asyncpg, encoding an argument) says about a row it will not take:
# that row is dead-lettered. Anything else (a lost connection) leaves the batch pending.
ROW_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    InvalidRecord,
    ValueError,
    TypeError,
    OverflowError,
)
UNREADABLE: tuple[type[BaseException], ...] = (*ROW_ERRORS, KeyError)
DEAD_LETTER = (
    "INSERT INTO ledger_dead_letters (stream_id, request_id, record, reason) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (stream_id) DO NOTHING"
)


class Drainer:
    """Copies the ledger and audit streams into PostgreSQL; one loop per process."""

    def __init__(
        self,
        redis: RedisStore,
        db: Database,
        *,
        audit_enabled: bool,
        reconcile: Callable[[int], Awaitable[int]] | None = None,
        claim_idle_ms: int = IDLE_MS,
    ) -> None:
        self._redis = redis
        self._claim_idle_ms = claim_idle_ms
        self._db = db
        self._audit = audit_enabled
        self._reconcile = reconcile
        self._reconciled_at = 0.0
        self._prepared_at = -PREPARE_EVERY_S
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._task: asyncio.Task[None] | None = None
        self._groups: set[str] = set()
        self._stopping = False
        self._lock = asyncio.Lock()

    def ensure_started(self) -> None:
        """Start the background loop if it is not running."""
        if self._task is None or self._task.done():
            self._stopping = False
            # A fresh context: the loop must not carry the request id of whoever started it.
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), context=contextvars.Context()
            )

    async def _loop(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                await self._maybe_reconcile()
                await self._maybe_prepare_months()
                moved = await self.drain_once()
                delay = 0.5
                if moved < BATCH:
                    await asyncio.sleep(PACE_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                get_logger().warning(
                    "ledger drain failed; entries stay in Redis and will be retried",
                    error=type(exc).__name__,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _maybe_reconcile(self) -> None:
        if self._reconcile is None or time.monotonic() - self._reconciled_at < RECONCILE_EVERY_S:
            return
        self._reconciled_at = time.monotonic()
        try:
            await self._reconcile(int(time.time() * 1000))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the drain goes on; the intents wait for the next pass
            get_logger().warning("reconciler pass failed", error=type(exc).__name__)

    async def _maybe_prepare_months(self) -> None:
        """Hourly: the ledger partitions of this month and the next exist."""
        if time.monotonic() - self._prepared_at < PREPARE_EVERY_S:
            return
        try:
            async with self._db.connection() as conn, conn.transaction():
                await ensure_partitions(conn, months_ahead(datetime.now(UTC)))
            self._prepared_at = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the writer creates a missing one itself, before its rows
            get_logger().warning("ledger partitions not prepared", error=type(exc).__name__)

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self._redis.call("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
        except StoreError as exc:
            if not exc.reply.startswith("BUSYGROUP"):
                raise
        self._groups.add(stream)

    async def drain_once(self) -> int:
        """Move one batch of each stream (own pending first, then stale, then new)."""
        async with self._lock:  # one pass at a time: a second would re-read unacked entries
            return await self._drain_once()

    async def _drain_once(self) -> int:
        try:
            projects = sorted(await self._redis.call("SMEMBERS", keyspace.PROJECTS))
            streams = [keyspace.ledger_stream(p.decode()) for p in projects]
            lengths = await self._redis.each("XLEN", streams)  # idle projects cost one XLEN
            moved = 0
            for stream, length in zip(streams, lengths, strict=True):
                moved += await self._drain_ledger(stream) if int(length) else 0
            await self._ensure_group(audit.STREAM)
            moved += await self._drain_audit()
        except StoreError as exc:
            if exc.reply.startswith("NOGROUP"):
                self._groups.clear()  # Redis lost its data: recreate on the next pass
            raise
        return moved

    async def _read(self, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        # Entries this consumer read but did not acknowledge (a failed commit) come first.
        entries = await self._xread(stream, "0")
        if entries:
            return entries
        claimed = await self._redis.call(
            "XAUTOCLAIM", stream, GROUP, self._consumer, self._claim_idle_ms, "0-0", "COUNT", BATCH
        )
        if claimed and claimed[1]:
            return [(eid, _fields(raw)) for eid, raw in claimed[1] if raw is not None]
        return await self._xread(stream, ">")

    async def _xread(self, stream: str, start: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await self._redis.call(
            "XREADGROUP", "GROUP", GROUP, self._consumer, "COUNT", BATCH, "STREAMS", stream, start
        )
        if not reply:
            return []
        _, entries = reply[0]
        return [(eid, _fields(raw)) for eid, raw in entries if raw is not None]

    async def _drain_ledger(self, stream: str) -> int:
        await self._ensure_group(stream)
        entries = await self._read(stream)
        if not entries:
            return 0
        label = stream.encode() + b"/"  # dead letters name it: ids repeat across the streams
        records: list[tuple[bytes, UsageRecord]] = []
        unreadable: list[tuple[bytes, bytes, str]] = []
        for eid, fields in entries:
            raw = fields.get(b"r", b"")
            try:
                records.append((label + eid, UsageRecord.from_json(raw)))
            except UNREADABLE as exc:
                unreadable.append((label + eid, raw, f"unreadable record: {_reason(exc)}"))
        try:
            async with self._db.connection() as conn, conn.transaction():
                await write(conn, [r for _, r in records], with_audit=self._audit)
                await self._dead_letter(conn, unreadable)
        except ROW_ERRORS:
            await self._row_by_row(records, unreadable)
        await self._ack(stream, [eid for eid, _ in entries])
        return len(entries)

    async def _row_by_row(
        self, records: list[tuple[bytes, UsageRecord]], dead: list[tuple[bytes, bytes, str]]
    ) -> None:
        """A refused batch: each row alone; the ones PostgreSQL still refuses, dead-lettered."""
        dead = list(dead)
        async with self._db.connection() as conn:
            for eid, record in records:
                try:
                    async with conn.transaction():
                        await write(conn, [record], with_audit=self._audit)
                except ROW_ERRORS as exc:
                    dead.append((eid, record.to_json(), _reason(exc)))
            async with conn.transaction():
                await self._dead_letter(conn, dead)

    async def _dead_letter(
        self, conn: asyncpg.Connection, dead: list[tuple[bytes, bytes, str]]
    ) -> None:
        if not dead:
            return
        await conn.executemany(
            DEAD_LETTER,
            [
                (
                    eid.decode(),
                    _request_id(raw),
                    raw.decode(errors="replace").replace("\x00", ""),
                    reason,
                )
                for eid, raw, reason in dead
            ],
        )
        get_logger().error(
            "ledger records refused by PostgreSQL were dead-lettered",
            count=len(dead),
            reason=dead[0][2],
        )
        with contextlib.suppress(ServiceUnavailable, RedisError):
            await self._redis.call("HINCRBY", COUNTERS, "ledger_dead_letters_total", len(dead))

    async def _drain_audit(self) -> int:
        entries = await self._read(audit.STREAM)
        if not entries:
            return 0
        events: list[tuple[bytes, AuditEvent]] = []
        dead: list[tuple[bytes, bytes, str]] = []
        for eid, fields in entries:
            try:
                events.append((eid, AuditEvent.from_stream(fields)))
            except UNREADABLE as exc:
                raw = fields.get(b"e", b"")
                dead.append((b"audit:" + eid, raw, f"unreadable: {_reason(exc)}"))
        if self._audit:
            try:
                async with self._db.connection() as conn, conn.transaction():
                    await audit.append(conn, [event for _, event in events])
                    await self._dead_letter(conn, dead)
            except ROW_ERRORS:
                # One event at a time; the ones still refused are kept aside with the reason.
                async with self._db.connection() as conn:
                    for eid, event in events:
                        try:
                            async with conn.transaction():
                                await audit.append(conn, [event])
                        except ROW_ERRORS as exc:
                            dead.append((b"audit:" + eid, event.to_stream()["e"], _reason(exc)))
                    async with conn.transaction():
                        await self._dead_letter(conn, dead)
        await self._ack(audit.STREAM, [eid for eid, _ in entries])
        return len(entries)

    async def _ack(self, stream: str, ids: list[bytes]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(stream, GROUP, *ids)
        pipe.xdel(stream, *ids)
        await self._redis.guard(pipe.execute())

    async def aclose(self) -> None:
        """Stop the loop: the pass in progress finishes (its entries are acknowledged, not
        left pending on this consumer for IDLE_MS), then one last pass copies what was
        settled just before; whatever is left stays in Redis for the next drainer."""
        self._stopping = True
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_S), self._lock:
                pass  # the pass in progress has ended
        await stop_task(self._task)
        self._task = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SHUTDOWN_S):
                await self.drain_once()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\x00", "")[:500]


def _request_id(raw: bytes) -> str | None:
    """The request id of a raw record, if it can be read."""
    try:
        values = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(values, list) or not values:
        return None
    # A usage record starts with its request id; an audit event has it fifth.
    found = values[4] if len(values) == 8 and isinstance(values[6], dict) else values[0]
    return found.replace("\x00", "")[:200] if isinstance(found, str) else None


def _fields(raw: Any) -> dict[bytes, bytes]:
    if isinstance(raw, dict):
        return raw
    it = iter(raw)
    return dict(zip(it, it, strict=True))


class PendingSettles:
    """Calls whose settle failed because Redis was unreachable: kept and retried."""

    def __init__(self, db: Database, *, audit_enabled: bool) -> None:
        self._db = db
        self._audit = audit_enabled
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def count(self) -> int:
        """How many settles are waiting for Redis."""
        return len(self._tasks)

    def add(self, settle: Callable[[], Any], record: UsageRecord | None) -> None:
        """Write the record to PostgreSQL now and retry `settle` until Redis answers."""
        task = asyncio.get_running_loop().create_task(self._retry(settle, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, settle: Callable[[], Any], record: UsageRecord | None) -> None:
        log = get_logger()
        written = record is None
        delay = 0.2
        while True:
            if not written:
                try:
                    async with self._db.connection() as conn, conn.transaction():
                        assert record is not None
                        await write(conn, [record], with_audit=self._audit)
                    written = True
                except (ServiceUnavailable, asyncpg.PostgresError, OSError):
                    pass
            try:
                await settle()
                return
            except (ServiceUnavailable, StoreError, RedisError, OSError):
                log.warning("settle deferred: redis unreachable", retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def aclose(self) -> None:
        """Wait briefly for deferred settles, then give up on them (they were logged)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)
            for task in self._tasks:
                task.cancel()
