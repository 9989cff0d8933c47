"""The Redis adapter: errors translated, and recovery after Redis restarts."""

from __future__ import annotations

import pytest

from common.errors import ServiceUnavailable
from common.redis import RedisStore
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
