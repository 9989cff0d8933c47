"""health: GET /health, /health/detailed, /ready and /live.

Serve alone: functions-framework --asgi --source functions/health/main.py --target health
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from common import deps, migrate
from common.health import UNHEALTHY, UpstreamProbe, check_database, check_redis, overall
from common.http import JSONResponse, Route
from common.openapi import Operation
from common.runtime import function_app
from common.schemas import DetailedHealthResponse, HealthResponse, LiveResponse, ReadyResponse
from common.settings import VERSION

CHECK_TIMEOUT = 1.0
_probe = deps.Lazy(lambda: UpstreamProbe(deps.settings()))
_started = time.monotonic()


async def _checks() -> tuple[dict[str, object], str, dict[str, object]]:
    db, redis = deps.db.get(), deps.redis.get()
    database, cache, upstream = await asyncio.gather(
        check_database(db, CHECK_TIMEOUT),
        check_redis(redis, CHECK_TIMEOUT),
        _probe.get().check(CHECK_TIMEOUT),
    )
    status = overall(database, cache, upstream)
    services: dict[str, object] = {
        "database": database.status,
        "redis": cache.status,
        "openai": upstream.status,
    }
    detail: dict[str, object] = {
        "database": database.as_dict(),
        "redis": cache.as_dict(),
        "openai": upstream.as_dict(),
    }
    return services, status, detail


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def get_health(request: Request) -> Response:
    services, status, _ = await _checks()
    body = {"status": status, "timestamp": _now(), "services": services, "version": VERSION}
    return JSONResponse(body, status_code=503 if status == UNHEALTHY else 200)


async def get_health_detailed(request: Request) -> Response:
    services, status, detail = await _checks()
    db_check = detail["database"]
    current = db_check.get("schema_version") if isinstance(db_check, dict) else None
    body = {
        "status": status,
        "timestamp": _now(),
        "services": services,
        "version": VERSION,
        "checks": detail,
        "pools": {"database": deps.db.get().stats()},
        "schema": {"current": current, "expected": migrate.latest_version()},
        "uptime_seconds": round(time.monotonic() - _started, 1),
    }
    return JSONResponse(body, status_code=503 if status == UNHEALTHY else 200)


async def get_ready(request: Request) -> Response:
    database, cache = await asyncio.gather(
        check_database(deps.db.get(), CHECK_TIMEOUT), check_redis(deps.redis.get(), CHECK_TIMEOUT)
    )
    reasons = []
    if database.status != "healthy":
        reasons.append(f"database: {database.error}")
    elif database.info.get("schema_version") != migrate.latest_version():
        reasons.append(
            f"database: schema at version {database.info.get('schema_version')}, "
            f"expected {migrate.latest_version()} (run `bradax migrate`)"
        )
    if cache.status != "healthy":
        reasons.append(f"redis: {cache.error}")
    if reasons:
        return JSONResponse({"status": "not_ready", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ready"})


async def get_live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


_app = function_app(
    "health",
    [
        Route(
            "/health", get_health, doc=Operation("Health", response=HealthResponse, errors=(503,))
        ),
        Route(
            "/health/detailed",
            get_health_detailed,
            doc=Operation("Detailed health", response=DetailedHealthResponse, errors=(503,)),
        ),
        Route(
            "/ready", get_ready, doc=Operation("Readiness", response=ReadyResponse, errors=(503,))
        ),
        Route("/live", get_live, doc=Operation("Liveness", response=LiveResponse)),
    ],
    openapi_path="/health/openapi.json",
)


async def health(request: Request) -> Response:
    """The deployable entry point (functions-framework --target health)."""
    return await _app(request)
