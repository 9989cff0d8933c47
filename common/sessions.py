"""Token sessions: API key -> access + refresh pair, refresh rotation, revocation.

Refresh tokens are single-use and belong to a family (one login). Using one rotates it;
presenting an already-used one again means it was stolen, so the whole family is revoked
(in PostgreSQL for refresh, in the Redis deny-list for live access tokens). Failed attempts
are counted per client IP and per project to contain brute force.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from common.apikeys import ApiKey, ApiKeyStore
from common.audit import AuditEvent, AuditTrail
from common.db import Database
from common.errors import ProjectSuspended, RateLimited, Unauthorized
from common.projects import ProjectStore
from common.quota import Governor, Limit
from common.redis import RedisStore
from common.settings import Settings
from common.tokens import Claims, TokenService


@dataclass(frozen=True)
class TokenPair:
    """What the token endpoints return."""

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    scopes: tuple[str, ...]
    project_id: str
    family: str

    def body(self) -> dict[str, Any]:
        """The spec's response body."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_in": self.expires_in,
            "refresh_expires_in": self.refresh_expires_in,
            "token_type": "Bearer",
            "scopes": list(self.scopes),
        }


class FailureGate:
    """Counts failed credential attempts per IP and per project; over the limit -> 429."""

    def __init__(self, governor: Governor, redis: RedisStore, settings: Settings) -> None:
        self._governor = governor
        self._redis = redis
        self._window = settings.auth_failure_window_seconds
        self._per_ip = settings.auth_failures_per_ip
        self._per_project = settings.auth_failures_per_project

    def _limits(self, ip: str, project_id: str | None) -> list[Limit]:
        limits = [Limit("failed_auth_per_ip", f"authfail:ip:{ip}", self._per_ip, self._window)]
        if project_id:
            limits.append(
                Limit(
                    "failed_auth_per_project",
                    f"authfail:proj:{project_id}",
                    self._per_project,
                    self._window,
                )
            )
        return limits

    async def check(self, ip: str, project_id: str | None, now_ms: int) -> None:
        """RateLimited if this IP or project has failed too often lately."""
        try:
            limits = self._limits(ip, project_id)
            await self._governor.admit(now_ms=now_ms, limits=limits, peek=True)
        except RateLimited as exc:
            raise RateLimited(
                "too many failed authentication attempts; try again later",
                retry_after=exc.retry_after,
                code="too_many_failed_attempts",
            ) from None

    async def record(self, ip: str, project_id: str | None, now_ms: int) -> None:
        """Count one failure."""
        now_s = now_ms // 1000
        pipe = self._redis.pipeline(transaction=True)
        for lim in self._limits(ip, project_id):
            key = lim.key(now_s)
            pipe.incr(key)
            pipe.expire(key, lim.window, nx=True)
        await self._redis.guard(pipe.execute())


class SessionService:
    """Issues, rotates and revokes token pairs."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        redis: RedisStore,
        tokens: TokenService,
        audit: AuditTrail,
    ) -> None:
        self._db = db
        self._redis = redis
        self._tokens = tokens
        self._keys = ApiKeyStore(db)
        self._projects = ProjectStore(db)
        self._audit = audit
        self._deny_ttl = tokens.access_ttl + settings.jwt_leeway_seconds + 60

    async def login(self, project_id: str, api_key: str, now: datetime) -> TokenPair:
        """A new token family for a valid (project, key); Unauthorized / ProjectSuspended."""
        key = await self._keys.verify(api_key, project_id, now)
        project = await self._projects.get(key.project_id)
        if project is None:
            raise Unauthorized("invalid project_id or api_key", code="invalid_credentials")
        if not project.active:
            raise ProjectSuspended(f"project {project.id} is suspended")
        return await self._issue(key, secrets.token_urlsafe(12), now)

    async def refresh(self, token: str, now: datetime) -> TokenPair:
        """Rotate a refresh token; reuse of a consumed one revokes its whole family."""
        claims = self._tokens.verify(token, "refresh", int(now.timestamp()))
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE refresh_tokens SET used_at = $2 WHERE jti = $1 AND used_at IS NULL "
                "AND revoked_at IS NULL AND expires_at > $2 RETURNING family_id, key_id",
                claims.jti,
                now,
            )
            if row is None:
                await self._refuse_refresh(conn, claims, now)
            key_row = await conn.fetchrow(
                "SELECT k.status, k.expires_at, p.status AS project_status FROM api_keys k "
                "JOIN projects p ON p.id = k.project_id WHERE k.key_id = $1",
                claims.key_id,
            )
        if (
            key_row is None
            or key_row["status"] != "active"
            or (key_row["expires_at"] is not None and key_row["expires_at"] <= now)
        ):
            raise Unauthorized("the API key behind this session was revoked", code="revoked")
        if key_row["project_status"] != "active":
            raise ProjectSuspended(f"project {claims.project_id} is suspended")
        key = await self._keys.get(claims.key_id)
        assert key is not None
        return await self._issue(key, claims.family, now)

    async def _refuse_refresh(self, conn: Any, claims: Claims, now: datetime) -> None:
        state = await conn.fetchrow(
            "SELECT used_at, revoked_at FROM refresh_tokens WHERE jti = $1", claims.jti
        )
        if state is None:
            raise Unauthorized("unknown refresh token")
        if state["revoked_at"] is not None:
            raise Unauthorized("refresh token has been revoked", code="revoked")
        if state["used_at"] is not None:
            await self._revoke_family(conn, claims.family, now)
            await self._audit.record(
                AuditEvent(
                    "token.refresh",
                    "denied",
                    claims.project_id,
                    f"key:{claims.key_id}",
                    reason="refresh token reuse detected; token family revoked",
                    details={"family": claims.family},
                )
            )
            raise Unauthorized(
                "refresh token was already used; the session has been revoked",
                code="refresh_token_reused",
            )
        raise Unauthorized("refresh token has expired")

    async def revoke(self, token: str, now: datetime) -> Claims:
        """Revoke a refresh token's family (or one access token); returns its claims."""
        stamp = int(now.timestamp())
        try:
            claims = self._tokens.verify(token, "refresh", stamp)
        except Unauthorized:
            claims = self._tokens.verify(token, "access", stamp)
            ttl = max(1, claims.expires_at - stamp + 60)
            await self._redis.call("SET", f"bx:deny:jti:{claims.jti}", "1", "EX", ttl)
            return claims
        async with self._db.connection() as conn, conn.transaction():
            await self._revoke_family(conn, claims.family, now)
        return claims

    async def _revoke_family(self, conn: Any, family: str, now: datetime) -> None:
        await conn.execute(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
            family,
            now,
        )
        await self._redis.call("SET", f"bx:deny:fam:{family}", "1", "EX", self._deny_ttl)

    async def _issue(self, key: ApiKey, family: str, now: datetime) -> TokenPair:
        stamp = int(now.timestamp())
        access, refresh = (
            self._tokens.issue(
                project_id=key.project_id,
                key_id=key.key_id,
                scopes=key.scopes,
                token_type=kind,
                family=family,
                now=stamp,
            )
            for kind in ("access", "refresh")
        )
        await self._db.execute(
            "INSERT INTO refresh_tokens (jti, family_id, project_id, key_id, scopes, issued_at, "
            "expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            refresh.jti,
            family,
            key.project_id,
            key.key_id,
            list(key.scopes),
            now,
            datetime.fromtimestamp(refresh.expires_at, UTC),
        )
        return TokenPair(
            access.token,
            refresh.token,
            self._tokens.access_ttl,
            self._tokens.refresh_ttl,
            key.scopes,
            key.project_id,
            family,
        )
