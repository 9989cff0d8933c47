"""The Redis adapter: the server contract, errors translated, recovery after restarts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from common.errors import ServiceUnavailable, StoreError, StoreUnsupported
from common.health import check_redis
from common.redis import RedisStore, check_contract
from tests.conftest import OwnRedis, make_settings


async def test_pooled_connections_survive_a_redis_restart(own_redis: OwnRedis) -> None:
    """After Redis restarts, the next command on a stale pooled connection still succeeds."""
    store = RedisStore(
        make_settings("postgresql://u@127.0.0.1:9/x", f"redis://127.0.0.1:{own_redis.port}/0")
    )
    try:
        assert await store.call("SET", "k", "1")
        own_redis.kill()
        own_redis.start()
        assert await store.call("GET", "k") is None  # a fresh, empty Redis answered
        assert await store.run("rebuild.lua", ["bx:b:p:202601", "bx:borph:p:202601"], [5, 60]) == 5
    finally:
        await store.close()


async def test_unreachable_redis_is_service_unavailable(own_redis: OwnRedis) -> None:
    """With Redis gone, both command paths raise ServiceUnavailable (503), nothing else."""
    store = RedisStore(
        make_settings("postgresql://u@127.0.0.1:9/x", f"redis://127.0.0.1:{own_redis.port}/0"),
        timeout=1.0,
    )
    own_redis.kill()
    try:
        with pytest.raises(ServiceUnavailable):
            await store.call("GET", "k")
        with pytest.raises(ServiceUnavailable):
            await store.run("rebuild.lua", ["a", "b"], [0, 60])
    finally:
        await store.close()


def _store(server: OwnRedis) -> RedisStore:
    url = f"redis://127.0.0.1:{server.port}/0"
    return RedisStore(make_settings("postgresql://u@127.0.0.1:9/x", url), timeout=2.0)


def _every_command_path(store: RedisStore) -> list[Callable[[], Awaitable[Any]]]:
    return [
        lambda: store.call("SET", "k", "1"),
        lambda: store.run("rebuild.lua", ["a", "b"], [0, 60]),
        lambda: store.guard(store.pipeline().set("k", "1").execute()),
    ]


REDIS_62_INFO = (
    "# Server\r\nredis_version:6.2.14\r\nredis_mode:standalone\r\n"
    "# Memory\r\nmaxmemory_policy:noeviction\r\n"
)


def test_contract_refuses_servers_below_redis_7() -> None:
    """A Redis 6.2 server is refused with one line naming the version and the minimum."""
    with pytest.raises(StoreUnsupported) as caught:
        check_contract(REDIS_62_INFO)
    assert caught.value.message == (
        "Redis 6.2.14 is not supported: bradax needs Redis 7.0+ or Valkey 7.2+ (REDIS_URL)"
    )
    assert check_contract(REDIS_62_INFO.replace("6.2.14", "7.0.15")) == "Redis 7.0.15"
    valkey = "redis_version:7.2.4\r\nvalkey_version:8.1.0\r\nmaxmemory_policy:noeviction\r\n"
    assert check_contract(valkey) == "Valkey 8.1.0"


@pytest.mark.parametrize(
    "policy", ["allkeys-lru", "volatile-lfu", "allkeys-random", "volatile-ttl"]
)
def test_contract_refuses_evicting_policies(policy: str) -> None:
    """Any maxmemory-policy but noeviction could evict money state: refused, naming the fix."""
    with pytest.raises(StoreUnsupported, match=f"maxmemory-policy {policy}.*noeviction"):
        check_contract(REDIS_62_INFO.replace("6.2.14", "7.2.0").replace("noeviction", policy))


async def test_evicting_server_refuses_every_command(tmp_path: Path) -> None:
    """A real server with allkeys-lru: every command path fails with the contract's line
    (503), no command runs on it, and /ready-style health says why."""
    server = OwnRedis(tmp_path, "--maxmemory-policy", "allkeys-lru")
    server.start()
    store = _store(server)
    try:
        for attempt in _every_command_path(store):
            with pytest.raises(StoreUnsupported, match="allkeys-lru"):
                await attempt()
        check = await check_redis(store, 2.0)
        assert check.status == "unhealthy"
        assert "maxmemory-policy allkeys-lru" in str(check.error)
        assert sync_redis.Redis(port=server.port).get("k") is None
    finally:
        await store.close()
        server.kill()


async def test_replica_readonly_is_service_unavailable(tmp_path: Path, own_redis: OwnRedis) -> None:
    """Writes to a read-only replica are a 503 with Retry-After, not a 500."""
    replica = OwnRedis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(own_redis.port))
    (tmp_path / "replica").mkdir()
    replica.start()
    store = _store(replica)
    try:
        for attempt in _every_command_path(store):
            with pytest.raises(ServiceUnavailable) as caught:
                await attempt()
            assert "READONLY" in caught.value.message
            assert caught.value.headers["Retry-After"] == "1"
    finally:
        await store.close()
        replica.kill()


async def test_out_of_memory_is_service_unavailable(tmp_path: Path) -> None:
    """A full noeviction server refuses writes with OOM: a 503, and reads still work."""
    server = OwnRedis(tmp_path, "--maxmemory", "2mb")
    server.start()
    store = _store(server)
    try:
        refused: ServiceUnavailable | None = None
        for i in range(10_000):
            try:
                await store.call("SET", f"filler:{i}", "x" * 1024)
            except ServiceUnavailable as exc:
                refused = exc
                break
        assert refused is not None
        assert "OOM" in refused.message
        assert await store.call("GET", "filler:0") == b"x" * 1024
    finally:
        await store.close()
        server.kill()


async def test_other_error_replies_are_a_typed_store_error(own_redis: OwnRedis) -> None:
    """A reply that retrying cannot fix (WRONGTYPE) is a StoreError carrying the reply,
    answered as a generic 500 that does not echo Redis' text."""
    store = _store(own_redis)
    try:
        await store.call("SET", "k", "1")
        with pytest.raises(StoreError) as caught:
            await store.call("HGET", "k", "f")
        assert caught.value.reply.startswith("WRONGTYPE")
        assert caught.value.status == 500
        assert "WRONGTYPE" not in caught.value.message
    finally:
        await store.close()
