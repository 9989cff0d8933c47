"""auth_token: project API keys in, JWT access and refresh tokens out.

POST /api/v1/auth/token, /api/v1/auth/refresh, /api/v1/auth/revoke; GET /.well-known/jwks.json.
Serve alone: functions-framework --asgi --source functions/auth_token/main.py --target auth_token
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from common import deps, services
from common.audit import AuditEvent
from common.errors import BrokerError, Unauthorized
from common.http import JSONResponse, Route, client_ip, parse_body
from common.quota import Limit
from common.runtime import function_app
from common.schemas import RefreshRequest, RevokeRequest, TokenRequest


async def _gate(request: Request, project_id: str | None) -> tuple[str, int]:
    """Per-IP endpoint rate limit and failed-attempt limits; returns (ip, now_ms)."""
    settings = deps.settings()
    ip = client_ip(request, settings.trusted_proxies)
    now_ms = int(time.time() * 1000)
    await services.failures.get().check(ip, project_id, now_ms)
    if settings.rate_limiting_enabled and settings.rate_limit_auth_per_minute:
        limit = Limit("auth_per_ip", f"auth:ip:{ip}", settings.rate_limit_auth_per_minute, 60)
        await services.governor.get().admit(now_ms=now_ms, limits=[limit])
    return ip, now_ms


async def _audit(event: str, outcome: str, project: str | None, reason: str | None = None) -> None:
    await services.audit.get().record(AuditEvent(event, outcome, project, reason=reason))


async def issue_token(request: Request) -> Response:
    body = await parse_body(request, TokenRequest, deps.settings().max_body_bytes)
    ip, now_ms = await _gate(request, body.project_id)
    try:
        pair = await services.sessions.get().login(body.project_id, body.api_key, _now())
    except BrokerError as exc:
        if isinstance(exc, Unauthorized):
            await services.failures.get().record(ip, body.project_id, now_ms)
        await _audit("token.issue", "denied", body.project_id, exc.code)
        raise
    await _audit("token.issue", "allowed", pair.project_id)
    return JSONResponse(pair.body(), headers={"Cache-Control": "no-store"})


async def refresh_token(request: Request) -> Response:
    body = await parse_body(request, RefreshRequest, deps.settings().max_body_bytes)
    ip, now_ms = await _gate(request, None)
    try:
        pair = await services.sessions.get().refresh(body.refresh_token, _now())
    except BrokerError as exc:
        if isinstance(exc, Unauthorized):
            await services.failures.get().record(ip, None, now_ms)
        await _audit("token.refresh", "denied", None, exc.code)
        raise
    await _audit("token.refresh", "allowed", pair.project_id)
    return JSONResponse(pair.body(), headers={"Cache-Control": "no-store"})


async def revoke_token(request: Request) -> Response:
    body = await parse_body(request, RevokeRequest, deps.settings().max_body_bytes)
    ip, now_ms = await _gate(request, None)
    try:
        claims = await services.sessions.get().revoke(body.value, _now())
    except Unauthorized:
        await services.failures.get().record(ip, None, now_ms)
        raise
    await _audit("token.revoke", "allowed", claims.project_id, claims.token_type)
    return JSONResponse({"revoked": True})


async def jwks(request: Request) -> Response:
    keys = services.tokens.get().keys.jwks()
    return JSONResponse(keys, headers={"Cache-Control": "public, max-age=300"})


def _now() -> datetime:
    return datetime.now(UTC)


_app = function_app(
    "auth_token",
    [
        Route("/api/v1/auth/token", issue_token, ("POST",)),
        Route("/api/v1/auth/refresh", refresh_token, ("POST",)),
        Route("/api/v1/auth/revoke", revoke_token, ("POST",)),
        Route("/.well-known/jwks.json", jwks),
    ],
)


async def auth_token(request: Request) -> Response:
    """The deployable entry point (functions-framework --target auth_token)."""
    return await _app(request)
