"""An in-process async TTL cache with single-flight loads and stale-if-error.

Policy data (projects, API key status) is read on every call but changes rarely. Entries
live `ttl` seconds; concurrent misses for one key share a single load (a cold burst makes
one PostgreSQL query, not one per request); if a load fails because PostgreSQL is
unavailable, an entry up to `stale_for` seconds past its TTL is served instead, so a short
database outage does not stop governed traffic (Redis still enforces limits and budgets).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from common.errors import ServiceUnavailable

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class AsyncTTLCache(Generic[K, V]):
    """Values loaded by `loader`, kept `ttl` seconds, served stale on outage for `stale_for`."""

    def __init__(
        self,
        loader: Callable[[K], Awaitable[V]],
        *,
        ttl: float,
        stale_for: float = 0.0,
        max_items: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._ttl = ttl
        self._stale_for = stale_for
        self._max_items = max_items
        self._clock = clock
        self._items: dict[K, tuple[float, V]] = {}
        self._flights: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K) -> V:
        """The value for `key`, fresh within ttl (or stale within stale_for on outage)."""
        now = self._clock()
        hit = self._items.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._load(key))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        try:
            return await asyncio.shield(flight)
        except ServiceUnavailable:
            if hit is not None and now - hit[0] < self._ttl + self._stale_for:
                return hit[1]
            raise

    async def _load(self, key: K) -> V:
        value = await self._loader(key)
        if len(self._items) >= self._max_items:
            self._items.clear()
        self._items[key] = (self._clock(), value)
        return value

    def _landed(self, key: K, flight: asyncio.Future[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: failures are re-raised to the awaiting callers
