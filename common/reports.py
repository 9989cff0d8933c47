"""Per-project usage reports computed from the PostgreSQL ledger (GET /metrics)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from common.db import Database
from common.errors import BadRequest
from common.quota import month_end


def parse_moment(value: str, name: str) -> datetime:
    """An ISO date or datetime (naive = UTC); BadRequest naming the parameter."""
    # An unencoded "+01:00" offset arrives as " 01:00" (a query string's '+' is a space).
    if len(value) > 6 and value[-6] == " " and value[-3] == ":":
        value = value[:-6] + "+" + value[-5:]
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(0), UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: not an ISO date or datetime", param=name) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


async def project_usage(
    db: Database, project_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """The spec's metrics for one project over [start, end), exact from the ledger."""
    row = await db.fetchrow(
        """
        SELECT count(*) AS total,
               count(*) FILTER (WHERE status = 'success') AS ok,
               coalesce(avg(latency_ms) FILTER (WHERE NOT cached), 0) AS latency,
               coalesce(sum(cost_usd), 0) AS cost,
               coalesce(sum(prompt_tokens), 0) AS prompt,
               coalesce(sum(completion_tokens), 0) AS completion,
               count(*) FILTER (WHERE cached) AS cached
        FROM usage_ledger
        WHERE project_id = $1 AND created_at >= $2 AND created_at < $3
        """,
        project_id,
        start,
        end,
    )
    assert row is not None
    models = await db.fetch(
        "SELECT model, count(*) AS n FROM usage_ledger "
        "WHERE project_id = $1 AND created_at >= $2 AND created_at < $3 "
        "GROUP BY model ORDER BY model",
        project_id,
        start,
        end,
    )
    cost = Decimal(row["cost"])
    return {
        "total_requests": row["total"],
        "successful_requests": row["ok"],
        "failed_requests": row["total"] - row["ok"],
        "average_latency_ms": round(float(row["latency"])),
        "total_cost_usd": float(cost),
        "total_cost_usd_exact": usd(cost),
        "models_usage": {r["model"]: r["n"] for r in models},
        "tokens": {"prompt": int(row["prompt"]), "completion": int(row["completion"])},
        "cached_requests": row["cached"],
    }


def usd(amount: Decimal) -> str:
    """A USD amount as an exact plain string without trailing zeros ("0.0000031", "100")."""
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def budget_status(
    budget: Decimal, ledger_spent: Decimal, live: tuple[Decimal, Decimal] | None
) -> tuple[Decimal, Decimal, Decimal]:
    """(used, reserved, remaining) of a month's budget.

    `live` is Redis' (spent, reserved), which admission decides on; the ledger lags it by
    the calls not drained yet, and holds the figure alone if Redis lost it.
    """
    spent, reserved = live if live is not None else (Decimal(0), Decimal(0))
    used = max(ledger_spent, spent)
    return used, reserved, max(Decimal(0), budget - used - reserved)


async def month_spend(db: Database, project_id: str, month: str) -> Decimal:
    """The ledger's spend of a project for a budget month (YYYYMM)."""
    value = await db.fetchval(
        "SELECT coalesce(sum(cost_usd), 0) FROM usage_ledger "
        "WHERE project_id = $1 AND budget_month = $2",
        project_id,
        month,
    )
    return Decimal(value)


async def all_month_spend(db: Database, month: str) -> dict[str, Decimal]:
    """Ledger spend per project for a budget month."""
    rows = await db.fetch(
        "SELECT project_id, coalesce(sum(cost_usd), 0) AS spent FROM usage_ledger "
        "WHERE budget_month = $1 GROUP BY project_id",
        month,
    )
    return {r["project_id"]: Decimal(r["spent"]) for r in rows}
