"""The deny-list: revoked credentials and suspended projects, in Redis, checked at every use.

Entries are set by revocations and suspensions (with a TTL that outlives the tokens they
stop) and read in the admission script and by `check` on paths that answer before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.errors import Unauthorized
from common.quota import DenyKey
from common.redis import RedisStore


class DenyList:
    """Verbs over the deny-list keys (common.keyspace names them)."""

    def __init__(self, redis: RedisStore) -> None:
        self._redis = redis

    async def check(self, entries: Sequence[DenyKey]) -> None:
        """Unauthorized (revoked) with the first entry that is set; 503 if Redis is down."""
        values = await self._redis.call("MGET", *(entry.key for entry in entries))
        for entry, value in zip(entries, values, strict=True):
            if value is not None:
                raise Unauthorized(entry.reason, code="revoked")

    async def add(self, key: str, ttl: int | None = None) -> None:
        """Set an entry (for `ttl` seconds, else until removed)."""
        if ttl is None:
            await self._redis.call("SET", key, "1")
        else:
            await self._redis.call("SET", key, "1", "EX", max(1, ttl))

    async def remove(self, key: str) -> None:
        """Clear an entry (a resumed project)."""
        await self._redis.call("DEL", key)
