"""Telemetry: per-process counting, the flush to one Redis hash, per-instance gauges with a TTL."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from common import logs, telemetry
from common.errors import ServiceUnavailable
from common.redis import RedisStore
from common.settings import Settings
from common.telemetry import BUCKETS, COUNTERS, GAUGE_PREFIX, Telemetry, field, parse_field

INVOKE = "/api/v1/llm/invoke"


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[RedisStore]:
    """A Redis client on the (flushed) test database."""
    store = RedisStore(settings)
    yield store
    await store.close()


@pytest.fixture
async def make(redis: RedisStore) -> AsyncIterator[Callable[..., Telemetry]]:
    """Build Telemetry instances over the test Redis (closed after the test)."""
    built: list[Telemetry] = []

    def build(enabled: bool = True, **kwargs: Any) -> Telemetry:
        item = Telemetry(lambda: redis, enabled=enabled, **kwargs)
        built.append(item)
        return item

    yield build
    for item in built:
        await item.aclose()


async def counters(redis: RedisStore) -> dict[str, int]:
    """The shared counters hash, decoded."""
    raw = await redis.call("HGETALL", COUNTERS)
    return {k.decode(): int(v) for k, v in raw.items()}


def test_fields_round_trip_and_clean_label_values() -> None:
    """A sample's hash field keeps label order; separators in values are neutralised and cut."""
    assert field("cache_hits_total") == "cache_hits_total"
    raw = field("x_total", model="a,b=c|d", kind="prompt")
    assert raw == "x_total|model=a_b_c_d,kind=prompt"
    assert parse_field(raw) == ("x_total", {"model": "a_b_c_d", "kind": "prompt"})
    assert parse_field(field("y", v="z" * 300)) == ("y", {"v": "z" * 100})


@pytest.mark.parametrize(
    ("method", "label"),
    [("GET", "GET"), ("POST", "POST"), ("HEAD", "HEAD"), ("BREW", "other"), ("get", "other")],
)
def test_methods_are_a_bounded_label(method: str, label: str) -> None:
    """Standard HTTP verbs are label values; anything a client invents becomes "other"."""
    assert telemetry.method_label(method) == label


async def test_a_request_counts_once_in_its_bucket(make: Callable[..., Telemetry]) -> None:
    """A request adds 1 to its status, 1 to the first bucket >= its duration, count and sum."""
    item = make()
    item.request_started()
    item.request_finished("POST", INVOKE, 200, 0.005)  # exactly on a bound: that bucket
    item.request_started()
    item.request_finished("POST", INVOKE, 502, 61.0)  # beyond the last bound: +Inf only
    item.request_started()
    item.request_finished("PROPFIND", "other", 405, 0.0001)
    labels = {"method": "POST", "endpoint": INVOKE}
    expected = {
        field("requests_total", **labels, status="200"): 1,
        field("requests_total", **labels, status="502"): 1,
        field("request_duration_bucket", **labels, le="0.005"): 1,
        field("request_duration_count", **labels): 2,
        field("request_duration_sum_us", **labels): 61_005_000,
        field("requests_total", method="other", endpoint="other", status="405"): 1,
        field("request_duration_bucket", method="other", endpoint="other", le="0.001"): 1,
        field("request_duration_count", method="other", endpoint="other"): 1,
        field("request_duration_sum_us", method="other", endpoint="other"): 100,
    }
    assert dict(item._pending) == expected
    assert item.active == 0


async def test_flushes_from_two_instances_add_up(
    make: Callable[..., Telemetry], redis: RedisStore
) -> None:
    """Two instances (two processes) flushing to Redis add up; a second flush adds nothing."""
    first, second = make(), make()
    for item, n in ((first, 3), (second, 2)):
        for _ in range(n):
            item.request_started()
            item.request_finished("POST", INVOKE, 200, 0.02)
        item.incr("upstream_retries_total", model="gpt-4.1-nano", reason="500")
    await first.flush()
    await second.flush()
    await first.flush()
    got = await counters(redis)
    labels = {"method": "POST", "endpoint": INVOKE}
    assert got == {
        field("requests_total", **labels, status="200"): 5,
        field("request_duration_bucket", **labels, le="0.025"): 5,
        field("request_duration_count", **labels): 5,
        field("request_duration_sum_us", **labels): 100_000,
        field("upstream_retries_total", model="gpt-4.1-nano", reason="500"): 2,
    }


