"""Prometheus exposition of the broker-wide figures kept in Redis (see common.telemetry).

`snapshot()` reads counters, per-instance gauges and budgets in one pass; `render()` turns
the snapshot into Prometheus text through a one-off registry and custom collector, so one
scrape of any metrics instance shows the whole broker.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from common import keyspace
from common.quota import budget_keys, from_nano
from common.redis import RedisStore
from common.telemetry import BUCKETS, COUNTERS, GAUGE_TTL, HISTOGRAMS, INSTANCES, parse_field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# counter name in Redis -> (exposed name, help, label names)
SIMPLE_COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "requests_total": (
        "bradax_requests",
        "HTTP requests served, by method, endpoint and status.",
        ("method", "endpoint", "status"),
    ),
    "openai_requests_total": (
        "bradax_openai_requests",
        "Calls that reached an upstream, by model and outcome.",
        ("model", "status"),
    ),
    "openai_tokens_total": (
        "bradax_openai_tokens",
        "Tokens metered, by model and kind (prompt, completion).",
        ("model", "kind"),
    ),
    "rate_limit_denials_total": (
        "bradax_rate_limit_denials",
        "Calls refused by a rate limit, by limit.",
        ("limit",),
    ),
    "budget_denials_total": (
        "bradax_budget_denials",
        "Calls refused because the monthly budget could not cover them.",
        ("project",),
    ),
    "upstream_retries_total": (
        "bradax_upstream_retries",
        "Upstream attempts retried, by model and reason.",
        ("model", "reason"),
    ),
    "budget_soft_threshold_total": (
        "bradax_budget_soft_threshold_crossings",
        "Projects crossing their soft budget threshold (once a month each).",
        ("project",),
    ),
    "pii_detections_total": (
        "bradax_pii_detections",
        "Prompts and answers with personal data, by action (block, redact, output_block, "
        "output_redact).",
        ("action",),
    ),
    "cache_hits_total": ("bradax_cache_hits", "Answers served from the response cache.", ()),
    "usage_unverified_total": (
        "bradax_usage_unverified",
        "Calls charged at their bound because the upstream's usage was missing or not "
        "plausible, by model and reason.",
        ("model", "reason"),
    ),
    "ledger_reconciled_total": (
        "bradax_ledger_reconciled",
        "Calls settled at their bound by the reconciler (their instance stopped first).",
        ("model",),
    ),
    "trace_spans_dropped_total": (
        "bradax_trace_spans_dropped",
        "Spans never delivered to the trace collector, by reason (queue_full, export_failed).",
        ("reason",),
    ),
    "ledger_dead_letters_total": (
        "bradax_ledger_dead_letters",
        "Ledger records PostgreSQL refused, kept in ledger_dead_letters.",
        (),
    ),
}


# The GenAI semantic conventions' attributes, as Prometheus labels (dots become underscores).
_GENAI: tuple[str, ...] = ("gen_ai_operation_name", "gen_ai_provider_name")
_GENAI += ("gen_ai_request_model", "gen_ai_response_model")
# histogram in Redis -> (exposed name, help, label names); see common.telemetry.HISTOGRAMS
OBSERVED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "genai_token_usage": (
        "gen_ai_client_token_usage",
        "Tokens per upstream call, by token type (input, output): gen_ai.client.token.usage.",
        (*_GENAI, "gen_ai_token_type"),
    ),
    "genai_operation_duration": (
        "gen_ai_client_operation_duration_seconds",
        "Duration of upstream calls (to the first byte for streams), with error.type when "
        "one failed: gen_ai.client.operation.duration.",
        (*_GENAI, "error_type"),
    ),
    "genai_time_to_first_token": (
        "gen_ai_server_time_to_first_token_seconds",
        "Time from a streamed request's arrival to its first relayed event: "
        "gen_ai.server.time_to_first_token.",
        _GENAI,
    ),
    "overhead": (
        "bradax_overhead_seconds",
        "Time the broker spent on a call outside the upstream call (to the first byte for "
        "streams), by API face; what X-Bradax-Overhead-Ms reports.",
        ("api",),
    ),
}


@dataclass
class Snapshot:
    """Everything one scrape shows."""

    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)
    instances: int = 0
    budgets: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    ledger_pending: int = 0


async def snapshot(redis: RedisStore, budgets: dict[str, tuple[Decimal, Decimal]]) -> Snapshot:
    """Read the counters and live instances' gauges from Redis: the instances registered
    in the registry zset that flushed within the gauges' TTL (older entries are pruned)."""
    raw = await redis.call("HGETALL", COUNTERS)
    counters = {k.decode(): int(v) for k, v in _pairs(raw)}
    oldest = int(time.time() * 1000) - GAUGE_TTL * 1000
    await redis.call("ZREMRANGEBYSCORE", INSTANCES, "-inf", f"({oldest}")
    live = await redis.call("ZRANGE", INSTANCES, 0, -1)
    keys = [keyspace.gauge(name.decode()) for name in live]
    gauges: dict[str, int] = defaultdict(int)
    instances = 0
    if keys:
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        for values in await redis.guard(pipe.execute()):
            if values:  # its gauges expired: not live
                instances += 1
                for name, value in _pairs(values):
                    gauges[name.decode()] += int(value)
    return Snapshot(counters, dict(gauges), instances, budgets, await pending_records(redis))


