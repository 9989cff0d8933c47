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
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from redis.crc import key_slot

from common import keyspace
from common.db import Database
from common.errors import (
    BudgetExceeded,
    RateLimited,
    ServiceUnavailable,
    StoreError,
    Unauthorized,
)
from common.limits import Admission, DenyKey, Limit, budget_month, deny_keys, month_end
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

MONTH_TTL = 62 * 86_400
MAX_CLEANUP = 100
# Intents of admitted calls, per project (keyspace.intents): request id -> [project, month,
# bound_nano, record] (hash), and request id -> when it is due, in ms (zset). PROJECTS names
# the projects holding intents or ledger records.
PROJECTS = keyspace.PROJECTS
RECONCILE_BATCH = 100


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

    async def admit(
        self,
        *,
        now_ms: int,
        deny: Sequence[DenyKey] = (),
        limits: Sequence[Limit] = (),
        budget: BudgetClaim | None = None,
        peek: bool = False,
    ) -> Admission:
        """Grant the call or raise Unauthorized / RateLimited / BudgetExceeded / 503.

        On a cluster, limits whose keys are outside the project's slot (per client IP) are
        counted first, each in its own slot, and given back if the call is refused after."""
        side = self._side_limits(deny, limits, budget, now_ms // 1000)
        if not side:
            return await self._admit(now_ms, deny, limits, budget, peek)
        counted: list[Limit] = []
        try:
            tightest = Admission()
            for lim in side:
                tightest = await self._admit(now_ms, (), [lim], None, peek)
                counted.append(lim)
            main = await self._admit(
                now_ms, deny, [x for x in limits if x not in side], budget, peek
            )
        except BaseException:
            if counted and not peek:
                with contextlib.suppress(ServiceUnavailable, StoreError):  # over-counts only
                    for lim in counted:
                        await self._redis.run("failures.lua", [lim.key(now_ms // 1000)], ["refund"])
            raise
        if main.remaining is None or (tightest.remaining or 0) < main.remaining:
            return tightest
        return main

    def _side_limits(
        self,
        deny: Sequence[DenyKey],
        limits: Sequence[Limit],
        budget: BudgetClaim | None,
        now_s: int,
    ) -> list[Limit]:
        anchor = deny[0].key if deny else budget.keys[0] if budget else None
        if not self._redis.cluster or anchor is None:
            return []
        slot = key_slot(anchor.encode())
        return [lim for lim in limits if key_slot(lim.key(now_s).encode()) != slot]

    async def _admit(
        self,
        now_ms: int,
        deny: Sequence[DenyKey],
        limits: Sequence[Limit],
        budget: BudgetClaim | None,
        peek: bool,
    ) -> Admission:
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
        project = budget.project_id if budget is not None and intent else None
        for _attempt in range(2):
            result = await self._run_registered(project, "admit.lua", keys, args)
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

    async def _run_registered(
        self, project_id: str | None, name: str, keys: list[str], args: list[Any]
    ) -> Any:
        """Run a script that writes an intent or a ledger record of the project, naming the
        project where the reconciler and drainers look in the same breath (SADD, pipelined
        ahead of the script: on one node it is applied first; should Redis lose the set, the
        next call names the project again)."""
        if project_id is None:
            return await self._redis.run(name, keys, args)
        register = self._redis.fast_call(PROJECTS, "SADD", PROJECTS, project_id)
        _, result = await asyncio.gather(register, self._redis.run(name, keys, args))
        return result

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
        # The month from the hourly rollup, less the orphans already in the ledger (they are
        # added back from the orphans hash): a few rows by primary key, not the month's rows.
        base = await self._db.fetchval(
            "SELECT (SELECT coalesce(sum(cost_usd), 0) FROM usage_hourly "
            "        WHERE project_id = $1 AND budget_month = $2) "
            "     - (SELECT coalesce(sum(cost_usd), 0) FROM usage_ledger "
            "        WHERE request_id = ANY($3::text[]) AND project_id = $1 "
            "        AND budget_month = $2)",
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
            keyspace.ledger_stream(project_id),
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
        project = project_id if record is not None else None
        result = await self._run_registered(project, "settle.lua", keys, args)
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
        projects = sorted(p.decode() for p in await self._redis.call("SMEMBERS", PROJECTS))
        dues = [keyspace.intents(p)[1] for p in projects]
        counts = await self._redis.each("ZCOUNT", dues, "-inf", now_ms)  # one pipeline
        settled = 0
        for owner, count in zip(projects, counts, strict=True):
            if int(count):
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
