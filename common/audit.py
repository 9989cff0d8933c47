"""The audit trail: append-only rows in PostgreSQL, hash-chained so tampering shows.

Each row's hash is sha256(previous hash || canonical(row)); writers serialise on an advisory
lock, so the chain is one line even with many instances writing. `verify` walks the chain
and names the first row whose content, link or position does not hold. Events of request
paths (every invoke decision, every token issued, refreshed, revoked or refused) travel
through a Redis stream and are appended in batches by the ledger drainer, so the lock is
taken once per batch and no request waits on it; admin changes (the CLI) are appended
directly.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from common import keyspace
from common.db import HOLD_AT_MOST, Database
from common.redis import RedisStore

GENESIS = bytes(32)
CHUNK = 32
COPY_COLUMNS = [
    "id",
    "occurred_at",
    "event",
    "outcome",
    "project_id",
    "actor",
    "request_id",
    "reason",
    "details",
    "prev_hash",
    "hash",
]
LOCK_KEY = 0x6272616478_02
STREAM = keyspace.AUDIT_STREAM


@dataclass(frozen=True)
class AuditEvent:
    """One thing that happened: what, outcome, for whom, why. Never holds secrets."""

    event: str
    outcome: str
    project_id: str | None = None
    actor: str | None = None
    request_id: str | None = None
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_stream(self) -> dict[str, bytes]:
        """Flat fields for XADD."""
        return {"e": orjson.dumps(self._as_list())}

    @classmethod
    def from_stream(cls, fields: Mapping[bytes, bytes]) -> AuditEvent:
        """Inverse of to_stream."""
        event, outcome, project, actor, request_id, reason, details, micros = orjson.loads(
            fields[b"e"]
        )
        return cls(
            event,
            outcome,
            project,
            actor,
            request_id,
            reason,
            details,
            _from_micros(micros),
        )

    def _as_list(self) -> list[Any]:
        return [
            self.event,
            self.outcome,
            self.project_id,
            self.actor,
            self.request_id,
            self.reason,
            dict(self.details),
            _micros(self.occurred_at),
        ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _text(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value is not None else None


def canonical(row_id: int, occurred_us: int, values: Iterable[Any]) -> bytes:
    """The bytes a row's hash covers: id, time in microseconds and every field, as JSON."""
    return orjson.dumps([row_id, occurred_us, *values])


def chain_hash(prev: bytes, row_id: int, occurred_us: int, values: Iterable[Any]) -> bytes:
    """sha256(prev || canonical(row))."""
    return hashlib.sha256(prev + canonical(row_id, occurred_us, values)).digest()


async def append(conn: asyncpg.Connection, events: list[AuditEvent]) -> int:
    """Append events to the chain inside the caller's transaction; returns how many."""
    if not events:
        return 0
    # The chain's lock serialises every writer: a writer that stops mid-transaction (a frozen
    # process or Lambda environment, its connection still open) must not hold it for good.
    await conn.execute(f"{HOLD_AT_MOST}; SELECT pg_advisory_xact_lock({int(LOCK_KEY)})")
    last = await conn.fetchrow("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
    prev = bytes(last["hash"]) if last else GENESIS
    next_id = (last["id"] + 1) if last else 1
    rows = []
    for index, event in enumerate(events):
        if index and index % CHUNK == 0:
            await asyncio.sleep(0)  # long batches: let the loop serve requests meanwhile
        details = orjson.dumps(dict(event.details), option=orjson.OPT_SORT_KEYS).decode()
        occurred_us = _micros(event.occurred_at)
        # PostgreSQL text cannot hold NUL; client-supplied strings may contain it.
        values = [
            _text(event.event),
            _text(event.outcome),
            _text(event.project_id),
            _text(event.actor),
            _text(event.request_id),
            _text(event.reason),
            _text(details),
        ]
        digest = chain_hash(prev, next_id, occurred_us, values)
        moment = _from_micros(occurred_us)
        rows.append((next_id, moment, *values, prev, digest))
        prev = digest
        next_id += 1
    for start in range(0, len(rows), CHUNK * 4):
        await conn.copy_records_to_table(
            "audit_log", records=rows[start : start + CHUNK * 4], columns=COPY_COLUMNS
        )
    return len(rows)


@dataclass(frozen=True)
class Verdict:
    """The result of walking the chain."""

    ok: bool
    checked: int
    head_id: int | None
    head_hash: str | None
    broken_id: int | None = None
    reason: str | None = None


async def verify(db: Database, batch: int = 5000) -> Verdict:
    """Recompute the chain; the first row whose hash, link or id sequence breaks is named."""
    prev, expected_id, checked = GENESIS, 1, 0
    async with db.connection() as conn, conn.transaction(isolation="repeatable_read"):
        after = 0
        while True:
            rows = await conn.fetch(
                "SELECT id, occurred_at, event, outcome, project_id, actor, request_id, reason, "
                "details, prev_hash, hash FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
                after,
                batch,
            )
            if not rows:
                break
            for row in rows:
                row_id = row["id"]
                if row_id != expected_id:
                    return Verdict(
                        False,
                        checked,
                        None,
                        None,
                        row_id,
                        f"rows {expected_id}..{row_id - 1} are missing (deleted)",
                    )
                if bytes(row["prev_hash"]) != prev:
                    return Verdict(
                        False, checked, None, None, row_id, "link to the previous row is broken"
                    )
                values = [
                    row["event"],
                    row["outcome"],
                    row["project_id"],
                    row["actor"],
                    row["request_id"],
                    row["reason"],
                    row["details"],
                ]
                digest = chain_hash(prev, row_id, _micros(row["occurred_at"]), values)
                if digest != bytes(row["hash"]):
                    return Verdict(
                        False, checked, None, None, row_id, "row content does not match its hash"
                    )
                prev, expected_id, checked, after = digest, row_id + 1, checked + 1, row_id
    head_id = expected_id - 1 if checked else None
    return Verdict(True, checked, head_id, prev.hex() if checked else None)


class AuditTrail:
    """Direct appends for low-volume events, queued ones for the hot path (no-op when
    AUDIT_LOGGING_ENABLED is false)."""

    def __init__(self, db: Database, enabled: bool) -> None:
        self._db = db
        self.enabled = enabled

    async def queue(self, redis: RedisStore, event: AuditEvent) -> None:
        """Append an event to the audit stream; the drainer writes it into the chain."""
        if not self.enabled:
            return
        flat: list[Any] = []
        for name, value in event.to_stream().items():
            flat.extend((name, value))
        await redis.call("XADD", STREAM, "*", *flat)

    async def record(self, *events: AuditEvent) -> None:
        """Append the events now, in one transaction."""
        if not self.enabled or not events:
            return
        async with self._db.connection() as conn, conn.transaction():
            await append(conn, list(events))
