"""Token sessions: API key -> access + refresh pair, refresh rotation, revocation.

Refresh tokens are single-use and belong to a family (one login). Using one rotates it;
presenting an already-used one again means it was stolen, so the whole family is revoked
(in PostgreSQL for refresh, in the Redis deny-list for live access tokens). Tokens never
outlive their API key's rotation grace. Failed attempts are counted per client IP and per
project to contain brute force.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from common import keyspace
from common.apikeys import INVALID_CREDENTIALS, ApiKey, ApiKeyStore
from common.audit import AuditEvent, AuditTrail
from common.db import Database
from common.denylist import DenyList
from common.errors import (
    ProjectSuspended,
    RateLimited,
    ServiceUnavailable,
    StoreError,
    Unauthorized,
)
from common.projects import ProjectStore
from common.quota import Limit
from common.redis import RedisStore
from common.settings import Settings
from common.tokens import Claims, TokenService

KEY_GONE = "the API key behind this session was revoked or has expired"


@dataclass(frozen=True)
class TokenPair:
    """What the token endpoints return."""

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    scopes: tuple[str, ...]
    project_id: str
    key_id: str
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


@dataclass(frozen=True)
class FailureSlot:
    """The counters one attempt was charged to (given back by `FailureGate.refund`)."""

    keys: tuple[str, ...]
    args: tuple[int, ...]


class FailureGate:
    """Failed credential attempts per client IP and per (client IP, project); over -> 429.

    `take` counts an attempt before its credential is verified, atomically with the check
    (one script), so concurrent guesses cannot all slip under the limit; `refund` gives the
    slot back once the credential proved valid. The project counter is per client IP too:
    failures sent from elsewhere can never lock a project's real key out.
    """

    def __init__(self, redis: RedisStore, settings: Settings) -> None:
        self._redis = redis
        self._window = settings.auth_failure_window_seconds
        self._per_ip = settings.auth_failures_per_ip
        self._per_project = settings.auth_failures_per_project

    def _limits(self, ip: str, project_id: str | None) -> list[Limit]:
        scope = keyspace.failure_scope(ip)
        limits = [Limit("failed_auth_per_ip", scope, self._per_ip, self._window)]
        if project_id:
            limits.append(
                Limit(
                    "failed_auth_per_project",
                    keyspace.failure_scope(ip, project_id),
                    self._per_project,
                    self._window,
                )
            )
        return [lim for lim in limits if lim.limit > 0]

    async def take(self, ip: str, project_id: str | None, now_ms: int) -> FailureSlot:
        """Count one attempt; RateLimited (too_many_failed_attempts) if over a limit."""
        limits = self._limits(ip, project_id)
        now_s = now_ms // 1000
        slot = FailureSlot(
            tuple(lim.key(now_s) for lim in limits),
            tuple(value for lim in limits for value in (lim.limit, lim.window)),
        )
        if not slot.keys:
            return slot
        result = await self._redis.run("failures.lua", list(slot.keys), ["take", *slot.args])
        if int(result[0]) == 1:
            raise RateLimited(
                "too many failed authentication attempts; try again later",
                retry_after=max(1, int(result[2])),
                code="too_many_failed_attempts",
                details={"limit_name": limits[int(result[1]) - 1].name},
            )
        return slot

    async def refund(self, slot: FailureSlot) -> None:
        """Give an attempt back: its credential was valid (a lost refund only over-counts)."""
        if not slot.keys:
            return
        with contextlib.suppress(ServiceUnavailable, StoreError):
            await self._redis.run("failures.lua", list(slot.keys), ["refund", *slot.args])


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
        self._deny = DenyList(redis)
        self._tokens = tokens
        self._keys = ApiKeyStore(db)
        self._projects = ProjectStore(db)
        self._audit = audit
        self._redis = redis
        self._deny_ttl = tokens.access_ttl + settings.jwt_leeway_seconds + 60

    async def login(self, project_id: str, api_key: str, now: datetime) -> TokenPair:
        """A new token family for a valid (project, key); Unauthorized / ProjectSuspended."""
        key = await self._keys.verify(api_key, project_id, now)
        project = await self._projects.get(key.project_id)
        if project is None:
            raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
        if not project.active:
            raise ProjectSuspended(f"project {project.id} is suspended")
        await self._keys.touch(key.key_id)
        return await self._issue(key, secrets.token_urlsafe(12), now)

    async def refresh(self, token: str, now: datetime) -> TokenPair:
        """Rotate a refresh token; reuse of a consumed one revokes its whole family.

        A refresh refused because the key is revoked or the project suspended does not consume
        the token, so a session paused by a suspension resumes with the project.
        """
        claims = self._tokens.verify(token, "refresh", int(now.timestamp()))
        async with self._db.connection() as conn:
            state = await conn.fetchrow(_REFRESH_STATE, claims.jti)
            if state is None:
                raise Unauthorized("unknown refresh token")
            if state["revoked_at"] is not None or state["family_revoked"]:
                raise Unauthorized("refresh token has been revoked", code="revoked")
            if state["used_at"] is not None:
                await self._reused(conn, claims, now)
            if state["expires_at"] <= now:
                raise Unauthorized("refresh token has expired")
            if state["key_status"] != "active" or (
                state["key_expires_at"] is not None and state["key_expires_at"] <= now
            ):
                raise Unauthorized(KEY_GONE, code="revoked")
            if state["project_status"] != "active":
                raise ProjectSuspended(f"project {claims.project_id} is suspended")
            consumed = await conn.fetchval(
                "UPDATE refresh_tokens SET used_at = $2 WHERE jti = $1 AND used_at IS NULL "
                "AND revoked_at IS NULL RETURNING jti",
                claims.jti,
                now,
            )
            if consumed is None:  # another request used it a moment ago: that is reuse too
                await self._reused(conn, claims, now)
        key = await self._keys.get(claims.key_id)
        if key is None:
            raise Unauthorized(KEY_GONE, code="revoked")
        return await self._issue(key, claims.family, now)

    async def _reused(self, conn: Any, claims: Claims, now: datetime) -> NoReturn:
        await self._revoke_family(conn, claims, now)
        await self._audit.queue(
            self._redis,
            AuditEvent(
                "token.refresh",
                "denied",
                claims.project_id,
                f"key:{claims.key_id}",
                reason="refresh token reuse detected; token family revoked",
                details={"family": claims.family},
            ),
        )
        raise Unauthorized(
            "refresh token was already used; the session has been revoked",
            code="refresh_token_reused",
        )

    async def revoke(self, token: str, now: datetime) -> Claims:
        """Revoke a refresh token's family (or one access token); returns its claims."""
        stamp = int(now.timestamp())
        claims = self._tokens.verify(token, None, stamp)
        if claims.token_type == "access":
            ttl = max(1, claims.expires_at - stamp + self._tokens.leeway + 60)
            await self._deny.add(keyspace.deny_token(claims.project_id, claims.jti), ttl)
            return claims
        async with self._db.connection() as conn, conn.transaction():
            await self._revoke_family(conn, claims, now)
        return claims

    async def _revoke_family(self, conn: Any, claims: Claims, now: datetime) -> None:
        family = claims.family
        await conn.execute(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
            family,
            now,
        )
        await self._deny.add(keyspace.deny_family(claims.project_id, family), self._deny_ttl)

    async def _issue(self, key: ApiKey, family: str, now: datetime) -> TokenPair:
        stamp = int(now.timestamp())
        # Tokens never outlive a key in its rotation grace.
        not_after = int(key.expires_at.timestamp()) if key.expires_at is not None else None
        access, refresh = (
            self._tokens.issue(
                project_id=key.project_id,
                key_id=key.key_id,
                scopes=key.scopes,
                token_type=kind,
                family=family,
                now=stamp,
                not_after=not_after,
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
            access.expires_at - stamp,
            refresh.expires_at - stamp,
            key.scopes,
            key.project_id,
            key.key_id,
            family,
        )


# A refresh token's own state, its family's, its key's and its project's, in one query.
_REFRESH_STATE = (
    "SELECT r.used_at, r.revoked_at, r.expires_at, "
    "EXISTS (SELECT 1 FROM refresh_tokens f WHERE f.family_id = r.family_id "
    "AND f.revoked_at IS NOT NULL) AS family_revoked, "
    "k.status AS key_status, k.expires_at AS key_expires_at, p.status AS project_status "
    "FROM refresh_tokens r LEFT JOIN api_keys k ON k.key_id = r.key_id "
    "LEFT JOIN projects p ON p.id = r.project_id WHERE r.jti = $1"
)
