"""Per-project usage reports computed from the PostgreSQL ledger (GET /metrics).

Figures come from the hourly rollup (usage_hourly, kept by the ledger's triggers in the
writing transaction), with raw ledger rows only for the partial hours at a window's ends.

`UsageReport` is the documented shape of the answer (OpenAPI); the spec's fields come first.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.db import Database
from common.errors import BadRequest
from common.projects import Project
from common.quota import month_end


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TokenTotals(_Strict):
    """Tokens metered in the window."""

    prompt: int
    completion: int


class ReportWindow(_Strict):
    """The window reported on: [from, to)."""

    from_: datetime = Field(alias="from")
    to: datetime


class BudgetBlock(_Strict):
    """The current budget month: amounts in USD as exact decimal strings."""

    month: str = Field(description="YYYYMM (UTC)")
    monthly_usd: str
    used_usd: str
    reserved_usd: str = Field(description="held by calls in flight")
    remaining_usd: str


class UsageReport(_Strict):
    """GET /metrics: the spec's figures for the caller's project, plus tokens, window, budget."""

    total_requests: int
    successful_requests: int
    failed_requests: int
    average_latency_ms: int
    total_cost_usd: float
    total_cost_usd_exact: str = Field(description="total_cost_usd as an exact decimal string")
    models_usage: dict[str, int]
    tokens: TokenTotals
    cached_requests: int
    project_id: str
    window: ReportWindow
    budget: BudgetBlock
    pending_records: int = Field(
        description="usage records of the whole broker settled but not yet in the ledger "
        "(the figures above do not include them yet)"
    )


def parse_moment(value: str, name: str) -> datetime:
    """An ISO date or datetime (naive = UTC) as a UTC instant; BadRequest naming the parameter."""
    # An unencoded "+01:00" offset arrives as " 01:00" (a query string's '+' is a space).
    head, tail = value[:-6], value[-6:]
    if ":" in head and tail[0] == " " and tail[3] == ":":
        value = f"{head}+{tail[1:]}"
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(0), UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadRequest(f"{name}: not an ISO date or datetime", param=name) from None


def window(params: dict[str, str], now: datetime) -> tuple[datetime, datetime]:
    """[from, to) from query parameters, defaulting to the current month."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = month_end(now)
    if "from" in params:
        start = parse_moment(params["from"], "from")
    if "to" in params:
        end = parse_moment(params["to"], "to")
    if end <= start:
        raise BadRequest("'to' must be after 'from'", param="to")
    return start, end


# What one stretch of the window adds up to, per model: the rollup's columns.
_SUMS = (
    "requests",
    "successful",
    "cached",
    "timed",
    "latency_ms_sum",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
)
_FROM_HOURS = """
    SELECT model, sum(requests) AS requests, sum(successful) AS successful,
           sum(cached) AS cached, sum(timed) AS timed, sum(latency_ms_sum) AS latency_ms_sum,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(cost_usd) AS cost_usd
    FROM usage_hourly
    WHERE project_id = $1 AND hour >= $2 AND hour < $3
    GROUP BY model
"""
_FROM_ROWS = """
    SELECT model, count(*) AS requests,
           count(*) FILTER (WHERE status IN ('success', 'usage_unverified')) AS successful,
           count(*) FILTER (WHERE cached) AS cached,
           count(*) FILTER (WHERE NOT cached) AS timed,
           coalesce(sum(latency_ms) FILTER (WHERE NOT cached), 0) AS latency_ms_sum,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(cost_usd) AS cost_usd
    FROM usage_ledger
    WHERE project_id = $1 AND created_at >= $2 AND created_at < $3
    GROUP BY model
"""


def whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The whole UTC hours inside [start, end), as [first, last), or None if there is none."""
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(hours=1)
    last = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return (first, last) if first < last else None


async def project_usage(
    db: Database, project_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """The spec's metrics for one project over [start, end), exact.

    Whole hours come from the hourly rollup; the partial hours at either end (a window
    that does not start or end on the hour) from the ledger's rows, on its time index.
    """
    hours = whole_hours(start, end)
    if hours is None:
        parts = [await db.fetch(_FROM_ROWS, project_id, start, end)]
    else:
        parts = [await db.fetch(_FROM_HOURS, project_id, *hours)]
        if start < hours[0]:
            parts.append(await db.fetch(_FROM_ROWS, project_id, start, hours[0]))
        if hours[1] < end:
            parts.append(await db.fetch(_FROM_ROWS, project_id, hours[1], end))
    per_model: dict[str, dict[str, Decimal]] = {}
    for rows in parts:
        for row in rows:
            sums = per_model.setdefault(row["model"], dict.fromkeys(_SUMS, Decimal(0)))
            for name in _SUMS:
                sums[name] += Decimal(row[name] or 0)
    total = {name: sum((m[name] for m in per_model.values()), Decimal(0)) for name in _SUMS}
    requests = int(total["requests"])
    cost = total["cost_usd"]
    timed = int(total["timed"])
    latency = float(total["latency_ms_sum"] / timed) if timed else 0.0
    return {
        "total_requests": requests,
        "successful_requests": int(total["successful"]),
        "failed_requests": requests - int(total["successful"]),
        "average_latency_ms": round(latency),
        "total_cost_usd": float(cost),
        "total_cost_usd_exact": usd(cost),
        # A rollup row emptied by a correction (its rows moved or deleted) reports nothing.
        "models_usage": {
            model: int(sums["requests"])
            for model, sums in sorted(per_model.items())
            if sums["requests"] > 0
        },
        "tokens": {
            "prompt": int(total["prompt_tokens"]),
            "completion": int(total["completion_tokens"]),
        },
        "cached_requests": int(total["cached"]),
    }


async def project_report(
    db: Database,
    project: Project,
    start: datetime,
    end: datetime,
    month: str,
    live: tuple[Decimal, Decimal] | None,
    pending: int,
) -> dict[str, Any]:
    """The whole GET /metrics answer (UsageReport): usage over [start, end), the month's
    budget, and how many records (broker-wide) are still on their way to the ledger."""
    body = await project_usage(db, project.id, start, end)
    spent = await month_spend(db, project.id, month)
    budget = project.budget_monthly_usd
    used, reserved, remaining = budget_status(budget, spent, live)
    body["project_id"] = project.id
    body["window"] = {"from": start.isoformat(), "to": end.isoformat()}
    body["budget"] = {
        "month": month,
        "monthly_usd": usd(budget),
        "used_usd": usd(used),
        "reserved_usd": usd(reserved),
        "remaining_usd": usd(remaining),
    }
    body["pending_records"] = pending
    return body


def usd(amount: Decimal) -> str:
    """A USD amount as an exact plain string without trailing zeros ("0.0000031", "100")."""
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def budget_status(
    budget: Decimal, ledger_spent: Decimal, live: tuple[Decimal, Decimal] | None
) -> tuple[Decimal, Decimal, Decimal]:
    """(used, reserved, remaining) of a month's budget.

    `live` is Redis' (spent, reserved), which admission decides on; the ledger lags it by
    the calls not drained yet, and holds the figure alone if Redis lost it. The larger of
    the two spends counts, and the remainder is never negative.
    """
    spent, reserved = live if live is not None else (Decimal(0), Decimal(0))
    used = max(ledger_spent, spent)
    return used, reserved, max(Decimal(0), budget - used - reserved)


async def month_spend(db: Database, project_id: str, month: str) -> Decimal:
    """The ledger's spend of a project for a budget month (YYYYMM)."""
    return (await month_spend_of(db, month, [project_id])).get(project_id, Decimal(0))


async def month_spend_of(db: Database, month: str, project_ids: list[str]) -> dict[str, Decimal]:
    """Ledger spend of some projects for a budget month (absent: nothing spent), summed
    from the hourly rollup."""
    rows = await db.fetch(
        "SELECT project_id, coalesce(sum(cost_usd), 0) AS spent FROM usage_hourly "
        "WHERE budget_month = $1 AND project_id = ANY($2::text[]) GROUP BY project_id",
        month,
        project_ids,
    )
    return {r["project_id"]: Decimal(r["spent"]) for r in rows}


async def remaining_budgets(
    db: Database, projects: list[Project], live: dict[str, tuple[Decimal, Decimal]], month: str
) -> dict[str, tuple[Decimal, Decimal]]:
    """(monthly budget, remaining) per project for a budget month.

    Redis (`live`) holds the month of every project that spent in it; summing a month of
    ledger rows at each scrape would not scale, so the ledger answers only for the others.
    """
    missing = [p.id for p in projects if p.id not in live]
    spend = await month_spend_of(db, month, missing) if missing else {}
    return {
        p.id: (
            p.budget_monthly_usd,
            budget_status(p.budget_monthly_usd, spend.get(p.id, Decimal(0)), live.get(p.id))[2],
        )
        for p in projects
    }
