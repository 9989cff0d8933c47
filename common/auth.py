"""The one verification every function uses: Authorization header + required scope -> Principal.

A Bearer credential is either an access token (JWT) or, on the OpenAI-compatible surface,
a project API key. Signatures are checked once per token (cached); revocation is checked at
every use against the Redis deny-list (suspended project, revoked key, revoked token family,
revoked token), so a revocation takes effect on the next request. If Redis cannot answer,
nothing is granted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from common.apikeys import ApiKey, ApiKeyStore, looks_like_key
from common.cache import AsyncTTLCache
from common.denylist import DenyList
from common.errors import InsufficientScope, Unauthorized
from common.quota import DenyKey, deny_keys
from common.redis import RedisStore
from common.tokens import TokenService


@dataclass(frozen=True)
class Principal:
    """Who is calling: the project, through which key and token, with which scopes."""

    project_id: str
    key_id: str
    scopes: tuple[str, ...]
    jti: str | None = None
    family: str | None = None
    via: str = "token"

    def deny(self) -> list[DenyKey]:
        """The deny-list entries that would revoke this credential."""
        return deny_keys(self.project_id, self.key_id, self.jti, self.family)


def bearer(header: str | None) -> str:
    """The credential of an `Authorization: Bearer <credential>` header; else Unauthorized."""
    if not header:
        raise Unauthorized("missing Authorization header (expected: Bearer <token>)")
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise Unauthorized("malformed Authorization header (expected: Bearer <token>)")
    if len(credential) > 8192:
        raise Unauthorized("credential is too long")
    return credential


class Authenticator:
    """Verifies access tokens (and API keys where allowed) and checks the deny-list."""

    def __init__(
        self,
        tokens: TokenService,
        keys: ApiKeyStore,
        redis: RedisStore,
        *,
        key_cache_seconds: float = 5.0,
        stale_for: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tokens = tokens
        self._keys = keys
        self._deny = DenyList(redis)
        self._clock = clock
        self._key_cache_seconds = key_cache_seconds
        self._key_cache: dict[bytes, tuple[float, Principal]] = {}
        self._key_status: AsyncTTLCache[str, ApiKey | None] = AsyncTTLCache(
            keys.get, ttl=key_cache_seconds, stale_for=stale_for
        )

    def verify_token(self, header: str | None, scope: str) -> Principal:
        """Signature, claims and scope of an access token (no revocation check)."""
        claims = self.tokens.verify(bearer(header), "access", int(self._clock()))
        if not claims.has_scope(scope):
            raise InsufficientScope(f"token lacks the '{scope}' scope")
        return Principal(claims.project_id, claims.key_id, claims.scopes, claims.jti, claims.family)

    async def verify_credential(self, header: str | None, scope: str) -> Principal:
        """Like verify_token, but a project API key is accepted too (OpenAI-compatible API)."""
        credential = bearer(header)
        if not looks_like_key(credential):
            return self.verify_token(header, scope)
        principal = await self._api_key_principal(credential)
        if scope not in principal.scopes:
            raise InsufficientScope(f"API key lacks the '{scope}' scope")
        return principal

    async def authenticate(
        self, header: str | None, scope: str, *, allow_api_key: bool = False
    ) -> Principal:
        """Verify the credential and scope, then check revocation (one Redis round trip)."""
        if allow_api_key:
            principal = await self.verify_credential(header, scope)
        else:
            principal = self.verify_token(header, scope)
        await self.ensure_key_usable(principal)
        await self.check_revocation(principal)
        return principal

    async def ensure_key_usable(self, principal: Principal) -> None:
        """Unauthorized if the token's API key was revoked or expired (read from PostgreSQL
        at most every key_cache_seconds): revocation holds even if Redis missed it."""
        if principal.via != "token":
            return  # API keys are verified against PostgreSQL with the same cache
        key = await self._key_status.get(principal.key_id)
        if key is None or not key.usable(datetime.fromtimestamp(self._clock(), UTC)):
            raise Unauthorized("credential has been revoked", code="revoked")

    async def check_revocation(self, principal: Principal) -> None:
        """Unauthorized if any deny-list entry for the credential exists (503 if Redis is down)."""
        await self._deny.check(principal.deny())

    def knows_key(self, header: str | None) -> bool:
        """True if this API key was verified moments ago (its principal is cached)."""
        try:
            credential = bearer(header)
        except Unauthorized:
            return False
        hit = self._key_cache.get(hashlib.sha256(credential.encode()).digest())
        return hit is not None and hit[0] > self._clock()

    async def _api_key_principal(self, credential: str) -> Principal:
        digest = hashlib.sha256(credential.encode()).digest()
        now = self._clock()
        hit = self._key_cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = await self._keys.verify(credential, None, datetime.fromtimestamp(now, UTC))
        principal = Principal(key.project_id, key.key_id, key.scopes, via="api_key")
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        expires = now + self._key_cache_seconds
        if key.expires_at is not None:
            expires = min(expires, key.expires_at.timestamp())
        self._key_cache[digest] = (expires, principal)
        return principal
