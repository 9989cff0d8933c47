"""Rate limits and hard budgets, decided atomically in Redis (scripts in common/lua/).

`Governor.admit` makes one round trip: deny-list (revoked tokens, keys, families, suspended
projects), fixed-window limits (hourly, per second, per IP, per endpoint) and, for calls that
spend money, a reservation of the worst-case cost against the month's budget. `settle` makes
the second: it releases the reservation, adds the actual cost and appends the usage record to
the ledger stream, exactly once per request id; the call's broker-wide metrics are then
counted in-process (`count`, the telemetry's) and flushed with the others.

The admission also writes the call's intent: the ledger record of the call charged at its
bound, due when its reservation times out. Settling deletes it in the same step. If the
instance serving the call dies, `reconcile` (run by every drainer loop) settles the intent
at its bound through the same settle script, so whichever comes first wins and the other
is a duplicate: a call that reached the upstream is in the ledger exactly once.

Money in Redis is integer nano-dollars, rounded up, so the budget can never be under-counted.
If Redis lost a month's spend, `admit` rebuilds it from the PostgreSQL ledger before
admitting anything. Every Redis failure is ServiceUnavailable: nothing is granted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import orjson

from common import keyspace
from common.db import Database
from common.errors import BudgetExceeded, RateLimited, ServiceUnavailable, Unauthorized
from common.logs import get_logger
from common.redis import RedisStore
from common.telemetry import field
from common.usage import (
    RECONCILED,
    InvalidRecord,
    UsageRecord,
    from_nano,
    intent_record,
    to_nano,
)

__all__ = [
    "RECONCILED",
    "Admission",
    "BudgetClaim",
    "DenyKey",
    "Governor",
    "InvalidRecord",
    "Limit",
    "Settlement",
    "UsageRecord",
    "budget_keys",
    "budget_month",
    "deny_keys",
    "from_nano",
    "intent_record",
    "month_end",
    "to_nano",
]

LEDGER_STREAM = keyspace.LEDGER_STREAM
MONTH_TTL = 62 * 86_400
MAX_CLEANUP = 100
# Intents of admitted calls, per project (keyspace.intents): request id -> [project, month,
# bound_nano, record] (hash), and request id -> when it is due, in ms (zset).
INTENT_PROJECTS = keyspace.INTENT_PROJECTS
RECONCILE_BATCH = 100
REGISTER_EVERY = 5.0


def budget_month(now: datetime) -> str:
    """The budget period a moment belongs to: YYYYMM in UTC."""
    now = now.astimezone(UTC)
    return f"{now.year:04d}{now.month:02d}"


def month_end(now: datetime) -> datetime:
    """The first instant of the next month (UTC)."""
    now = now.astimezone(UTC)
    if now.month == 12:
        return datetime(now.year + 1, 1, 1, tzinfo=UTC)
    return datetime(now.year, now.month + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Limit:
    """A fixed-window counter: at most `limit` hits per `window` seconds."""

    name: str
    scope: str
    limit: int
    window: int

    def key(self, now_s: int) -> str:
        """The counter's Redis key for the window holding now_s."""
        return keyspace.rate_limit(self.scope, self.window, now_s // self.window)


@dataclass(frozen=True)
class DenyKey:
    """A deny-list entry to check; `reason` is what the client is told if it exists."""

    key: str
    reason: str


def deny_keys(project_id: str, key_id: str, jti: str | None, family: str | None) -> list[DenyKey]:
    """The deny-list entries that revoke a credential: project, key, token family, token."""
    keys = [
        DenyKey(keyspace.deny_project(project_id), "project is suspended"),
        DenyKey(keyspace.deny_key(project_id, key_id), "credential has been revoked"),
    ]
    if family:
        keys.append(DenyKey(keyspace.deny_family(project_id, family), "token has been revoked"))
    if jti:
        keys.append(DenyKey(keyspace.deny_token(project_id, jti), "token has been revoked"))
    return keys


@dataclass(frozen=True)
class BudgetClaim:
    """What a call asks of its project's budget: its worst-case cost, until a deadline."""

    project_id: str
    month: str
    request_id: str
    worst_nano: int
    budget_nano: int
    expires_ms: int
    intent: UsageRecord | None = None

    @property
    def keys(self) -> tuple[str, str, str]:
        """Budget hash, reservation zset, reservation amounts."""
        return budget_keys(self.project_id, self.month)


def budget_keys(project_id: str, month: str) -> tuple[str, str, str]:
    """Redis keys of a project's month: budget hash, reservation zset, amounts hash."""
    return keyspace.budget(project_id, month)


@dataclass(frozen=True)
class Admission:
    """A granted call and the figures of its tightest limit (for X-RateLimit-* headers)."""

    limit: int | None = None
    remaining: int | None = None
    reset: int | None = None

    def headers(self) -> dict[str, str]:
        """X-RateLimit-* headers, when a limit applied."""
        if self.limit is None:
            return {}
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining or 0)),
            "X-RateLimit-Reset": str(self.reset),
        }


