"""Broker-wide metrics: counted in-process, flushed to Redis each second, rendered by `metrics`.

Functions are many short-lived instances, so no instance's registry is the truth. Each
request increments plain integers in memory (no I/O on the hot path); a background task adds
them to one Redis hash (HINCRBY) every FLUSH_SECONDS and on shutdown. Gauges (live
connections, pool sizes) are written per instance with a short TTL and summed at scrape
time. Upstream figures (requests, cost, tokens by model) are counted exactly by the settle
script itself. Labels are bounded: method (unknown verbs become "other"), route template,
status, model alias, kind; never request ids or client text.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from common import keyspace
from common.background import stop_task
from common.logs import get_logger
from common.redis import RedisStore

COUNTERS = keyspace.METRICS_COUNTERS
GAUGE_PREFIX = keyspace.GAUGE_PREFIX
GAUGE_TTL = 15
INSTANCES = keyspace.INSTANCES
FLUSH_SECONDS = 1.0
# Histogram buckets of bradax_request_duration_seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Buckets the GenAI semantic conventions advise for their histograms.
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**n) for n in range(14))  # 1 .. 67108864
DURATION_BUCKETS: tuple[float, ...] = tuple(0.01 * 2**n for n in range(14))  # 0.01 .. 81.92
TTFT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5)
TTFT_BUCKETS += (0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SEP = "|"
# HTTP verbs kept as label values; a client can send any token as a method.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def field(name: str, **labels: str) -> str:
    """The Redis hash field of a metric sample: name|k=v,k=v (label order as given)."""
    if not labels:
        return name
    return name + SEP + ",".join(f"{k}={_clean(v)}" for k, v in labels.items())


def parse_field(raw: str) -> tuple[str, dict[str, str]]:
    """Inverse of field()."""
    name, _, rest = raw.partition(SEP)
    labels: dict[str, str] = {}
    if rest:
        for pair in rest.split(","):
            key, _, value = pair.partition("=")
            labels[key] = value
    return name, labels


def method_label(method: str) -> str:
    """The method as a label value: a standard verb, else "other" (bounded cardinality)."""
    return method if method in METHODS else "other"


@lru_cache(maxsize=4096)
def _request_fields(method: str, route: str, status: int) -> tuple[str, list[str], str, str]:
    """The hash fields one request increments (labels are few: cache the strings)."""
    labels = {"method": method, "endpoint": route}
    return (
        field("requests_total", method=method, endpoint=route, status=str(status)),
        [field("request_duration_bucket", **labels, le=repr(bound)) for bound in BUCKETS],
        field("request_duration_count", **labels),
        field("request_duration_sum_us", **labels),
    )


@dataclass(frozen=True)
class Histogram:
    """A histogram kept as counters: one per bucket (not cumulative), a count and a sum
    stored as an integer of `scale` units (micro-seconds for durations)."""

    buckets: tuple[float, ...]
    scale: int


# Histograms observed with Telemetry.observe (rendered by common.prometheus).
HISTOGRAMS: dict[str, Histogram] = {
    "genai_token_usage": Histogram(TOKEN_BUCKETS, 1),
    "genai_operation_duration": Histogram(DURATION_BUCKETS, 1_000_000),
    "genai_time_to_first_token": Histogram(TTFT_BUCKETS, 1_000_000),
    "overhead": Histogram(BUCKETS, 1_000_000),
}


@lru_cache(maxsize=4096)
def _histogram_fields(name: str, labels: tuple[tuple[str, str], ...]) -> tuple[list[str], str, str]:
    """The bucket, count and sum fields of one histogram series (cached: labels are few)."""
    kept = dict(labels)
    return (
        [field(f"{name}_bucket", **kept, le=repr(b)) for b in HISTOGRAMS[name].buckets],
        field(f"{name}_count", **kept),
        field(f"{name}_sum", **kept),
    )


def _clean(value: str) -> str:
    return value.replace(",", "_").replace("=", "_").replace(SEP, "_")[:100]


class Telemetry:
    """In-process accumulation with a periodic flush to Redis (no-op when disabled)."""

    def __init__(
        self,
        redis_factory: Callable[[], RedisStore],
        *,
        enabled: bool,
        pool_stats: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.enabled = enabled
        self._redis_factory = redis_factory
        self._pool_stats = pool_stats
        self._pending: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self.active = 0
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"

    def incr(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add to a counter."""
        if self.enabled:
            self._pending[field(name, **labels)] += amount
            self._ensure_task()

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Add one observation to a histogram of HISTOGRAMS."""
        if not self.enabled:
            return
        histogram = HISTOGRAMS[name]
        buckets, count, total = _histogram_fields(name, tuple(labels.items()))
        pending = self._pending
        for bound, bucket in zip(histogram.buckets, buckets, strict=True):
            if value <= bound:
                pending[bucket] += 1
                break
        pending[count] += 1
        pending[total] += int(max(0.0, value) * histogram.scale)
        self._ensure_task()

    def add(self, fields: Mapping[str, int]) -> None:
        """Add to several counters, named by `field` (a settled call's figures)."""
        if self.enabled and fields:
            self._pending.update(fields)
            self._ensure_task()

    def request_started(self) -> None:
        """A request entered the process."""
        self.active += 1

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a finished request and its duration."""
        self.active -= 1
        if not self.enabled:
            return
        pending = self._pending
        total, buckets, count, micros = _request_fields(method_label(method), route, status)
        pending[total] += 1
        for bound, name in zip(BUCKETS, buckets, strict=True):
            if seconds <= bound:
                pending[name] += 1
                break
        pending[count] += 1
        pending[micros] += int(seconds * 1_000_000)
        self._ensure_task()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._task = None
                return
            # A fresh context: the loop outlives the request that started it, whose request id
            # must not label the loop's log lines.
            self._task = loop.create_task(self._loop(), context=contextvars.Context())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                get_logger().warning("metrics flush failed; will retry", exc_info=False)

    async def flush(self) -> None:
        """Send what was counted since the last flush, and this instance's gauges."""
        if not self.enabled:
            return
        pending, self._pending = self._pending, Counter()
        redis = self._redis_factory()
        # MULTI/EXEC: a failed flush applied nothing, so re-adding its counts cannot double them.
        pipe = redis.pipeline(transaction=True)
        for name, amount in pending.items():
            pipe.hincrby(COUNTERS, name, amount)
        gauge_key = self.gauge_key
        gauges: dict[Any, Any] = {"active_connections": self.active}
        if self._pool_stats is not None:
            stats = self._pool_stats()
            gauges["db_in_use"] = stats.get("in_use", 0)
            gauges["db_idle"] = stats.get("idle", 0)
            gauges["db_max"] = stats.get("max", 0)
        # On a cluster the gauges are in other slots than the counters: a pipeline of their own.
        live = redis.pipeline(transaction=False) if redis.cluster else pipe
        live.hset(gauge_key, mapping=gauges)
        live.expire(gauge_key, GAUGE_TTL)
        # The registry of live instances: a scrape reads it instead of scanning the keyspace.
        live.zadd(INSTANCES, {self.instance: int(time.time() * 1000)})
        try:
            await redis.guard(pipe.execute())
        except Exception:
            self._pending.update(pending)  # keep the counts for the next flush
            raise
        if live is not pipe:
            await redis.guard(live.execute())

    async def aclose(self) -> None:
        """Stop the flush loop, flush a last time and withdraw this instance's gauges."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        if not self.enabled:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 2.0)
            # A stopped instance holds no connections: do not let its gauges linger for the TTL.
            redis = self._redis_factory()
            await asyncio.wait_for(redis.call("DEL", self.gauge_key), 2.0)
            await asyncio.wait_for(redis.call("ZREM", INSTANCES, self.instance), 2.0)

    @property
    def gauge_key(self) -> str:
        """The Redis hash holding this instance's gauges."""
        return keyspace.gauge(self.instance)