async def test_a_failed_flush_keeps_its_counts(
    make: Callable[..., Telemetry], redis: RedisStore, settings: Settings
) -> None:
    """When Redis is unreachable the counts stay pending and reach Redis exactly once later."""
    dead = RedisStore(
        Settings(**{**settings.model_dump(), "redis_url": "redis://127.0.0.1:9/0"}), timeout=0.5
    )
    target = [dead]
    item = Telemetry(lambda: target[0], enabled=True)
    item.incr("cache_hits_total", 4)
    with pytest.raises(ServiceUnavailable):
        await item.flush()
    item.incr("cache_hits_total")
    target[0] = redis
    await item.flush()
    await item.flush()
    assert await counters(redis) == {"cache_hits_total": 5}
    await item.aclose()
    await dead.close()


async def test_disabled_telemetry_writes_nothing(
    make: Callable[..., Telemetry], redis: RedisStore
) -> None:
    """With METRICS_ENABLED=false nothing is counted, flushed or reported as a gauge."""
    item = make(enabled=False)
    item.incr("cache_hits_total")
    item.request_started()
    item.request_finished("GET", "/metrics", 200, 0.01)
    await item.flush()
    await item.aclose()
    assert dict(item._pending) == {}
    assert await redis.call("DBSIZE") == 0


async def test_gauges_are_per_instance_with_a_ttl(
    make: Callable[..., Telemetry], redis: RedisStore
) -> None:
    """Each instance writes its live figures under its own key, expiring unless refreshed."""
    item = make(pool_stats=lambda: {"in_use": 2, "idle": 3, "max": 30, "size": 5})
    item.request_started()
    item.request_started()
    item.request_finished("GET", "/live", 200, 0.001)
    await item.flush()
    key = GAUGE_PREFIX + item.instance
    assert await redis.call("HGETALL", key) == {
        b"active_connections": b"1",
        b"db_in_use": b"2",
        b"db_idle": b"3",
        b"db_max": b"30",
    }
    assert 0 < await redis.call("TTL", key) <= telemetry.GAUGE_TTL
    seen_ms = float(await redis.call("ZSCORE", telemetry.INSTANCES, item.instance))
    assert abs(seen_ms - time.time() * 1000) < 5_000
    other = make()
    assert other.instance != item.instance


async def test_closing_flushes_and_withdraws_the_gauges(
    make: Callable[..., Telemetry], redis: RedisStore
) -> None:
    """A stopping instance flushes what it counted and removes its gauges at once."""
    item = make()
    item.incr("cache_hits_total", 2)
    await item.flush()
    item.incr("cache_hits_total")
    await item.aclose()
    assert await counters(redis) == {"cache_hits_total": 3}
    assert await redis.call("EXISTS", GAUGE_PREFIX + item.instance) == 0
    assert await redis.call("ZSCORE", telemetry.INSTANCES, item.instance) is None


async def test_the_background_loop_flushes_every_second(
    make: Callable[..., Telemetry], redis: RedisStore
) -> None:
    """Counting starts a loop that reaches Redis within about a second, without a flush call."""
    item = make()
    for expected in (1, 2):  # the loop keeps running after its first flush
        item.incr("pii_detections_total", action="block")
        started = time.monotonic()
        while time.monotonic() - started < 5:
            if (await counters(redis)).get("pii_detections_total|action=block") == expected:
                break
            await asyncio.sleep(0.05)
        assert await counters(redis) == {"pii_detections_total|action=block": expected}
        assert time.monotonic() - started < telemetry.FLUSH_SECONDS + 1.0


def test_buckets_are_sorted_and_distinct() -> None:
    """Histogram bounds increase strictly (the bucket search stops at the first bound hit)."""
    assert list(BUCKETS) == sorted(set(BUCKETS))


async def test_the_flush_loop_does_not_inherit_a_request_id(settings: Settings) -> None:
    """The loop started during a request logs its failures without that request's id."""
    logger = logs.get_logger()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    dead = RedisStore(
        Settings(**{**settings.model_dump(), "redis_url": "redis://127.0.0.1:9/0"}), timeout=0.2
    )
    item = Telemetry(lambda: dead, enabled=True)
    token = logs.request_id_var.set("req_20250101_000000_000000000000")
    try:
        item.incr("cache_hits_total")
    finally:
        logs.request_id_var.reset(token)
    try:
        for _ in range(60):
            if buffer.getvalue():
                break
            await asyncio.sleep(0.05)
    finally:
        await item.aclose()
        await dead.close()
        handler.setStream(previous)
    line = json.loads(buffer.getvalue().splitlines()[0])
    assert (line["level"], line["message"], line["extra"]) == (
        "WARNING",
        "metrics flush failed; will retry",
        {},
    )
