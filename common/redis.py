"""Thin adapter over redis.asyncio: one client per process, Lua scripts, errors translated.

The contract: Redis 7.0+ or Valkey 7.2+ (scripts use 7.0 semantics; the drainer needs
XAUTOCLAIM), with `maxmemory-policy noeviction` (budgets, reservations and pending ledger
records must never be evicted). Both are checked once, on the first command, and a server
that fails them refuses every command with one clear line (`StoreUnsupported`, 503).

Errors are translated here and only here: an unreachable server, and the replies that mean
"not now" (READONLY, OOM, LOADING, BUSY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN), become
`ServiceUnavailable` (503 with Retry-After, fail closed); any other error reply becomes a
logged `StoreError`. The client reconnects on its own when Redis comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Sequence
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import ServiceUnavailable, StoreError, StoreUnsupported
from common.resp import RespClient, RespConnectionError
from common.resp_cluster import ClusterRespClient
from common.settings import Settings

T = TypeVar("T")

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, RespConnectionError, OSError, TimeoutError)
# Error replies that mean the server cannot serve right now: retry later, never a 500.
TRANSIENT = ("READONLY", "OOM", "LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")
# Replies the callers expect and handle (creating a consumer group that exists): not logged.
EXPECTED = ("BUSYGROUP",)
_CLASS_WORDS: dict[type[Exception], str] = {
    exceptions.ReadOnlyError: "READONLY",
    exceptions.OutOfMemoryError: "OOM",
    exceptions.BusyLoadingError: "LOADING",
    exceptions.MasterDownError: "MASTERDOWN",
    exceptions.ClusterDownError: "CLUSTERDOWN",
    exceptions.TryAgainError: "TRYAGAIN",
}
MIN_VERSION = (7, 0)
SAFE_POLICIES = ("noeviction",)

_log = logging.getLogger("bradax.redis")


def load_script(name: str) -> str:
    """The text of a Lua script shipped in common/lua/."""
    return resources.files("common").joinpath("lua", name).read_text(encoding="utf-8")


def translate(exc: Exception) -> Exception:
    """The broker error for a failure of a Redis command (anything else is returned as is)."""
    if isinstance(exc, StoreError | ServiceUnavailable):
        return exc
    if isinstance(exc, ResponseError):
        reply = str(exc)
        # redis-py turns some replies into classes and drops their first word.
        word = _CLASS_WORDS.get(type(exc)) or reply.split(" ", 1)[0].upper()
        if word in TRANSIENT:
            return ServiceUnavailable(f"governance store (redis) unavailable: {word}")
        if word not in EXPECTED:
            _log.error("redis refused a command: %s", reply[:200])
        return StoreError(reply)
    if isinstance(exc, UNAVAILABLE):
        return ServiceUnavailable("governance store (redis) unavailable")
    return exc


def _info_fields(info: bytes | str) -> dict[str, str]:
    text = info.decode() if isinstance(info, bytes) else info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def check_contract(info: bytes | str) -> str:
    """The server's name and version from its INFO; StoreUnsupported if below the contract."""
    fields = _info_fields(info)
    valkey = fields.get("valkey_version")
    version = fields.get("redis_version", "0")
    name = f"Valkey {valkey}" if valkey else f"Redis {version}"
    try:
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        numbers = (0, 0)
    if numbers < MIN_VERSION:
        raise StoreUnsupported(
            f"{name} is not supported: bradax needs Redis 7.0+ or Valkey 7.2+ (REDIS_URL)"
        )
    policy = fields.get("maxmemory_policy", "noeviction")
    if policy not in SAFE_POLICIES:
        raise StoreUnsupported(
            f"{name} has maxmemory-policy {policy}: budgets and pending ledger records must "
            "not be evicted; set maxmemory-policy noeviction"
        )
    return name