async def pending_records(redis: RedisStore) -> int:
    """Usage records settled in Redis and not yet written to PostgreSQL.

    The drainer deletes an entry from a project's ledger stream once its row is committed,
    so the streams' lengths are the backlog.
    """
    projects = await redis.call("SMEMBERS", keyspace.PROJECTS)
    streams = [keyspace.ledger_stream(project.decode()) for project in projects]
    return sum(int(n) for n in await redis.each("XLEN", streams))


async def live_budgets(
    redis: RedisStore, project_ids: list[str], month: str
) -> dict[str, tuple[Decimal, Decimal]]:
    """Redis' (spent, reserved) USD of each project's month, for projects Redis holds."""
    if not project_ids:
        return {}
    pipe = redis.pipeline(transaction=False)
    for project_id in project_ids:
        pipe.hmget(budget_keys(project_id, month)[0], "spent", "reserved")
    found: dict[str, tuple[Decimal, Decimal]] = {}
    for project_id, (spent, reserved) in zip(
        project_ids, await redis.guard(pipe.execute()), strict=True
    ):
        if spent is not None:
            found[project_id] = (from_nano(int(spent)), from_nano(int(reserved or 0)))
    return found


def _pairs(raw: object) -> Iterator[tuple[bytes, bytes]]:
    if isinstance(raw, dict):
        yield from raw.items()
        return
    assert isinstance(raw, list)
    it = iter(raw)
    yield from zip(it, it, strict=True)


