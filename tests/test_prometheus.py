"""GET /prometheus: broker-wide figures from Redis, rendered for a real Prometheus to scrape.

The exact-count test drives two llm_invoke processes and scrapes a third (metrics) process,
parsing the text with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bradax_cli.routes import REPO_ROOT, RouteTable
from common import deps, keyspace, prometheus, services
from common.prometheus import Snapshot
from common.quota import budget_month
from common.redis import RedisStore
from common.settings import Settings
from common.telemetry import (
    BUCKETS,
    COUNTERS,
    GAUGE_PREFIX,
    GAUGE_TTL,
    HISTOGRAMS,
    INSTANCES,
    METHODS,
)
from tests.conftest import (
    MockUpstream,
    Process,
    Tenant,
    create_tenant,
    ledger_rows,
    login,
    serve_function,
)

INVOKE = "/api/v1/llm/invoke"
MESSAGES = [{"role": "user", "content": "Explique seguros de vida"}]  # 11 prompt tokens
PROMPT_WORD = "zanzibarquokka"
# The spec's metric names, as exposed (counters carry _total).
SPEC_METRICS = {
    "bradax_requests_total": ("counter", {"method", "endpoint", "status"}),
    "bradax_request_duration_seconds": ("histogram", {"method", "endpoint"}),
    "bradax_openai_requests_total": ("counter", {"model", "status"}),
    "bradax_openai_cost_usd_total": ("counter", {"model"}),
    "bradax_active_connections": ("gauge", set()),
    "bradax_database_connections": ("gauge", {"state"}),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples keyed by (name, labels) and each family's type, via prometheus_client's parser."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples, types


def s(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    """A sample key."""
    return name, frozenset(labels.items())


def pick(samples: Samples, prefixes: Iterable[str]) -> Samples:
    """The samples whose name starts with one of the prefixes."""
    return {k: v for k, v in samples.items() if k[0].startswith(tuple(prefixes))}


def usd(nano: int) -> float:
    """Nano-dollars as the float a scrape shows."""
    return float(Decimal(nano) / Decimal(1_000_000_000))


# -- rendering ---------------------------------------------------------------------------------


def test_render_is_valid_prometheus_text_with_the_spec_names() -> None:
    """A snapshot renders to text the parser reads back exactly, under the spec's names."""
    snap = Snapshot(
        counters={
            "requests_total|method=POST,endpoint=/api/v1/llm/invoke,status=200": 3,
            "requests_total|method=GET,endpoint=other,status=404": 1,
            "request_duration_bucket|method=POST,endpoint=/api/v1/llm/invoke,le=0.005": 1,
            "request_duration_bucket|method=POST,endpoint=/api/v1/llm/invoke,le=0.25": 2,
            "request_duration_count|method=POST,endpoint=/api/v1/llm/invoke": 4,
            "request_duration_sum_us|method=POST,endpoint=/api/v1/llm/invoke": 75_123_456,
            "openai_requests_total|model=gpt-4.1-nano,status=success": 3,
            "openai_cost_nano_total|model=gpt-4.1-nano": 9300,
            "openai_tokens_total|model=gpt-4.1-nano,kind=prompt": 33,
            "rate_limit_denials_total|limit=max_requests_per_hour": 2,
            "budget_denials_total|project=proj_b": 1,
            "upstream_retries_total|model=gpt-4.1-nano,reason=500": 4,
            "cache_hits_total": 6,
        },
        gauges={"active_connections": 2, "db_in_use": 1, "db_idle": 4, "db_max": 60},
        instances=2,
        budgets={"proj_a": (Decimal("100"), Decimal("99.9999907"))},
        ledger_pending=5,
    )
    text = prometheus.render(snap).decode()
    samples, types = parse(text)
    for name, (kind, labels) in SPEC_METRICS.items():
        base = name.removesuffix("_total")
        assert types[base] == kind, name
        assert f"# TYPE {name} {kind}" in text
        names = {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        found = {frozenset(dict(k[1]).keys()) - {"le"} for k in samples if k[0] in names}
        assert found <= {frozenset(labels)}, name
    bucket = "bradax_request_duration_seconds_bucket"
    cumulative = [
        samples[s(bucket, method="POST", endpoint=INVOKE, le=le)]
        for le in [*(repr(b) for b in BUCKETS), "+Inf"]
    ]
    assert cumulative == [0, 0, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3, 4]
    assert samples == {
        s("bradax_requests_total", method="POST", endpoint=INVOKE, status="200"): 3,
        s("bradax_requests_total", method="GET", endpoint="other", status="404"): 1,
        **{
            s(bucket, method="POST", endpoint=INVOKE, le=le): value
            for le, value in zip([*(repr(b) for b in BUCKETS), "+Inf"], cumulative, strict=True)
        },
        s("bradax_request_duration_seconds_count", method="POST", endpoint=INVOKE): 4,
        s("bradax_request_duration_seconds_sum", method="POST", endpoint=INVOKE): 75.123456,
        s("bradax_openai_requests_total", model="gpt-4.1-nano", status="success"): 3,
        s("bradax_openai_cost_usd_total", model="gpt-4.1-nano"): 9.3e-06,
        s("bradax_openai_tokens_total", model="gpt-4.1-nano", kind="prompt"): 33,
        s("bradax_rate_limit_denials_total", limit="max_requests_per_hour"): 2,
        s("bradax_budget_denials_total", project="proj_b"): 1,
        s("bradax_upstream_retries_total", model="gpt-4.1-nano", reason="500"): 4,
        s("bradax_cache_hits_total"): 6,
        s("bradax_active_connections"): 2,
        s("bradax_database_connections", state="in_use"): 1,
        s("bradax_database_connections", state="idle"): 4,
        s("bradax_database_connections_max"): 60,
        s("bradax_instances"): 2,
        s("bradax_ledger_pending_records"): 5,
        s("bradax_budget_remaining_usd", project="proj_a"): 99.9999907,
        s("bradax_budget_monthly_usd", project="proj_a"): 100,
    }


def test_an_empty_snapshot_still_declares_every_family() -> None:
    """Before any traffic every counter family is declared (dashboards find them) with no sample."""
    samples, types = parse(prometheus.render(Snapshot()).decode())
    for name in ("requests", "openai_requests", "openai_cost_usd", "openai_tokens"):
        assert types[f"bradax_{name}"] == "counter"
    assert types["bradax_request_duration_seconds"] == "histogram"
    assert samples == {
        s("bradax_active_connections"): 0,
        s("bradax_database_connections", state="in_use"): 0,
        s("bradax_database_connections", state="idle"): 0,
        s("bradax_database_connections_max"): 0,
        s("bradax_instances"): 0,
        s("bradax_ledger_pending_records"): 0,
    }


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[RedisStore]:
    """A Redis client on the (flushed) test database."""
    store = RedisStore(settings)
    yield store
    await store.close()


async def test_snapshot_sums_live_instances_only(redis: RedisStore) -> None:
    """Gauges are summed over the registered instances whose key is alive; an expired
    instance or one that stopped flushing drops out (and out of the registry)."""
    now_ms = int(time.time() * 1000)
    await redis.call("HSET", COUNTERS, "cache_hits_total", 7)
    for name, active, idle in (("a", 2, 3), ("b", 1, 1), ("gone", 50, 50), ("stale", 9, 9)):
        await redis.call("HSET", GAUGE_PREFIX + name, "active_connections", active, "db_idle", idle)
    await redis.call("HSET", GAUGE_PREFIX + "unlisted", "active_connections", 70)
    await redis.call("PEXPIRE", GAUGE_PREFIX + "gone", 50)
    stale_ms = now_ms - (GAUGE_TTL + 5) * 1000
    await redis.call("ZADD", INSTANCES, now_ms, "a", now_ms, "b", now_ms, "gone", stale_ms, "stale")
    await redis.call("SADD", keyspace.PROJECTS, "proj_a")
    await redis.call("XADD", keyspace.ledger_stream("proj_a"), "*", "r", "x")
    await asyncio.sleep(0.1)
    snap = await prometheus.snapshot(redis, {})
    assert snap == Snapshot(
        {"cache_hits_total": 7}, {"active_connections": 3, "db_idle": 4}, 2, {}, 1
    )
    assert await redis.call("ZRANGE", INSTANCES, 0, -1) == [b"a", b"b", b"gone"]


async def test_live_budgets_reads_redis_figures(redis: RedisStore) -> None:
    """Redis' spent and reserved nano-dollars come back in USD; unknown projects are absent."""
    month = "202507"
    await redis.call("HSET", f"bx:b:{{proj_a}}:{month}", "spent", 1_500, "reserved", 250)
    await redis.call("HSET", f"bx:b:{{proj_b}}:{month}", "spent", 0)
    assert await prometheus.live_budgets(redis, ["proj_a", "proj_b", "proj_c"], month) == {
        "proj_a": (Decimal("0.0000015"), Decimal("0.00000025")),
        "proj_b": (Decimal(0), Decimal(0)),
    }
    assert await prometheus.live_budgets(redis, [], month) == {}


# -- the broker, end to end --------------------------------------------------------------------


async def token(settings: Settings, tenant: Tenant) -> Tenant:
    """Give the tenant an access token without going through HTTP (no request is counted)."""
    pair = await services.sessions.get().login(tenant.project_id, tenant.api_key, datetime.now(UTC))
    tenant.access_token = pair.access_token
    return tenant


async def scrape_until(url: str, wanted: Samples, timeout: float = 10.0) -> Samples:
    """Scrape until every wanted sample has its value (counters flush each second)."""
    deadline = time.monotonic() + timeout
    async with httpx2.AsyncClient(timeout=10) as http:
        while True:
            reply = await http.get(url + "/prometheus")
            assert reply.status_code == 200
            assert reply.headers["content-type"] == prometheus.CONTENT_TYPE
            samples, _ = parse(reply.text)
            if all(samples.get(k) == v for k, v in wanted.items()):
                return samples
            if time.monotonic() > deadline:
                return samples
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_two_invoke_processes_one_scrape_exact_counts(
    settings: Settings, configure: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    """Calls through two llm_invoke processes show up exactly in one metrics process' scrape."""
    current = configure(openai_api_key="sk-test-openai", openai_base_url=mock.url)
    procs: list[Process] = list(
        await asyncio.gather(
            asyncio.to_thread(
                serve_function,
                "llm_invoke",
                current,
                "/v1/models",
                tmp_path,
                OPENAI_MAX_RETRIES="1",
            ),
            asyncio.to_thread(serve_function, "llm_invoke", current, "/v1/models", tmp_path),
            asyncio.to_thread(serve_function, "metrics", current, "/prometheus", tmp_path),
        )
    )
    a, b, metrics = procs
    try:
        alpha = await token(current, await create_tenant(current, "proj_alpha"))
        limited = await token(
            current, await create_tenant(current, "proj_limited", max_requests_per_hour=1)
        )
        broke = await token(
            current, await create_tenant(current, "proj_broke", budget_monthly_usd="0")
        )

        async def call(proc: Process, tenant: Tenant, **body: Any) -> int:
            payload = {"model": "gpt-4.1-nano", "messages": MESSAGES, **body}
            async with httpx2.AsyncClient(timeout=30) as http:
                reply = await http.post(proc.url + INVOKE, json=payload, headers=tenant.auth)
            return reply.status_code

        five = {"parameters": {"max_tokens": 5}}
        statuses = [await call(a, alpha, **five) for _ in range(3)]
        statuses.append(await call(a, alpha, model="gpt-4.1"))
        statuses.append(await call(a, alpha, messages=None))
        mock.enqueue({"status": 500})
        statuses.append(await call(a, alpha, **five))  # retried once, then answered
        statuses += [await call(b, alpha, model="gpt-4.1-mini") for _ in range(2)]
        statuses.append(await call(b, limited, **five))
        statuses.append(await call(b, limited, **five))
        statuses.append(await call(b, broke, **five))
        mock.enqueue({"status": 500})
        statuses.append(await call(b, alpha, **five))  # no retries on B: 502
        assert statuses == [200, 200, 200, 403, 400, 200, 200, 200, 200, 429, 402, 502]

        nano_call = 11 * 100 + 5 * 400  # nano-USD: 11 prompt + 5 completion tokens
        mini_call = 11 * 400 + 12 * 1600  # the mock's 12-word answer, uncapped
        invoke = {"method": "POST", "endpoint": INVOKE}
        wanted: Samples = {
            s("bradax_requests_total", **invoke, status="200"): 7,
            s("bradax_requests_total", **invoke, status="400"): 1,
            s("bradax_requests_total", **invoke, status="402"): 1,
            s("bradax_requests_total", **invoke, status="403"): 1,
            s("bradax_requests_total", **invoke, status="429"): 1,
            s("bradax_requests_total", **invoke, status="502"): 1,
            s("bradax_requests_total", method="GET", endpoint="/v1/models", status="401"): 2,
            s("bradax_request_duration_seconds_count", **invoke): 12,
            s("bradax_request_duration_seconds_bucket", **invoke, le="+Inf"): 12,
            s("bradax_openai_requests_total", model="gpt-4.1-nano", status="success"): 5,
            s("bradax_openai_requests_total", model="gpt-4.1-nano", status="upstream_error"): 1,
            s("bradax_openai_requests_total", model="gpt-4.1-mini", status="success"): 2,
            s("bradax_openai_cost_usd_total", model="gpt-4.1-nano"): usd(5 * nano_call),
            s("bradax_openai_cost_usd_total", model="gpt-4.1-mini"): usd(2 * mini_call),
            s("bradax_openai_tokens_total", model="gpt-4.1-nano", kind="prompt"): 55,
            s("bradax_openai_tokens_total", model="gpt-4.1-nano", kind="completion"): 25,
            s("bradax_openai_tokens_total", model="gpt-4.1-mini", kind="prompt"): 22,
            s("bradax_openai_tokens_total", model="gpt-4.1-mini", kind="completion"): 24,
            s("bradax_rate_limit_denials_total", limit="max_requests_per_hour"): 1,
            s("bradax_budget_denials_total", project="proj_broke"): 1,
            s("bradax_upstream_retries_total", model="gpt-4.1-nano", reason="500"): 1,
            s("bradax_budget_monthly_usd", project="proj_alpha"): 100,
            s("bradax_budget_remaining_usd", project="proj_alpha"): float(
                Decimal(100) - Decimal(4 * nano_call + 2 * mini_call) / 1_000_000_000
            ),
            s("bradax_budget_remaining_usd", project="proj_limited"): float(
                Decimal(100) - Decimal(nano_call) / 1_000_000_000
            ),
            s("bradax_budget_remaining_usd", project="proj_broke"): 0,
            s("bradax_instances"): 3,
            s("bradax_active_connections"): 1,  # the scrape itself
            s("bradax_ledger_pending_records"): 0,
            s("bradax_database_connections_max"): 3
            * (current.db_pool_size + current.db_max_overflow),
        }
        samples = await scrape_until(metrics.url, wanted)
        got = {k: samples.get(k) for k in wanted}
        assert got == wanted
        counted = (
            "bradax_requests_total",
            "bradax_openai_",
            "bradax_rate_limit",
            "bradax_budget_denials",
            "bradax_upstream_retries",
        )
        extra = {
            k: v
            for k, v in pick(samples, counted).items()
            if k not in wanted and dict(k[1]).get("endpoint") != "/prometheus"
        }
        assert extra == {}
        scrapes = samples[
            s("bradax_requests_total", method="GET", endpoint="/prometheus", status="200")
        ]
        assert scrapes >= 1
        buckets = [
            samples[s("bradax_request_duration_seconds_bucket", **invoke, le=repr(b))]
            for b in BUCKETS
        ]
        assert buckets == sorted(buckets)
        assert samples[s("bradax_request_duration_seconds_sum", **invoke)] > 0
        in_use = samples[s("bradax_database_connections", state="in_use")]
        idle = samples[s("bradax_database_connections", state="idle")]
        assert idle >= 1
        assert 0 <= in_use <= samples[s("bradax_database_connections_max")] - idle
    finally:
        for proc in procs:
            proc.stop()


async def test_disabled_metrics_record_nothing(
    broker: Any, configure: Any, mock: MockUpstream
) -> None:
    """With METRICS_ENABLED=false no request, upstream call or denial is counted anywhere."""
    http, _ = broker
    await deps.aclose()
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url, metrics_enabled=False)
    tenant = await login(http, await create_tenant(current, max_requests_per_hour=1))
    ok = await http.post(
        INVOKE, json={"model": "gpt-4.1-nano", "messages": MESSAGES}, headers=tenant.auth
    )
    denied = await http.post(
        INVOKE, json={"model": "gpt-4.1-nano", "messages": MESSAGES}, headers=tenant.auth
    )
    assert (ok.status_code, denied.status_code) == (200, 429)
    scrape = await http.get("/prometheus")
    assert scrape.status_code == 200
    samples, _ = parse(scrape.text)
    assert (
        pick(samples, ("bradax_requests", "bradax_openai", "bradax_rate", "bradax_request_")) == {}
    )
    redis = RedisStore(current)
    try:
        assert await redis.call("EXISTS", COUNTERS) == 0
        assert await redis.call("KEYS", GAUGE_PREFIX + "*") == []
        assert await redis.call("ZCARD", INSTANCES) == 0
    finally:
        await redis.close()
    assert samples[s("bradax_instances")] == 0


def served_paths() -> set[str]:
    """Every exact path a function of the route table answers (the dev router loaded them)."""
    paths: set[str] = set()
    for name in RouteTable.load().functions:
        paths.update(sys.modules[f"bradax_function_{name}"]._app.paths)
    return paths


async def test_labels_stay_bounded(broker: Any) -> None:
    """Odd methods, unknown paths, bad models and prompts never become label values."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings))
    prompt = [{"role": "user", "content": f"Explique {PROMPT_WORD}"}]
    assert (
        await http.post(
            INVOKE, json={"model": "gpt-4.1-nano", "messages": prompt}, headers=tenant.auth
        )
    ).status_code == 200
    assert (
        await http.post(
            INVOKE, json={"model": f"gpt-{PROMPT_WORD}", "messages": prompt}, headers=tenant.auth
        )
    ).status_code == 403
    assert (await http.request("BREW", INVOKE, headers=tenant.auth)).status_code == 405
    assert (await http.get(f"/api/v1/llm/{PROMPT_WORD}")).status_code == 404
    assert (await http.get(f"/v1/{PROMPT_WORD}?q={PROMPT_WORD}")).status_code == 404
    scrape = await http.get("/prometheus")
    assert PROMPT_WORD not in scrape.text
    assert "req_" not in scrape.text
    assert tenant.access_token not in scrape.text
    samples, _ = parse(scrape.text)
    paths = served_paths()
    assert INVOKE in paths
    labels: dict[str, set[str]] = {}
    for _, pairs in samples:
        for key, value in pairs:
            labels.setdefault(key, set()).add(value)
    assert labels["endpoint"] <= paths | {"other"}
    assert "other" in labels["endpoint"]
    assert labels["method"] == {"POST", "GET", "other"}
    assert labels["method"] <= METHODS | {"other"}
    assert labels["model"] == {"gpt-4.1-nano"}
    # The GenAI conventions' labels: models the catalog serves, a fixed operation and types.
    assert labels["gen_ai_request_model"] == labels["gen_ai_response_model"] == {"gpt-4.1-nano"}
    assert labels["gen_ai_operation_name"] == {"chat"}
    assert labels["gen_ai_provider_name"] == {"openai"}
    assert labels["gen_ai_token_type"] == {"input", "output"}
    assert labels["error_type"] == {""}
    assert labels["api"] == {"invoke"}
    assert set(labels) == {
        "method",
        "endpoint",
        "status",
        "le",
        "model",
        "kind",
        "state",
        "project",
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_response_model",
        "gen_ai_token_type",
        "error_type",
        "api",
    }


async def test_active_connections_counts_requests_in_flight(
    broker: Any, mock: MockUpstream
) -> None:
    """A slow call in flight shows in the gauge next to the scrape itself, and leaves it after."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings))
    mock.configure(latency_ms=1000)
    slow = asyncio.create_task(
        http.post(INVOKE, json={"model": "gpt-4.1-nano", "messages": MESSAGES}, headers=tenant.auth)
    )
    for _ in range(100):  # until the call is in flight
        if deps.telemetry.get().active:
            break
        await asyncio.sleep(0.01)
    during, _ = parse((await http.get("/prometheus")).text)
    assert (await slow).status_code == 200
    after, _ = parse((await http.get("/prometheus")).text)
    assert during[s("bradax_active_connections")] == 2
    assert after[s("bradax_active_connections")] == 1
    assert after[s("bradax_instances")] == 1


# -- the Grafana dashboard ---------------------------------------------------------------------

DASHBOARD = REPO_ROOT / "infra" / "grafana" / "bradax-dashboard.json"
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "sum", "max", "min", "avg", "count", "rate", "irate", "increase",
    "histogram_quantile", "label_values", "topk", "clamp_min",
}  # fmt: skip


