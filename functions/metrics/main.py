"""metrics: GET /metrics (the caller's project, JSON) and GET /prometheus (the whole broker).

Serve alone: functions-framework --asgi --source functions/metrics/main.py --target metrics
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from common import deps, ledger_workers, prometheus, reports, services
from common.auth import bearer
from common.errors import ProjectSuspended, Unauthorized
from common.http import JSONResponse, Route
from common.openapi import Operation
from common.quota import budget_month
from common.runtime import function_app


async def project_metrics(request: Request) -> Response:
    """The caller's project from the ledger; read-only: records still in Redis are reported
    as `pending_records`, not drained by the request (the drainers write them)."""
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
    month = budget_month(now)
    live = await prometheus.live_budgets(deps.redis.get(), [project.id], month)
    pending = await prometheus.pending_records(deps.redis.get())
    body = await reports.project_report(
        deps.db.get(), project, start, end, month, live.get(project.id), pending
    )
    return JSONResponse(body)


async def prometheus_text(request: Request) -> Response:
    _check_scrape_token(request.headers.get("authorization"))
    ledger_workers.drainer.get().ensure_started()
    await deps.telemetry.get().flush()
    month = budget_month(datetime.now(UTC))
    projects = await services.policies.get().all()
    live = await prometheus.live_budgets(deps.redis.get(), [p.id for p in projects], month)
    budgets = await reports.remaining_budgets(deps.db.get(), projects, live, month)
    snap = await prometheus.snapshot(deps.redis.get(), budgets)
    return Response(prometheus.render(snap), media_type=prometheus.CONTENT_TYPE)


MOMENT = {
    "anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]
}


def _check_scrape_token(header: str | None) -> None:
    """With METRICS_SCRAPE_TOKEN set, /prometheus needs `Authorization: Bearer <token>`."""
    expected = deps.settings().metrics_scrape_token
    if expected is None:
        return
    presented = bearer(header)
    if not hmac.compare_digest(presented.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("invalid scrape token")


_app = function_app(
    "metrics",
    [
        Route(
            "/metrics",
            project_metrics,
            doc=Operation(
                "Project metrics",
                response=reports.UsageReport,
                errors=(400, 401, 403, 503),
                auth=True,
                query=(
                    (
                        "from",
                        "start (ISO date or datetime, UTC if naive); default: month start",
                        MOMENT,
                    ),
                    ("to", "end, exclusive, after 'from'; default: next month's start", MOMENT),
                ),
            ),
        ),
        Route(
            "/prometheus",
            prometheus_text,
            doc=Operation(
                "Prometheus metrics of the whole broker",
                response={"type": "string"},
                errors=(401, 503),
                content_type=prometheus.CONTENT_TYPE,
            ),
        ),
    ],
    openapi_path="/metrics/openapi.json",
)


async def metrics(request: Request) -> Response:
    """The deployable entry point (functions-framework --target metrics)."""
    return await _app(request)