class SnapshotCollector(Collector):
    """A prometheus_client collector over one Snapshot."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        by_name: dict[str, list[tuple[dict[str, str], int]]] = defaultdict(list)
        for raw, value in self.snap.counters.items():
            name, labels = parse_field(raw)
            by_name[name].append((labels, value))
        for key, (exposed, text, label_names) in SIMPLE_COUNTERS.items():
            family = CounterMetricFamily(exposed, text, labels=list(label_names))
            for labels, value in by_name.get(key, []):
                family.add_metric([labels.get(n, "") for n in label_names], value)
            yield family
        cost = CounterMetricFamily(
            "bradax_openai_cost_usd", "Upstream spend in USD, by model.", labels=["model"]
        )
        for labels, value in by_name.get("openai_cost_nano_total", []):
            cost.add_metric([labels.get("model", "")], float(from_nano(value)))
        yield cost
        yield self._histogram(by_name)
        for key, (exposed, text, label_names) in OBSERVED.items():
            yield self._observed(by_name, key, exposed, text, label_names)
        gauges = self.snap.gauges
        active = GaugeMetricFamily(
            "bradax_active_connections", "Requests in flight across all instances."
        )
        active.add_metric([], gauges.get("active_connections", 0))
        yield active
        db = GaugeMetricFamily(
            "bradax_database_connections",
            "PostgreSQL pool connections across all instances, by state.",
            labels=["state"],
        )
        db.add_metric(["in_use"], gauges.get("db_in_use", 0))
        db.add_metric(["idle"], gauges.get("db_idle", 0))
        yield db
        # Capacity is not a state: summing the states above must give the open connections.
        db_max = GaugeMetricFamily(
            "bradax_database_connections_max",
            "PostgreSQL pool capacity (pool size + overflow) across all instances.",
        )
        db_max.add_metric([], gauges.get("db_max", 0))
        yield db_max
        instances = GaugeMetricFamily("bradax_instances", "Function instances reporting.")
        instances.add_metric([], self.snap.instances)
        yield instances
        pending = GaugeMetricFamily(
            "bradax_ledger_pending_records", "Usage records not yet copied to PostgreSQL."
        )
        pending.add_metric([], self.snap.ledger_pending)
        yield pending
        remaining = GaugeMetricFamily(
            "bradax_budget_remaining_usd",
            "What is left of each project's monthly budget (USD).",
            labels=["project"],
        )
        limit = GaugeMetricFamily(
            "bradax_budget_monthly_usd", "Each project's monthly budget (USD).", labels=["project"]
        )
        for project, (budget, left) in sorted(self.snap.budgets.items()):
            remaining.add_metric([project], float(left))
            limit.add_metric([project], float(budget))
        yield remaining
        yield limit

    def _histogram(self, by_name: dict[str, list[tuple[dict[str, str], int]]]) -> Metric:
        family = HistogramMetricFamily(
            "bradax_request_duration_seconds",
            "Time to serve a request (to the first byte for streams).",
            labels=["method", "endpoint"],
        )
        buckets: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for labels, value in by_name.get("request_duration_bucket", []):
            buckets[(labels["method"], labels["endpoint"])][labels["le"]] = value
        counts = {
            (labels["method"], labels["endpoint"]): value
            for labels, value in by_name.get("request_duration_count", [])
        }
        sums = {
            (labels["method"], labels["endpoint"]): value
            for labels, value in by_name.get("request_duration_sum_us", [])
        }
        for key, count in sorted(counts.items()):
            running = 0
            series: list[tuple[str, float]] = []
            for bound in BUCKETS:
                running += buckets[key].get(repr(bound), 0)
                series.append((repr(bound), running))
            series.append(("+Inf", count))
            family.add_metric(list(key), series, sums.get(key, 0) / 1_000_000)
        return family

    def _observed(
        self,
        by_name: dict[str, list[tuple[dict[str, str], int]]],
        key: str,
        exposed: str,
        text: str,
        label_names: tuple[str, ...],
    ) -> Metric:
        histogram = HISTOGRAMS[key]
        family = HistogramMetricFamily(exposed, text, labels=list(label_names))

        def series(labels: dict[str, str]) -> tuple[str, ...]:
            return tuple(labels.get(name, "") for name in label_names)

        buckets: dict[tuple[str, ...], dict[str, int]] = defaultdict(dict)
        for labels, value in by_name.get(f"{key}_bucket", []):
            buckets[series(labels)][labels.get("le", "")] = value
        counts = {series(labels): value for labels, value in by_name.get(f"{key}_count", [])}
        sums = {series(labels): value for labels, value in by_name.get(f"{key}_sum", [])}
        for labels_key, count in sorted(counts.items()):
            running = 0
            points: list[tuple[str, float]] = []
            for bound in histogram.buckets:
                running += buckets[labels_key].get(repr(bound), 0)
                points.append((repr(bound), running))
            points.append(("+Inf", count))
            family.add_metric(list(labels_key), points, sums.get(labels_key, 0) / histogram.scale)
        return family


def render(snap: Snapshot) -> bytes:
    """Prometheus text exposition of a snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)