def exposed(text: str) -> dict[str, set[str]]:
    """Series names a scrape exposes (with _total/_bucket/_sum/_count) and their label names."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            series = [family.name + "_total"]
        elif family.type == "histogram":
            series = [family.name + suffix for suffix in ("_bucket", "_sum", "_count")]
        else:
            series = [family.name]
        for name in series:
            names.setdefault(name, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(set(sample.labels) - {"le"})
            if sample.name.endswith("_bucket"):
                names[sample.name].add("le")
    return names


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, expression, legend format) of every query, variables included."""
    found = [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"${variable['name']}", variable["query"]["query"], ""))
    return found


async def seeded_scrape(http: httpx2.AsyncClient, settings: Settings) -> str:
    """A real /prometheus answer in which every counter family has a sample."""
    from common.telemetry import field

    await create_tenant(settings)
    redis = RedisStore(settings)
    try:
        for key, (_, _, labels) in prometheus.SIMPLE_COUNTERS.items():
            await redis.call("HINCRBY", COUNTERS, field(key, **{n: "x" for n in labels}), 1)
        await redis.call("HINCRBY", COUNTERS, field("openai_cost_nano_total", model="m"), 5)
        for key, (_, _, labels) in prometheus.OBSERVED.items():
            series = {n: "x" for n in labels}
            bucket = field(f"{key}_bucket", **series, le=repr(HISTOGRAMS[key].buckets[0]))
            for name in (bucket, field(f"{key}_count", **series), field(f"{key}_sum", **series)):
                await redis.call("HINCRBY", COUNTERS, name, 1)
    finally:
        await redis.close()
    assert (await http.get("/live")).status_code == 200
    await deps.telemetry.get().flush()  # the probe above feeds the histogram
    reply = await http.get("/prometheus")
    assert reply.status_code == 200
    return reply.text


