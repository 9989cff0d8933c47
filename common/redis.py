"""Thin adapter over redis.asyncio: one client per process, Lua scripts, errors translated.

Every failure to reach Redis surfaces as `ServiceUnavailable` so governance fails closed;
the client reconnects on its own when Redis comes back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import ServiceUnavailable
from common.settings import Settings

T = TypeVar("T")

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def load_script(name: str) -> str:
    """The text of a Lua script shipped in common/lua/."""
    return resources.files("common").joinpath("lua", name).read_text(encoding="utf-8")


class RedisStore:
    """The process' Redis client and its registered scripts."""

    def __init__(self, settings: Settings, *, timeout: float | None = None) -> None:
        timeout = timeout if timeout is not None else settings.redis_timeout
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 5.0),
            retry_on_timeout=False,
            decode_responses=False,
            health_check_interval=0,
        )
        self._scripts: dict[str, AsyncScript] = {}

    def script(self, name: str) -> AsyncScript:
        """A registered script (EVALSHA, re-loaded by redis-py after a Redis restart)."""
        found = self._scripts.get(name)
        if found is None:
            found = self.client.register_script(load_script(name))
            self._scripts[name] = found
        return found

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script atomically; unreachable Redis -> ServiceUnavailable."""
        try:
            return await self.script(name)(keys=keys, args=args)
        except UNAVAILABLE as exc:
            raise ServiceUnavailable("governance store (redis) unavailable") from exc
        except ResponseError as exc:
            if "BUSY" in str(exc) or "LOADING" in str(exc):
                raise ServiceUnavailable("governance store (redis) is busy") from exc
            raise

    async def call(self, *args: Any) -> Any:
        """One raw command; unreachable Redis -> ServiceUnavailable."""
        try:
            return await self.client.execute_command(*args)  # type: ignore[no-untyped-call]
        except UNAVAILABLE as exc:
            raise ServiceUnavailable("governance store (redis) unavailable") from exc
        except ResponseError as exc:
            if "LOADING" in str(exc):
                raise ServiceUnavailable("governance store (redis) is loading") from exc
            raise

    def pipeline(self, transaction: bool = True) -> Pipeline:
        """A pipeline on the shared client (the caller translates errors with `guard`)."""
        return self.client.pipeline(transaction=transaction)

    async def guard(self, pending: Awaitable[T]) -> T:
        """Await a pipeline or command; unreachable Redis -> ServiceUnavailable."""
        try:
            return await pending
        except UNAVAILABLE as exc:
            raise ServiceUnavailable("governance store (redis) unavailable") from exc

    async def ping(self) -> bool:
        """True when Redis answers PING."""
        try:
            return bool(await self.client.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
