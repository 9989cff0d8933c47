"""Access-token lifecycle: log in with the API key, refresh before expiry, one refresh at a time.

The broker's refresh tokens are single-use: presenting a consumed one revokes the whole
session. So a client renews under a lock (a `threading.Lock` for `Broker`, an `asyncio.Lock`
for `AsyncBroker`), and a caller that waited for the lock uses the tokens the holder obtained
instead of refreshing again. A renewal uses the refresh token while it lives and falls back to
logging in with the API key when the refresh fails in any way (refused, revoked, its answer
lost): the login then reports the real problem (revoked key, suspended project) and is retried
under the client's retry policy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeGuard

from bradax.errors import BradaxError
from bradax.models import TokenPair

__all__ = ["AsyncTokenManager", "TokenManager", "Tokens"]

# A refresh token this close to its expiry is not worth trying: log in instead.
REFRESH_TOKEN_MARGIN = 5.0


@dataclass(frozen=True)
class Tokens:
    """One token pair and when (on the client's clock) each part stops being valid."""

    pair: TokenPair
    access_expires_at: float
    refresh_expires_at: float

    @classmethod
    def issued(cls, pair: TokenPair, asked_at: float) -> Tokens:
        """Deadlines counted from when the request was sent (errs on the early side)."""
        return cls(pair, asked_at + pair.expires_in, asked_at + pair.refresh_expires_in)

    @property
    def access_token(self) -> str:
        """The bearer token for API calls."""
        return self.pair.access_token

    def fresh(self, now: float, margin: float) -> bool:
        """True if the access token has more than `margin` seconds left."""
        return self.access_expires_at - now > margin

    def refreshable(self, now: float) -> bool:
        """True if the refresh token is still worth presenting."""
        return self.refresh_expires_at - now > REFRESH_TOKEN_MARGIN


class _Base:
    def __init__(self, clock: Callable[[], float], margin: float) -> None:
        if margin < 0:
            raise ValueError("refresh_margin must be >= 0")
        self._clock = clock
        self._margin = margin
        self._tokens: Tokens | None = None
        self.logins = 0
        self.refreshes = 0

    @property
    def tokens(self) -> Tokens | None:
        """The current tokens (None before the first login)."""
        return self._tokens

    def _usable(self, seen: Tokens | None) -> Tokens | None:
        """Tokens someone else obtained since `seen`, if still valid: no renewal needed."""
        current = self._tokens
        if current is not None and current is not seen and current.fresh(self._clock(), 0):
            return current
        return None

    def _fresh(self, tokens: Tokens | None) -> TypeGuard[Tokens]:
        """True if `tokens` exist and have more than the margin left."""
        return tokens is not None and tokens.fresh(self._clock(), self._margin)


class TokenManager(_Base):
    """Thread-safe token holder for the sync client."""

    def __init__(
        self,
        login: Callable[[], TokenPair],
        refresh: Callable[[str], TokenPair],
        *,
        clock: Callable[[], float],
        margin: float,
    ) -> None:
        super().__init__(clock, margin)
        self._login = login
        self._refresh = refresh
        self._lock = threading.Lock()

    def current(self) -> Tokens:
        """Valid tokens, renewed first if fewer than `margin` seconds are left."""
        seen = self._tokens
        return seen if self._fresh(seen) else self.renew(seen)

    def renew(self, seen: Tokens | None, *, force_login: bool = False) -> Tokens:
        """New tokens unless another thread already replaced `seen` (the ones found stale)."""
        with self._lock:
            if not force_login:
                other = self._usable(seen)
                if other is not None:
                    return other
            current = self._tokens
            now = self._clock()
            pair: TokenPair | None = None
            if current is not None and not force_login and current.refreshable(now):
                try:
                    pair = self._refresh(current.pair.refresh_token)
                    self.refreshes += 1
                except BradaxError:
                    pair = None  # refused, lost or failed: the API key decides (and retries)
            if pair is None:
                now = self._clock()
                pair = self._login()
                self.logins += 1
            self._tokens = Tokens.issued(pair, now)
            return self._tokens

    def drop(self) -> Tokens | None:
        """Forget the tokens (after a logout); returns what was held."""
        with self._lock:
            old, self._tokens = self._tokens, None
            return old


class AsyncTokenManager(_Base):
    """Task-safe token holder for the async client (use it from one event loop)."""

    def __init__(
        self,
        login: Callable[[], Awaitable[TokenPair]],
        refresh: Callable[[str], Awaitable[TokenPair]],
        *,
        clock: Callable[[], float],
        margin: float,
    ) -> None:
        super().__init__(clock, margin)
        self._login = login
        self._refresh = refresh
        self._lock = asyncio.Lock()

    async def current(self) -> Tokens:
        """Valid tokens, renewed first if fewer than `margin` seconds are left."""
        seen = self._tokens
        return seen if self._fresh(seen) else await self.renew(seen)

    async def renew(self, seen: Tokens | None, *, force_login: bool = False) -> Tokens:
        """New tokens unless another task already replaced `seen` (the ones found stale)."""
        async with self._lock:
            if not force_login:
                other = self._usable(seen)
                if other is not None:
                    return other
            current = self._tokens
            now = self._clock()
            pair: TokenPair | None = None
            if current is not None and not force_login and current.refreshable(now):
                try:
                    pair = await self._refresh(current.pair.refresh_token)
                    self.refreshes += 1
                except BradaxError:
                    pair = None  # refused, lost or failed: the API key decides (and retries)
            if pair is None:
                now = self._clock()
                pair = await self._login()
                self.logins += 1
            self._tokens = Tokens.issued(pair, now)
            return self._tokens

    async def drop(self) -> Tokens | None:
        """Forget the tokens (after a logout); returns what was held."""
        async with self._lock:
            old, self._tokens = self._tokens, None
            return old