def test_dashboard_is_a_grafana_dashboard() -> None:
    """The file is a Grafana dashboard model: identity, time, variables, laid-out panels."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert (dashboard["uid"], dashboard["title"]) == ("bradax-broker", "bradax broker")
    assert dashboard["id"] is None
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert set(dashboard["time"]) == {"from", "to"}
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "endpoint", "model", "project"}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert min(grid.values()) >= 0
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "bargauge"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
    used = set(re.findall(r"\$(\w+)", json.dumps(dashboard["panels"])))
    assert used - {"__rate_interval", "__range"} <= set(variables)


async def test_dashboard_queries_what_the_broker_exposes(broker: Any) -> None:
    """Queries name only metrics and labels a real scrape shows; every exposed metric is charted."""
    http, settings = broker
    names = exposed(await seeded_scrape(http, settings))
    dashboard = json.loads(DASHBOARD.read_text())
    charted: set[str] = set()
    for title, expr, legend in queries(dashboard):
        assert expr.count("(") == expr.count(")"), title
        assert expr.count("{") == expr.count("}"), title
        assert expr.count("[") == expr.count("]"), title
        metrics = set(re.findall(r"\b(?:bradax|gen_ai_client|gen_ai_server)_\w+", expr))
        assert metrics, title
        assert metrics <= set(names), (title, metrics - set(names))
        charted |= metrics
        labels = set().union(*(names[m] for m in metrics))
        grouped = {
            label.strip()
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            for label in group.split(",")
        }
        selected = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        called = set(re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr))
        assert grouped | selected | called <= labels, (
            title,
            (grouped | selected | called) - labels,
        )
        shown = set(re.findall(r"\{\{(\w+)\}\}", legend))
        assert shown <= (grouped or labels), (title, shown)
        words = set(re.findall(r"\b([a-z_]+)\s*\(", expr))
        assert words <= PROMQL_WORDS, (title, words - PROMQL_WORDS)
    histogram = "bradax_request_duration_seconds"
    assert {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"} <= charted
    missing = {n for n in names if n not in charted and not n.startswith(histogram)}
    assert missing == set(), f"exposed but never charted: {sorted(missing)}"
    text = json.dumps(dashboard)
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate({histogram}_bucket" in text


async def test_budget_remaining_follows_redis_and_falls_back_to_the_ledger(broker: Any) -> None:
    """The gauge takes Redis' live spend and reservations, or the ledger where Redis lost them."""
    http, settings = broker
    kept = await login(http, await create_tenant(settings, "proj_kept", budget_monthly_usd="1"))
    lost = await login(http, await create_tenant(settings, "proj_lost", budget_monthly_usd="2"))
    idle = await create_tenant(settings, "proj_idle", budget_monthly_usd="3")
    body = {"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"max_tokens": 5}}
    for tenant in (kept, lost):
        assert (await http.post(INVOKE, json=body, headers=tenant.auth)).status_code == 200
    await ledger_rows(settings)
    month = budget_month(datetime.now(UTC))
    redis = RedisStore(settings)
    try:
        await redis.call("DEL", f"bx:b:{{proj_lost}}:{month}")  # as after a Redis loss
        # Settled but not drained yet, plus a live reservation: Redis is ahead of the ledger.
        await redis.call("HINCRBY", f"bx:b:{{proj_kept}}:{month}", "spent", 1_000)
        await redis.call("HINCRBY", f"bx:b:{{proj_kept}}:{month}", "reserved", 500)
    finally:
        await redis.close()
    samples, _ = parse((await http.get("/prometheus")).text)
    remaining = {
        dict(k[1])["project"]: v
        for k, v in samples.items()
        if k[0] == "bradax_budget_remaining_usd"
    }
    assert remaining == {
        "proj_kept": float(Decimal(1) - Decimal("0.0000031") - Decimal("0.0000015")),
        "proj_lost": float(Decimal(2) - Decimal("0.0000031")),
        idle.project_id: 3.0,
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and wanted <= pairs)


async def test_genai_convention_histograms_count_each_call(broker: Any) -> None:
    """Token usage sums to the ledger's tokens, each upstream call is one operation duration,
    a stream adds one time to first token, every answer one overhead observation."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings))
    body = {"model": "gpt-4.1-nano", "messages": MESSAGES, "max_tokens": 5}
    assert (await http.post("/v1/chat/completions", json=body, headers=tenant.key_auth)).is_success
    async with http.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=tenant.key_auth
    ) as reply:
        assert reply.status_code == 200
        assert [line async for line in reply.aiter_lines()]
    refused = await http.post(
        "/v1/chat/completions", json={**body, "model": "nope"}, headers=tenant.key_auth
    )
    assert refused.status_code >= 400
    rows = await ledger_rows(settings)
    assert len(rows) == 2
    await deps.telemetry.get().flush()
    samples, types = parse((await http.get("/prometheus")).text)
    usage = "gen_ai_client_token_usage"
    assert types[usage] == "histogram"
    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai"}
    genai |= {"gen_ai_request_model": "gpt-4.1-nano", "gen_ai_response_model": "gpt-4.1-nano"}
    for kind, column in (("input", "prompt_tokens"), ("output", "completion_tokens")):
        assert total(samples, f"{usage}_count", **genai, gen_ai_token_type=kind) == 2
        assert total(samples, f"{usage}_sum", **genai, gen_ai_token_type=kind) == sum(
            r[column] for r in rows
        )
    duration = "gen_ai_client_operation_duration_seconds"
    assert total(samples, f"{duration}_count", **genai, error_type="") == 2
    assert total(samples, f"{duration}_bucket", le="+Inf") == 2
    first = "gen_ai_server_time_to_first_token_seconds"
    assert total(samples, f"{first}_count", **genai) == 1
    assert total(samples, "bradax_overhead_seconds_count", api="openai") == 3
    served = total(samples, "bradax_request_duration_seconds_sum", endpoint="/v1/chat/completions")
    assert 0 < total(samples, "bradax_overhead_seconds_sum", api="openai") <= served