@dataclass(frozen=True)
class Settlement:
    """The outcome of settling a call."""

    duplicate: bool
    spent_nano: int | None = None
    soft_threshold_crossed: bool = False


class Governor:
    """Admission and settlement against Redis; budget rebuilds from the PostgreSQL ledger."""

    def __init__(
        self,
        redis: RedisStore,
        db: Database,
        *,
        soft_threshold: Decimal,
        count: Callable[[Mapping[str, int]], None] | None = None,
    ) -> None:
        self._redis = redis
        self._count = count
        self._db = db
        self._soft = soft_threshold
        self._rebuilds: dict[tuple[str, str], asyncio.Future[int]] = {}
        # When this process last registered a project in INTENT_PROJECTS (monotonic s).
        self._registered: dict[str, float] = {}

    async def admit(
        self,
        *,
        now_ms: int,
        deny: Sequence[DenyKey] = (),
        limits: Sequence[Limit] = (),
        budget: BudgetClaim | None = None,
        peek: bool = False,
    ) -> Admission:
        """Grant the call or raise Unauthorized / RateLimited / BudgetExceeded / 503."""
        now_s = now_ms // 1000
        keys = [d.key for d in deny] + [lim.key(now_s) for lim in limits]
        args: list[object] = [len(deny), len(limits), 1 if budget else 0, now_ms]
        args.append("peek" if peek else "hit")
        for lim in limits:
            args.extend((lim.limit, lim.window))
        if budget is not None:
            keys.extend(budget.keys)
            keys.extend(keyspace.intents(budget.project_id))
            intent = b""
            if budget.intent is not None and not peek:
                await self._register(budget.project_id)
                record = budget.intent.fitted()
                intent = orjson.dumps(
                    [budget.project_id, budget.month, budget.worst_nano, record.to_json().decode()]
                )
            args.extend(
                (
                    budget.request_id,
                    budget.worst_nano,
                    budget.budget_nano,
                    budget.expires_ms,
                    MAX_CLEANUP,
                    intent,
                )
            )
        for _attempt in range(2):
            result = await self._redis.run("admit.lua", keys, args)
            code = int(result[0])
            if code == 0:
                limit, remaining, reset = (int(x) for x in result[1:4])
                if limit < 0:
                    return Admission()
                return Admission(limit, remaining, reset)
            if code == 1:
                raise Unauthorized(deny[int(result[1]) - 1].reason, code="revoked")
            if code == 2:
                lim = limits[int(result[1]) - 1]
                reset = max(1, int(result[3]))
                raise RateLimited(
                    f"rate limit exceeded: {lim.name} allows {lim.limit} per "
                    f"{_window_name(lim.window)}",
                    retry_after=reset,
                    limit=lim.limit,
                    reset=reset,
                    details={"limit_name": lim.name},
                )
            if code == 3:
                assert budget is not None
                left = from_nano(max(0, int(result[1])))
                raise BudgetExceeded(
                    f"monthly budget exhausted: ${left:.6f} left, this call may cost up "
                    f"to ${from_nano(budget.worst_nano):.6f}",
                    remaining_usd=left.quantize(Decimal("0.000001")),
                    budget_usd=from_nano(budget.budget_nano),
                )
            assert budget is not None
            assert code == 4
            await self._rebuild_once(budget.project_id, budget.month)
        raise ServiceUnavailable("budget state could not be rebuilt; retry shortly")

    async def _register(self, project_id: str) -> None:
        """Name the project where the reconciler looks, before an intent is written: once per
        REGISTER_EVERY seconds (again, should Redis have lost the set meanwhile)."""
        now = time.monotonic()
        if now - self._registered.get(project_id, -REGISTER_EVERY) >= REGISTER_EVERY:
            await self._redis.call("SADD", INTENT_PROJECTS, project_id)
            self._registered[project_id] = now

    async def _rebuild_once(self, project_id: str, month: str) -> int:
        """rebuild(), shared by every concurrent caller of this process (one ledger query)."""
        key = (project_id, month)
        flight = self._rebuilds.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self.rebuild(project_id, month))
            self._rebuilds[key] = flight
            flight.add_done_callback(lambda _: self._rebuilds.pop(key, None))
        return await asyncio.shield(flight)

    async def rebuild(self, project_id: str, month: str) -> int:
        """Restore a month's spend from the ledger (plus calls settled meanwhile); nano-USD."""
        budget_key, _, _ = budget_keys(project_id, month)
        orphans_key = keyspace.budget_orphans(project_id, month)
        orphan_ids = [rid.decode() for rid in await self._redis.call("HKEYS", orphans_key)]
        base = await self._db.fetchval(
            "SELECT coalesce(sum(cost_usd), 0) FROM usage_ledger "
            "WHERE project_id = $1 AND budget_month = $2 AND NOT (request_id = ANY($3::text[]))",
            project_id,
            month,
            orphan_ids,
        )
        spent = await self._redis.run(
            "rebuild.lua", [budget_key, orphans_key], [to_nano(Decimal(base)), MONTH_TTL]
        )
        return int(spent)

    async def settle(
        self,
        claim: BudgetClaim | None,
        *,
        request_id: str,
        project_id: str,
        month: str,
        actual: Decimal,
        record: UsageRecord | None,
        metrics: Mapping[str, int] | None = None,
        reserved: bool | None = None,
    ) -> Settlement:
        """Release the reservation, add the actual cost, append the record: once per request.

        A call admitted with a reservation (`reserved`, by default whether a claim is given)
        settles only while its reservation or intent exists; nothing outlives the settle."""
        budget_key, resv_key, amounts_key = budget_keys(project_id, month)
        soft_nano = to_nano(from_nano(claim.budget_nano) * self._soft) if claim else 0
        keys = [
            budget_key,
            resv_key,
            amounts_key,
            LEDGER_STREAM,
            keyspace.budget_orphans(project_id, month),
            keyspace.budget_soft(project_id, month),
            *keyspace.intents(project_id),
        ]
        # Validated before the outbox: a row PostgreSQL would refuse never enters the stream.
        args: list[object] = [
            request_id,
            to_nano(actual),
            1 if (claim is not None if reserved is None else reserved) else 0,
            soft_nano,
            MONTH_TTL,
            record.fitted().to_json() if record is not None else b"",
        ]
        result = await self._redis.run("settle.lua", keys, args)
        if int(result[0]) == -1:
            return Settlement(duplicate=True)
        if metrics and self._count is not None:
            self._count(metrics)
        spent = int(result[1])
        return Settlement(False, spent if spent >= 0 else None, int(result[2]) == 1)

    async def extend(self, claim: BudgetClaim, expires_ms: int) -> None:
        """Push back a live call's reservation deadline and its intent's (long streams)."""
        _, resv_key, _ = claim.keys
        _, due_key = keyspace.intents(claim.project_id)
        await self._redis.call("ZADD", resv_key, "XX", expires_ms, claim.request_id)
        await self._redis.call("ZADD", due_key, "XX", expires_ms, claim.request_id)

    async def reconcile(self, now_ms: int) -> int:
        """Settle, at their bound, the intents of calls whose reservation timed out (their
        instance died); returns how many this pass settled. Safe from any instance, at
        once: the settle script lets only the first settle of a request id count."""
        projects = sorted(p.decode() for p in await self._redis.call("SMEMBERS", INTENT_PROJECTS))
        settled = 0
        for owner in projects:
            settled += await self._reconcile_project(owner, now_ms)
        return settled

    async def _reconcile_project(self, owner: str, now_ms: int) -> int:
        intents_key, due_key = keyspace.intents(owner)
        due = await self._redis.call(
            "ZRANGEBYSCORE", due_key, "-inf", now_ms, "LIMIT", 0, RECONCILE_BATCH
        )
        settled = 0
        for raw_id in due:
            request_id = raw_id.decode()
            raw = await self._redis.call("HGET", intents_key, request_id)
            if raw is None:
                await self._redis.call("ZREM", due_key, request_id)
                continue
            try:
                project_id, month, bound_nano, record_json = orjson.loads(raw)
                record = UsageRecord.from_json(record_json.encode())
            except (ValueError, TypeError) as exc:
                # Not written by this code: keep it aside rather than retry it forever.
                get_logger().error(
                    "unreadable intent skipped", request=request_id, error=type(exc).__name__
                )
                await self._redis.call("ZREM", due_key, request_id)
                continue
            if project_id != owner:  # not written by this code: keep it aside
                await self._redis.call("ZREM", due_key, request_id)
                continue
            outcome = await self.settle(
                None,
                request_id=request_id,
                project_id=project_id,
                month=month,
                actual=from_nano(int(bound_nano)),
                record=record,
                reserved=True,
                metrics={
                    field("ledger_reconciled_total", model=record.model): 1,
                    field("openai_requests_total", model=record.model, status=RECONCILED): 1,
                    field("openai_cost_nano_total", model=record.model): int(bound_nano),
                },
            )
            if not outcome.duplicate:
                settled += 1
                get_logger().warning(
                    "call settled at its bound: its instance stopped before settling it",
                    reconciled_request_id=request_id,
                )
            else:
                await self._redis.call("HDEL", intents_key, request_id)
                await self._redis.call("ZREM", due_key, request_id)
        return settled


def _window_name(window: int) -> str:
    return {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(window, f"{window}s")
