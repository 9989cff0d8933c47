"""auth_token: project API keys in, JWT access and refresh tokens out.

POST /api/v1/auth/token, /api/v1/auth/refresh, /api/v1/auth/revoke; GET /.well-known/jwks.json.
Serve alone: functions-framework --asgi --source functions/auth_token/main.py --target auth_token
"""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from common import deps, keyspace, services
from common.audit import AuditEvent
from common.errors import BadRequest, BrokerError, RateLimited, Unauthorized
from common.http import JSONResponse, Route, client_ip, parse_body
from common.openapi import Operation
from common.projects import PROJECT_ID_PATTERN
from common.quota import Limit
from common.runtime import function_app
from common.schemas import (
    RefreshRequest,
    RevokeRequest,
    RevokeResponse,
    TokenRequest,
    TokenResponse,
)
from common.sessions import FailureSlot
from common.settings import ConfigError
from common.tokens import KeySet

TOKEN_ERRORS = (400, 401, 403, 413, 415, 429, 503)
JWKS = {"type": "object", "required": ["keys"], "properties": {"keys": {"type": "array"}}}

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
PROJECT_ID_RULE = "must be 3-128 characters of letters, digits, '_', '.', '-'"


class Attempt:
    """Who is asking (client IP, request id) and when: what the gate and the audit need."""

    # A plain class, not a dataclass: loaders that exec this file without registering it in
    # sys.modules (as some tools do) make @dataclass fail on postponed annotations.
    __slots__ = ("ip", "now_ms", "request_id", "slot")

    def __init__(self, ip: str, request_id: str, now_ms: int) -> None:
        self.ip = ip
        self.request_id = request_id
        self.now_ms = now_ms
        self.slot: FailureSlot | None = None

    async def audit(
        self,
        event: str,
        outcome: str,
        project: str | None,
        reason: str | None = None,
        **details: str,
    ) -> None:
        """Queue one audit row (never a key or a token, only ids): the drainers append it to
        the hash chain in a batch, so no token request waits on the chain's lock."""
        await services.audit.get().queue(
            deps.redis.get(),
            AuditEvent(
                event,
                outcome,
                project,
                actor=f"ip:{self.ip}",
                request_id=self.request_id,
                reason=reason,
                details=details,
            ),
        )

    async def settle(self, exc: BaseException | None) -> None:
        """Keep the attempt counted if the credential was wrong, else give it back."""
        if self.slot is not None and not isinstance(exc, Unauthorized):
            await services.failures.get().refund(self.slot)


async def _gate(request: Request, event: str, project_id: str | None) -> Attempt:
    """Failed-attempt limits, then the per-IP endpoint limit; a refusal is audited."""
    settings = deps.settings()
    attempt = Attempt(
        client_ip(request, settings.trusted_proxies),
        request.state.request_id,
        int(time.time() * 1000),
    )
    try:
        if settings.rate_limiting_enabled and settings.rate_limit_auth_per_minute:
            limit = Limit(
                "auth_per_ip",
                keyspace.limit_scope("auth:ip", attempt.ip),
                settings.rate_limit_auth_per_minute,
                60,
            )
            await services.governor.get().admit(now_ms=attempt.now_ms, limits=[limit])
        attempt.slot = await services.failures.get().take(attempt.ip, project_id, attempt.now_ms)
    except RateLimited as exc:
        await attempt.audit(event, "denied", project_id, exc.code)
        raise
    return attempt


async def issue_token(request: Request) -> Response:
    body = await parse_body(request, TokenRequest, deps.settings().max_body_bytes)
    if not re.fullmatch(PROJECT_ID_PATTERN, body.project_id):
        # Checked before it reaches Redis keys and the audit trail (a NUL would break the COPY).
        raise BadRequest(f"project_id: {PROJECT_ID_RULE}", param="project_id")
    attempt = await _gate(request, "token.issue", body.project_id)
    try:
        pair = await services.sessions.get().login(body.project_id, body.api_key, _now())
    except BaseException as exc:
        await attempt.settle(exc)
        if isinstance(exc, BrokerError):
            await attempt.audit("token.issue", "denied", body.project_id, exc.code)
        raise
    await attempt.settle(None)
    await attempt.audit(
        "token.issue", "allowed", pair.project_id, key_id=pair.key_id, family=pair.family
    )
    return JSONResponse(pair.body(), headers=NO_STORE)


async def refresh_token(request: Request) -> Response:
    body = await parse_body(request, RefreshRequest, deps.settings().max_body_bytes)
    attempt = await _gate(request, "token.refresh", None)
    try:
        pair = await services.sessions.get().refresh(body.refresh_token, _now())
    except BaseException as exc:
        await attempt.settle(exc)
        if isinstance(exc, BrokerError):
            await attempt.audit("token.refresh", "denied", None, exc.code)
        raise
    await attempt.settle(None)
    await attempt.audit(
        "token.refresh", "allowed", pair.project_id, key_id=pair.key_id, family=pair.family
    )
    return JSONResponse(pair.body(), headers=NO_STORE)


async def revoke_token(request: Request) -> Response:
    body = await parse_body(request, RevokeRequest, deps.settings().max_body_bytes)
    attempt = await _gate(request, "token.revoke", None)
    try:
        claims = await services.sessions.get().revoke(body.value, _now())
    except BaseException as exc:
        await attempt.settle(exc)
        if isinstance(exc, BrokerError):
            await attempt.audit("token.revoke", "denied", None, exc.code)
        raise
    await attempt.settle(None)
    await attempt.audit(
        "token.revoke",
        "allowed",
        claims.project_id,
        claims.token_type,
        key_id=claims.key_id,
        family=claims.family,
    )
    return JSONResponse({"revoked": True}, headers=NO_STORE)


async def jwks(request: Request) -> Response:
    keys = services.tokens.get().keys.jwks()
    return JSONResponse(keys, headers={"Cache-Control": "public, max-age=300"})


def _now() -> datetime:
    return datetime.now(UTC)


def _check_keys() -> None:
    # Fail at start, not at the first login, when the signing keys are missing or unusable.
    try:
        KeySet(deps.settings())
    except ConfigError as exc:
        print(f"bradax auth_token: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


_app = function_app(
    "auth_token",
    [
        Route(
            "/api/v1/auth/token",
            issue_token,
            ("POST",),
            Operation("Issue tokens", TokenRequest, TokenResponse, TOKEN_ERRORS),
        ),
        Route(
            "/api/v1/auth/refresh",
            refresh_token,
            ("POST",),
            Operation("Refresh tokens", RefreshRequest, TokenResponse, TOKEN_ERRORS),
        ),
        Route(
            "/api/v1/auth/revoke",
            revoke_token,
            ("POST",),
            Operation("Revoke a token", RevokeRequest, RevokeResponse, TOKEN_ERRORS),
        ),
        Route("/.well-known/jwks.json", jwks, doc=Operation("JSON Web Key Set", response=JWKS)),
    ],
    openapi_path="/api/v1/auth/openapi.json",
)
_check_keys()


async def auth_token(request: Request) -> Response:
    """The deployable entry point (functions-framework --target auth_token)."""
    return await _app(request)
