"""metrics: GET /metrics (the caller's project, JSON) and GET /prometheus (the whole broker).

Serve alone: functions-framework --asgi --source functions/metrics/main.py --target metrics
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from common import deps, prometheus, reports, services
from common.errors import ProjectSuspended, Unauthorized
from common.http import JSONResponse, Route
from common.quota import budget_month, from_nano
from common.runtime import function_app


async def project_metrics(request: Request) -> Response:
    principal = await services.authenticator.get().authenticate(
        request.headers.get("authorization"), "read_metrics"
    )
    project = await services.policies.get().get(principal.project_id)
    if project is None:
        raise Unauthorized("project no longer exists", code="revoked")
    if not project.active:
        raise ProjectSuspended(f"project {project.id} is suspended")
    now = datetime.now(UTC)
    start, end = reports.window(dict(request.query_params), now)
    drainer = services.drainer.get()
    drainer.ensure_started()
    await drainer.drain_once()  # the ledger includes every call settled so far
    body = await reports.project_usage(deps.db.get(), principal.project_id, start, end)
    month = budget_month(now)
    spent = await reports.month_spend(deps.db.get(), principal.project_id, month)
    live = await services.governor.get().spent(principal.project_id, month)
    reserved = from_nano(live[1]) if live else Decimal(0)
    budget = project.budget_monthly_usd
    body["project_id"] = principal.project_id
    body["window"] = {"from": start.isoformat(), "to": end.isoformat()}
    body["budget"] = {
        "month": month,
        "monthly_usd": str(budget),
        "used_usd": str(spent),
        "reserved_usd": str(reserved),
        "remaining_usd": str(max(Decimal(0), budget - spent - reserved)),
    }
    return JSONResponse(body)


async def prometheus_text(request: Request) -> Response:
    services.drainer.get().ensure_started()
    await services.telemetry.get().flush()
    month = budget_month(datetime.now(UTC))
    projects = await services.policies.get().all()
    spend = await reports.all_month_spend(deps.db.get(), month)
    budgets = {
        p.id: (p.budget_monthly_usd, max(Decimal(0), p.budget_monthly_usd - spend.get(p.id, 0)))
        for p in projects
    }
    snap = await prometheus.snapshot(deps.redis.get(), budgets)
    return Response(prometheus.render(snap), media_type=prometheus.CONTENT_TYPE)


_app = function_app(
    "metrics",
    [Route("/metrics", project_metrics), Route("/prometheus", prometheus_text)],
)


async def metrics(request: Request) -> Response:
    """The deployable entry point (functions-framework --target metrics)."""
    return await _app(request)
