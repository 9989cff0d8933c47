"""A flat keyspace: no call leaves Redis state behind once it is settled."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

from common import deps, services
from common.quota import BudgetClaim, budget_keys, intent_record, to_nano
from common.settings import Settings
from tests.conftest import create_tenant, ledger_rows, login
from tests.test_governance import _month, call, make_client, upstream  # noqa: F401

BOUND = Decimal("0.00002")


def _claim(project_id: str, request_id: str, now_ms: int) -> BudgetClaim:
    intent = intent_record(
        request_id=request_id,
        project_id=project_id,
        key_id=None,
        model="gpt-4.1-nano",
        prompt_tokens=100,
        completion_tokens=25,
        cost_usd=BOUND,
        streamed=False,
        budget_month=_month(),
        created_at_ms=now_ms,
    )
    return BudgetClaim(
        project_id,
        _month(),
        request_id,
        to_nano(BOUND),
        to_nano(Decimal(1)),
        now_ms + 60_000,
        intent,
    )


async def _settle(claim: BudgetClaim, actual: Decimal) -> bool:
    from tests.test_money_bounds import _record

    record = _record(claim.request_id, claim.project_id)
    outcome = await services.governor.get().settle(
        claim,
        request_id=claim.request_id,
        project_id=claim.project_id,
        month=claim.month,
        actual=actual,
        record=record,
    )
    return not outcome.duplicate


async def _keys_naming(request_id: str) -> list[bytes]:
    redis = deps.redis.get()
    found: list[bytes] = []
    for key in await redis.call("KEYS", "*"):
        kind = (await redis.call("TYPE", key)).decode()
        named = request_id.encode() in key
        if kind == "hash":
            named = named or bool(await redis.call("HEXISTS", key, request_id))
        elif kind == "zset":
            named = named or await redis.call("ZSCORE", key, request_id) is not None
        if named:
            found.append(key)
    return found


async def test_a_second_settle_is_a_duplicate_and_nothing_is_left(upstream: Settings) -> None:  # noqa: F811
    """A settled call is charged once, a second settle of it is a duplicate, and no key,
    hash field or zset member names the call afterwards."""
    await create_tenant(upstream, "proj_flat", budget_monthly_usd="1")
    now_ms = int(time.time() * 1000)
    claim = _claim("proj_flat", "req_flat_once", now_ms)
    await services.governor.get().admit(now_ms=now_ms, budget=claim)
    assert await _keys_naming("req_flat_once") != []
    actual = Decimal("0.0000056")
    assert await _settle(claim, actual)
    assert not await _settle(claim, actual)
    assert await services.governor.get().reconcile(now_ms + 120_000) == 0
    assert await _keys_naming("req_flat_once") == []
    spent = await deps.redis.get().call("HGET", budget_keys("proj_flat", _month())[0], "spent")
    assert int(spent) == to_nano(actual)
    rows = await ledger_rows(upstream, "proj_flat")
    assert [r["request_id"] for r in rows] == ["req_flat_once"]


async def test_settles_while_the_month_is_lost_count_once(upstream: Settings) -> None:  # noqa: F811
    """With the month's spend lost, the first settle is kept for the rebuild and a second
    settle of the same call is still a duplicate, even for a call that cost nothing."""
    await create_tenant(upstream, "proj_lost", budget_monthly_usd="1")
    redis = deps.redis.get()
    now_ms = int(time.time() * 1000)
    paid = _claim("proj_lost", "req_lost_paid", now_ms)
    free = _claim("proj_lost", "req_lost_free", now_ms)
    await services.governor.get().admit(now_ms=now_ms, budget=paid)
    await services.governor.get().admit(now_ms=now_ms, budget=free)
    budget_key, resv_key, amounts_key = budget_keys("proj_lost", _month())
    await redis.call("DEL", budget_key, resv_key, amounts_key)  # as after a Redis loss
    assert await _settle(paid, Decimal("0.000003"))
    assert not await _settle(paid, Decimal("0.000003"))
    assert await _settle(free, Decimal(0))
    assert not await _settle(free, Decimal(0))
    assert await services.governor.get().rebuild("proj_lost", _month()) == to_nano(
        Decimal("0.000003")
    )


async def test_six_hundred_calls_leave_the_keyspace_flat(upstream: Settings, router: Any) -> None:  # noqa: F811
    """600 governed calls, each with its own request, leave the number of Redis keys where
    a first handful of calls left it (within 100)."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, budget_monthly_usd="100"))
    redis = deps.redis.get()
    for _ in range(20):
        assert (await call(http, tenant)).status_code == 200
    before = int(await redis.call("DBSIZE"))

    async def worker() -> None:
        for _ in range(60):
            reply = await call(http, tenant)
            assert reply.status_code == 200, reply.text

    await asyncio.gather(*(worker() for _ in range(10)))
    after = int(await redis.call("DBSIZE"))
    assert abs(after - before) <= 100, (before, after)
    assert after < 100  # and small in absolute terms: no key per call at all
    assert len(await ledger_rows(upstream, tenant.project_id)) == 620