class RedisStore:
    """The process' Redis client and its registered scripts."""

    def __init__(self, settings: Settings, *, timeout: float | None = None) -> None:
        timeout = timeout if timeout is not None else settings.redis_timeout
        url = settings.redis_url.get_secret_value()
        self.cluster = settings.redis_cluster
        self.client: aioredis.Redis | RedisCluster
        self.fast: RespClient | ClusterRespClient
        if self.cluster:
            # Commands and pipelines are routed by slot; a script by its first key (every
            # script's keys share one slot: common.keyspace tags them by project).
            self.client = RedisCluster.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=min(timeout, 5.0),
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                decode_responses=False,
            )
            self.fast = ClusterRespClient(url, timeout=timeout)
        else:
            self.client = self._single(url, timeout)
            # Hot-path scripts go through one pipelined connection (see common.resp).
            self.fast = RespClient(url, timeout=timeout)
        self._scripts: dict[str, tuple[str, str]] = {}
        # "Redis 7.0.15" / "Valkey 9.0.1" once the server passed the contract check.
        self.server: str | None = None
        self._checking: asyncio.Lock | None = None

    @staticmethod
    def _single(url: str, timeout: float) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 5.0),
            retry_on_timeout=False,
            # After a Redis restart every pooled connection is stale: retry a command once on
            # a fresh connection instead of failing it (timeouts are not retried).
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=False,
            health_check_interval=0,
        )

    def script(self, name: str) -> tuple[str, str]:
        """(sha1, text) of a script shipped in common/lua/."""
        found = self._scripts.get(name)
        if found is None:
            text = load_script(name)
            found = (hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest(), text)
            self._scripts[name] = found
        return found

    async def ensure_supported(self) -> str:
        """Check the server against the contract once (StoreUnsupported, 503 if unreachable)."""
        if self.server is not None:
            return self.server
        if self._checking is None:
            self._checking = asyncio.Lock()
        async with self._checking:
            if self.server is None:
                try:
                    info = await self.fast.execute("INFO")
                except Exception as exc:
                    raise translate(exc) from exc
                try:
                    self.server = check_contract(info)
                except StoreUnsupported as exc:
                    _log.error("%s", exc.message)
                    raise
        return self.server

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script atomically (EVALSHA, loaded on NOSCRIPT); errors translated."""
        if self.server is None:
            await self.ensure_supported()
        sha, text = self.script(name)
        fast = self.fast
        try:
            if isinstance(fast, ClusterRespClient):
                command = ("EVALSHA", sha, len(keys), *keys, *args)
                try:
                    return await fast.execute_keyed(keys[0], *command)
                except ResponseError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    await fast.broadcast("SCRIPT", "LOAD", text)
                    return await fast.execute_keyed(keys[0], *command)
            try:
                return await fast.execute("EVALSHA", sha, len(keys), *keys, *args)
            except ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await fast.execute("SCRIPT", "LOAD", text)
                return await fast.execute("EVALSHA", sha, len(keys), *keys, *args)
        except Exception as exc:
            raise translate(exc) from exc

    async def fast_call(self, key: str, *args: Any) -> Any:
        """One non-blocking command about `key` on the hot-path client (pipelined with the
        scripts; routed by the key's slot on a cluster); errors translated."""
        if self.server is None:
            await self.ensure_supported()
        fast = self.fast
        try:
            if isinstance(fast, ClusterRespClient):
                return await fast.execute_keyed(key, *args)
            return await fast.execute(*args)
        except Exception as exc:
            raise translate(exc) from exc

    async def call(self, *args: Any) -> Any:
        """One raw command; errors translated (ServiceUnavailable / StoreError)."""
        if self.server is None:
            await self.ensure_supported()
        try:
            return await self.client.execute_command(*args)
        except Exception as exc:
            raise translate(exc) from exc

    async def each(self, command: str, keys: Sequence[str], *args: Any) -> list[Any]:
        """`command key *args` for every key in one pipeline, not a transaction (split per
        node on a cluster); the replies in order; errors translated."""
        if not keys:
            return []
        pipe = self.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command(command, key, *args)
        return list(await self.guard(pipe.execute()))

    def pipeline(self, transaction: bool = True) -> Pipeline | ClusterPipeline:
        """A pipeline on the shared client (the caller translates errors with `guard`); on a
        cluster a transaction's keys must share one slot."""
        return self.client.pipeline(transaction=transaction)

    async def guard(self, pending: Awaitable[T]) -> T:
        """Await a pipeline or command; errors translated (ServiceUnavailable / StoreError)."""
        if self.server is None:
            try:
                await self.ensure_supported()
            except BaseException:
                if inspect.iscoroutine(pending):
                    pending.close()  # never run a command on a server that failed the check
                raise
        try:
            return await pending
        except Exception as exc:
            raise translate(exc) from exc

    async def close(self) -> None:
        """Close the connections."""
        self.fast.close()
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
