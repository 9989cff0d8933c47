"""Thin adapter over redis.asyncio: one client per process, Lua scripts, errors translated.

Every failure to reach Redis surfaces as `ServiceUnavailable` so governance fails closed;
the client reconnects on its own when Redis comes back.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import ServiceUnavailable
from common.resp import RespClient, RespConnectionError
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
            # After a Redis restart every pooled connection is stale: retry a command once on
            # a fresh connection instead of failing it (timeouts are not retried).
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=False,
            health_check_interval=0,
        )
        # Hot-path scripts go through one pipelined connection (see common.resp).
        self.fast = RespClient(settings.redis_url.get_secret_value(), timeout=timeout)
        self._scripts: dict[str, tuple[str, str]] = {}

    def script(self, name: str) -> tuple[str, str]:
        """(sha1, text) of a script shipped in common/lua/."""
        found = self._scripts.get(name)
        if found is None:
            text = load_script(name)
            found = (hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest(), text)
            self._scripts[name] = found
        return found

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script atomically (EVALSHA, loaded on NOSCRIPT); Redis down -> 503."""
        sha, text = self.script(name)
        try:
            try:
                return await self.fast.execute("EVALSHA", sha, len(keys), *keys, *args)
            except ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await self.fast.execute("SCRIPT", "LOAD", text)
                return await self.fast.execute("EVALSHA", sha, len(keys), *keys, *args)
        except RespConnectionError as exc:
            raise ServiceUnavailable("governance store (redis) unavailable") from exc
        except ResponseError as exc:
            if str(exc).startswith(("BUSY", "LOADING")):
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

    async def close(self) -> None:
        """Close the connections."""
        self.fast.close()
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
