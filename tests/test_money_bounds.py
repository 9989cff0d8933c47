"""Money against a hostile upstream and unusual clients: the bound covers everything billable,
usage claims are clamped to it, the ledger cannot be poisoned, and dead instances are settled.

The upstream is the bundled mock, a real HTTP server; its `/_mock/stats` token counts are what
it would bill, whatever usage it claims in its answers.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import orjson
import pytest
import redis as sync_redis

from common import bounds, deps, keyspace
from common.ledger import Drainer
from common.pricing import LIST_PRICES
from common.quota import UsageRecord, budget_keys, to_nano
from common.redis import RedisStore
from common.settings import Settings
from tests.conftest import (
    MockUpstream,
    Process,
    Tenant,
    create_tenant,
    ledger_rows,
    login,
)
from tests.test_governance_processes import start_brokers, token

MESSAGES = [{"role": "user", "content": "hi"}]
MILLION = Decimal(1_000_000)


def price(model: str, prompt: int, completion: int) -> Decimal:
    """What the upstream bills for these tokens at list price."""
    per_in, per_out = LIST_PRICES[model]
    return (prompt * per_in + completion * per_out) / MILLION


def billed(calls: list[dict[str, Any]], model: str = "gpt-4.1-nano") -> dict[str, Decimal]:
    """request id -> what the mock upstream billed for that call."""
    return {
        c["request_id"]: price(model, c["prompt_tokens"], c["completion_tokens"])
        for c in calls
        if c["outcome"] in ("ok", "cut", "disconnected")
    }


def month() -> str:
    """The current budget month."""
    return datetime.now(UTC).strftime("%Y%m")


@pytest.fixture
def upstream(settings: Settings, configure: Any, mock: MockUpstream) -> Settings:
    """Settings in force with the mock upstream configured."""
    current: Settings = configure(openai_api_key="mock-key", openai_base_url=mock.url)
    return current


async def make_client(router: Any) -> httpx2.AsyncClient:
    """An in-process client of the whole broker."""
    transport = httpx2.ASGITransport(app=router, client=("10.0.0.9", 5555))
    return httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=60)


async def invoke(http: httpx2.AsyncClient, tenant: Tenant, **body: Any) -> httpx2.Response:
    """One spec invoke (gpt-4.1-nano, MESSAGES unless given)."""
    payload = {"model": "gpt-4.1-nano", "messages": MESSAGES, **body}
    return await http.post("/api/v1/llm/invoke", json=payload, headers=tenant.auth)


# -- the bound covers the whole body ----------------------------------------------------------


async def test_large_tools_are_reserved_and_refused(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """~900 KB of tools on a $0.01 budget is refused 402 before the upstream bills anything."""
    http = await make_client(router)
    tenant = await login(
        http,
        await create_tenant(upstream, budget_monthly_usd="0.01", allowed_models=("gpt-4.1",)),
    )
    tool = {
        "type": "function",
        "function": {"name": "f", "description": "word " * 9_000, "parameters": {}},
    }
    tools = [tool] * 20  # about 900 KB of JSON
    assert 850_000 < len(orjson.dumps(tools)) < 950_000
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4.1", "messages": MESSAGES, "tools": tools, "max_tokens": 10},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 402, reply.text
    assert reply.json()["error"]["code"] == "budget_exceeded"
    assert mock.stats()["requests"] == 0
    assert await ledger_rows(upstream) == []


async def test_concurrent_large_tools_never_overspend(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """20 concurrent calls with 200 KB of tools each: what the upstream bills stays within budget
    and every call it served is in the ledger at no less than it billed."""
    budget = Decimal("0.10")
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, budget_monthly_usd=budget))
    tools = [{"type": "function", "function": {"name": "g", "description": "x " * 100_000}}]
    mock.configure(latency_ms=500)  # every admission happens before any call settles
    replies = await asyncio.gather(
        *(
            http.post(
                "/v1/chat/completions",
                json={"model": "gpt-4.1-nano", "messages": MESSAGES, "tools": tools},
                headers=tenant.key_auth,
            )
            for _ in range(20)
        )
    )
    codes = [r.status_code for r in replies]
    assert set(codes) == {200, 402}
    assert 0 < codes.count(200) < 20
    upstream_billed = billed(mock.stats()["calls"])
    assert sum(upstream_billed.values()) <= budget
    rows = {r["request_id"]: r for r in await ledger_rows(upstream)}
    assert set(rows) == set(upstream_billed)
    for request_id, amount in upstream_billed.items():
        assert rows[request_id]["cost_usd"] >= amount > 0


def test_image_parts_are_bounded_by_the_image_rule() -> None:
    """An image is bounded by its model's largest image rule, not by its data URL's bytes."""
    data_url = "data:image/png;base64," + "A" * 300_000
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": data_url, "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        }
    ]
    found = bounds.media(messages)
    size = len(orjson.dumps({"model": "gpt-4o-mini", "messages": messages}))
    assert found.payload_bytes > 300_000
    # gpt-4o-mini: 2833 + 5667 per tile, at most 8 tiles; 2833 at detail low.
    assert bounds.prompt_bound(size, found, "gpt-4o-mini") == (
        size - found.payload_bytes + 2833 + 5667 * 8 + 2833
    )
    assert bounds.prompt_bound(size, found, "gpt-4o") == size - found.payload_bytes + 1445 + 85
    assert bounds.image_tokens("some-unknown-model", "low") >= 48169


async def test_high_detail_image_on_gpt_4o_mini_is_not_reserved_at_3000_tokens(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """A high-detail image on gpt-4o-mini can bill 48,169 tokens: a budget that 3,000 would
    fit refuses it, while the same image at detail low is admitted."""
    # 10,000 tokens at 0.15 $/1M: room for a 3,000-token guess, not for the real rule.
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, budget_monthly_usd="0.0015"))

    def image(detail: str) -> list[dict[str, Any]]:
        url = "https://img.example/cat.png"
        part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
        return [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]

    high = await invoke(
        http, tenant, model="gpt-4o-mini", messages=image("high"), parameters={"max_tokens": 10}
    )
    assert high.status_code == 402, high.text
    low = await invoke(
        http, tenant, model="gpt-4o-mini", messages=image("low"), parameters={"max_tokens": 10}
    )
    assert low.status_code == 200, low.text
    assert mock.stats()["requests"] == 1


async def test_conflicting_output_fields_never_pass_the_cap(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """max_tokens above the cap beside a small max_completion_tokens is a 400: the upstream is
    never asked for more than the project's cap, whichever field it obeys."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, max_tokens_per_request=100))
    for params in (
        {"max_tokens": 5000, "max_completion_tokens": 100},
        {"max_completion_tokens": 5000, "max_tokens": 100},
        {"max_output_tokens": 5000},
    ):
        reply = await invoke(http, tenant, parameters=params)
        assert reply.status_code == 400, params
        assert reply.json()["error"]["code"] == "max_tokens_exceeded"
    assert mock.stats()["requests"] == 0
    assert (await invoke(http, tenant, parameters={"max_output_tokens": "many"})).status_code == 400


async def test_stream_inside_spec_parameters_is_refused(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """`stream` or `stream_options` inside the spec API's parameters is a 400, never forwarded."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream))
    for params in ({"stream": True}, {"stream_options": {"include_usage": True}}):
        reply = await invoke(http, tenant, parameters=params)
        assert reply.status_code == 400, reply.text
        assert "parameters.stream" in reply.json()["error"]["message"]
    assert mock.stats()["requests"] == 0


async def test_parameters_billed_outside_tokens_are_refused(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """Web search and audio output cannot be bounded in tokens: refused 400 before the call."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream))
    for params in (
        {"web_search_options": {}},
        {"modalities": ["text", "audio"]},
        {"service_tier": "priority"},
    ):
        reply = await invoke(http, tenant, parameters=params)
        assert (reply.status_code, reply.json()["error"]["code"]) == (
            400,
            "parameter_not_supported",
        )
    assert mock.stats()["requests"] == 0


async def test_prediction_is_reserved_as_completion_tokens(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """Rejected prediction tokens bill as output: 50 KB of prediction does not fit $0.01 at the
    output price, though the same call without it does."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, budget_monthly_usd="0.01"))
    prediction = {"type": "content", "content": "y " * 25_000}
    refused = await invoke(http, tenant, parameters={"max_tokens": 10, "prediction": prediction})
    assert refused.status_code == 402, refused.text
    assert (await invoke(http, tenant, parameters={"max_tokens": 10})).status_code == 200
    assert mock.stats()["requests"] == 1


async def test_unverified_usage_is_not_relayed(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """An answer whose usage is a lie reaches an OpenAI client with the usage it was charged
    (the bound), matching its cost header and its ledger row."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream))
    mock.enqueue(_usage(10**9, -1))
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "max_tokens": 7},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 200
    (row,) = await ledger_rows(upstream)
    assert (row["status"], row["error_code"], row["completion_tokens"]) == (
        "usage_unverified",
        "usage_invalid",
        7,
    )
    assert reply.json()["usage"] == {
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": 7,
        "total_tokens": row["prompt_tokens"] + 7,
    }
    assert Decimal(reply.headers["X-Bradax-Cost-USD"]) == row["cost_usd"] > 0


def test_usage_claims_are_clamped_to_the_bound() -> None:
    """Plausible claims within the bound are taken; anything else is charged at the bound."""
    assert bounds.verify((10, 5), 100, 50) == bounds.Charge(10, 5)
    assert bounds.verify((0, 0), 100, 50).unverified == "implausible"
    assert bounds.verify((101, 5), 100, 50) == bounds.Charge(100, 50, "over_bound")
    assert bounds.verify(None, 100, 50) == bounds.Charge(100, 50, "missing")
    assert bounds.verify((1, 1), 100, 50, invalid=True).unverified == "invalid"
    for usage in (
        {"prompt_tokens": -1, "completion_tokens": 2},
        {"prompt_tokens": "3", "completion_tokens": 2},
        {"prompt_tokens": 3.0, "completion_tokens": 2},
        {"prompt_tokens": True, "completion_tokens": 2},
        {"prompt_tokens": 3},
        [3, 2],
        None,
    ):
        assert bounds.read_usage(usage) is None, usage
    assert bounds.read_usage({"prompt_tokens": 3, "completion_tokens": 0}) == (3, 0)


# -- a hostile upstream, two broker processes --------------------------------------------------

UNVERIFIED, SUCCESS = "usage_unverified", "success"


def _usage(prompt: object, completion: object) -> dict[str, Any]:
    return {"usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


HOSTILE: list[tuple[str, dict[str, Any], bool, str]] = [
    # name, mock behaviour, streamed, the ledger status expected
    ("huge", _usage(10_000_000, 5), False, UNVERIFIED),
    ("negative", _usage(-1000, -50), False, UNVERIFIED),
    ("missing", {"usage": "absent"}, False, UNVERIFIED),
    ("non_integer", _usage("12", 1.5), False, UNVERIFIED),
    ("beyond_int32", _usage(3_000_000_000, 3_000_000_000), False, UNVERIFIED),
    ("zero", _usage(0, 0), False, UNVERIFIED),
    ("huge_stream", _usage(10_000_000, 5), True, UNVERIFIED),
    ("negative_stream", _usage(-5, 3), True, UNVERIFIED),
    ("missing_stream", {"usage": "absent"}, True, UNVERIFIED),
    ("beyond_int32_stream", _usage(2**40, 1), True, UNVERIFIED),
    ("trailing_zero_stream", {"trailing_zero_usage": True}, True, SUCCESS),
]


async def _call(
    http: httpx2.AsyncClient, url: str, tenant: Tenant, access: str, stream: bool, tokens: int = 50
) -> int:
    """One call to a broker process: a spec invoke, or an OpenAI stream read to its end."""
    if not stream:
        reply = await http.post(
            url + "/api/v1/llm/invoke",
            headers={"Authorization": f"Bearer {access}"},
            json={
                "model": "gpt-4.1-nano",
                "messages": MESSAGES,
                "parameters": {"max_tokens": tokens},
            },
        )
        return reply.status_code
    async with http.stream(
        "POST",
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {tenant.api_key}"},
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "stream": True, "max_tokens": 50},
    ) as reply:
        async for _ in reply.aiter_bytes():
            pass
        return reply.status_code


@pytest.mark.slow
async def test_hostile_usage_never_overspends_across_two_processes(
    upstream: Settings, mock: MockUpstream, tmp_path: Path
) -> None:
    """For every way an upstream can lie about usage, across two broker processes: what it
    billed stays within the budget, every call it served is in the ledger, none at $0, each at
    no less than it billed, and the budget in Redis matches the ledger exactly."""
    # Worst case per call (85 bytes at 0.10 $/1M + 50 tokens at 0.40 $/1M) is 28.5 µUSD:
    # 7 fit in 0.0002; 10 concurrent calls are sent per mode.
    budget = Decimal("0.0002")
    tenants = {
        name: await create_tenant(upstream, f"proj_{name}", budget_monthly_usd=budget)
        for name, *_ in HOSTILE
    }
    brokers = start_brokers(upstream, tmp_path, 2)
    urls = [b.url for b in brokers]
    results: dict[str, tuple[list[int], list[dict[str, Any]]]] = {}
    try:
        async with httpx2.AsyncClient(timeout=60) as http:
            for name, behaviour, stream, _ in HOSTILE:
                tenant = tenants[name]
                access = await token(urls[0], tenant)
                mock.reset()
                mock.configure(latency_ms=1000)  # every admission before any settle
                mock.enqueue(*([behaviour] * 10))
                codes = await asyncio.gather(
                    *(_call(http, urls[i % 2], tenant, access, stream) for i in range(10))
                )
                results[name] = (list(codes), mock.stats()["calls"])
            prometheus = await http.get(urls[1] + "/prometheus")
    finally:
        for broker in brokers:
            broker.stop()
    rows = await ledger_rows(upstream)
    redis = sync_redis.Redis.from_url(upstream.redis_url.get_secret_value())
    for name, _, stream, status in HOSTILE:
        codes, calls = results[name]
        tenant = tenants[name]
        assert sorted(set(codes)) == [200, 402], (name, codes)
        upstream_billed = billed(calls)
        assert len(upstream_billed) == codes.count(200), name
        assert sum(upstream_billed.values()) <= budget, name
        mine = {r["request_id"]: r for r in rows if r["project_id"] == tenant.project_id}
        assert set(mine) == set(upstream_billed), name  # no served call missing, none extra
        for request_id, amount in upstream_billed.items():
            row = mine[request_id]
            assert row["cost_usd"] >= amount > 0, (name, row)
            assert (row["status"], row["streamed"]) == (status, stream), name
        total = sum((r["cost_usd"] for r in mine.values()), Decimal(0))
        assert total <= budget, name
        state = redis.hgetall(budget_keys(tenant.project_id, month())[0])
        assert state == {b"spent": str(to_nano(total)).encode(), b"reserved": b"0"}, name
    assert prometheus.status_code == 200
    assert 'bradax_usage_unverified_total{model="gpt-4.1-nano",reason="over_bound"}' in (
        prometheus.text
    )


@pytest.mark.slow
async def test_poison_record_does_not_stop_the_ledger_across_two_processes(
    upstream: Settings, mock: MockUpstream, tmp_path: Path
) -> None:
    """Poison records in the outbox are dead-lettered with their reason; the calls served by
    both processes around them all reach the ledger, and /metrics keeps answering."""
    tenant = await create_tenant(upstream)
    brokers = start_brokers(upstream, tmp_path, 2)
    urls = [b.url for b in brokers]
    redis = RedisStore(upstream)
    try:
        async with httpx2.AsyncClient(timeout=60) as http:
            access = await token(urls[0], tenant)
            first = await asyncio.gather(
                *(_call(http, urls[i % 2], tenant, access, False) for i in range(10))
            )
            good = _record("req_poison_neighbour", tenant.project_id)
            for raw in [*_poisons(tenant.project_id), good.to_json()]:
                await _outbox(redis, tenant.project_id, raw)
            second = await asyncio.gather(
                *(_call(http, urls[i % 2], tenant, access, False) for i in range(10))
            )
            metrics = [
                await http.get(url + "/metrics", headers={"Authorization": f"Bearer {access}"})
                for url in urls
            ]
            # /metrics only reads: let the brokers' drainers finish before stopping them (a
            # batch cut by the stop would wait IDLE_MS for another drainer to claim it).
            for _ in range(500):
                if int(await redis.call("XLEN", keyspace.ledger_stream(tenant.project_id))) == 0:
                    break
                await asyncio.sleep(0.02)
    finally:
        await redis.close()
        for broker in brokers:
            broker.stop()
    assert first + second == [200] * 20
    assert [m.status_code for m in metrics] == [200, 200]
    served = {c["request_id"] for c in mock.stats()["calls"] if c["outcome"] == "ok"}
    rows = {r["request_id"] for r in await ledger_rows(upstream)}
    assert served | {"req_poison_neighbour"} == rows
    dead = await _dead_letters(upstream)
    assert len(dead) == len(_poisons(tenant.project_id))
    assert all(d["reason"] for d in dead)


def _record(request_id: str, project_id: str, **changes: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": request_id,
        "project_id": project_id,
        "key_id": None,
        "model": "gpt-4.1-nano",
        "upstream_model": "gpt-4.1-nano",
        "prompt_tokens": 8,
        "completion_tokens": 12,
        "cost_usd": Decimal("0.0000056"),
        "latency_ms": 3,
        "status": "success",
        "http_status": 200,
        "error_code": None,
        "streamed": False,
        "cached": False,
        "budget_month": month(),
        "created_at_ms": int(time.time() * 1000),
    }
    values.update(changes)
    return UsageRecord(**values)


async def _outbox(redis: RedisStore, project_id: str, raw: bytes) -> None:
    """Append an entry to a project's ledger outbox, as the settle script does."""
    await redis.call("SADD", keyspace.PROJECTS, project_id)
    await redis.call("XADD", keyspace.ledger_stream(project_id), "*", "r", raw)


def _poisons(project_id: str) -> list[bytes]:
    """Outbox entries PostgreSQL refuses or nobody can read."""
    return [
        _record("req_p_int32", project_id, prompt_tokens=3_000_000_000).to_json(),
        _record("req_p_nul", project_id, model="gpt\x00nano").to_json(),
        _record("req_p_month", project_id, budget_month="2026-12-01").to_json(),
        b"not json",
        orjson.dumps(["req_p_short", project_id]),
    ]


async def _dead_letters(settings: Settings) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        return [dict(r) for r in await conn.fetch("SELECT * FROM ledger_dead_letters")]
    finally:
        await conn.close()


async def test_drainer_dead_letters_refused_rows_and_keeps_the_rest(upstream: Settings) -> None:
    """One drain pass over good and poison records: the good rows are in the ledger, each
    poison is in ledger_dead_letters with its reason, and the outbox is empty."""
    redis, db = deps.redis.get(), deps.db.get()
    goods = [_record(f"req_good_{i}", "proj_x") for i in range(3)]
    entries = [goods[0].to_json(), *_poisons("proj_x"), goods[1].to_json(), goods[2].to_json()]
    for raw in entries:
        await _outbox(redis, "proj_x", raw)
    drainer = Drainer(redis, db, audit_enabled=True)
    assert await drainer.drain_once() == len(entries)
    assert int(await redis.call("XLEN", keyspace.ledger_stream("proj_x"))) == 0
    rows = await db.fetch("SELECT request_id FROM usage_ledger ORDER BY request_id")
    assert [r["request_id"] for r in rows] == ["req_good_0", "req_good_1", "req_good_2"]
    dead = {d["request_id"]: d["reason"] for d in await _dead_letters(upstream)}
    assert set(dead) == {"req_p_int32", "req_p_nul", "req_p_month", None, "req_p_short"}
    assert "int32" in dead["req_p_int32"]


async def test_drainer_dead_letters_unreadable_audit_events(upstream: Settings) -> None:
    """A poison entry in the audit stream is kept aside with its reason; the events around
    it reach the hash chain and the stream is emptied."""
    from common.audit import STREAM, AuditEvent

    redis, db = deps.redis.get(), deps.db.get()
    good = AuditEvent("invoke", "denied", "proj_x", None, "req_audit_ok", "budget_exceeded")
    for fields in ({b"e": b"[1, 2"}, {b"x": b"no event"}, good.to_stream()):
        await redis.call("XADD", STREAM, "*", *[v for pair in fields.items() for v in pair])
    drainer = Drainer(redis, db, audit_enabled=True)
    await drainer.drain_once()
    assert int(await redis.call("XLEN", STREAM)) == 0
    logged = await db.fetch("SELECT request_id FROM audit_log")
    assert [r["request_id"] for r in logged] == ["req_audit_ok"]
    dead = await _dead_letters(upstream)
    assert len(dead) == 2
    assert all(d["stream_id"].startswith("audit:") and d["reason"] for d in dead)


def test_records_are_fitted_before_the_outbox() -> None:
    """A record is forced into the ledger's domain before it enters the outbox."""
    fitted = _record("r", "p", prompt_tokens=2**40, latency_ms=-5, model="a\x00b").fitted()
    assert (fitted.prompt_tokens, fitted.latency_ms, fitted.model) == (2**31 - 1, 0, "ab")
    assert fitted.prompt_tokens + fitted.completion_tokens <= 2**31 - 1
    assert fitted.problems() == []
    with pytest.raises(ValueError, match="budget_month"):
        _record("r", "p", budget_month="x").fitted()


# -- a killed instance -------------------------------------------------------------------------


async def _until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_a_killed_process_call_is_ledgered_once_at_its_bound(
    upstream: Settings, mock: MockUpstream, tmp_path: Path
) -> None:
    """A broker process SIGKILLed while its call is at the upstream leaves no hole: the other
    process's reconciler settles the call at its bound, once, and the budget matches it."""
    worst = price(
        "gpt-4.1-nano",
        len(orjson.dumps({"max_tokens": 200, "model": "gpt-4.1-nano", "messages": MESSAGES})),
        200,
    )
    tenant = await create_tenant(upstream, budget_monthly_usd="0.0001")
    env = {"RESERVATION_TIMEOUT_SECONDS": "2"}
    victim, survivor = start_brokers(upstream, tmp_path, 2, **env)
    processes: list[Process] = [victim, survivor]
    try:
        access = await token(survivor.url, tenant)
        async with httpx2.AsyncClient(timeout=30) as http:
            assert await _call(http, survivor.url, tenant, access, False) == 200  # starts its loops
            mock.enqueue({"hang": True})
            doomed = asyncio.ensure_future(
                http.post(
                    victim.url + "/api/v1/llm/invoke",
                    headers={"Authorization": f"Bearer {access}"},
                    json={
                        "model": "gpt-4.1-nano",
                        "messages": MESSAGES,
                        "parameters": {"max_tokens": 200},
                    },
                )
            )

            async def reached() -> bool:
                return bool(mock.stats()["requests"] == 2)

            await _until(reached)
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(5)
            with pytest.raises(httpx2.HTTPError):
                await doomed
            lost = mock.stats()["calls"][-1]["request_id"]

            async def reconciled() -> bool:
                rows = await ledger_rows(upstream)
                return any(r["request_id"] == lost for r in rows)

            await _until(reconciled)
            # The budget now holds the bound: the next worst case no longer fits.
            reply = await http.post(
                survivor.url + "/api/v1/llm/invoke",
                headers={"Authorization": f"Bearer {access}"},
                json={
                    "model": "gpt-4.1-nano",
                    "messages": MESSAGES,
                    "parameters": {"max_tokens": 200},
                },
            )
            assert reply.status_code == 402
    finally:
        for process in processes:
            process.stop()
    rows = await ledger_rows(upstream)
    assert len(rows) == 2
    row = next(r for r in rows if r["request_id"] == lost)
    assert (row["status"], row["error_code"], row["cost_usd"]) == (
        "reconciled",
        "instance_lost",
        worst,
    )
    state = sync_redis.Redis.from_url(upstream.redis_url.get_secret_value()).hgetall(
        budget_keys(tenant.project_id, month())[0]
    )
    total = sum((r["cost_usd"] for r in rows), Decimal(0))
    assert state == {b"spent": str(to_nano(total)).encode(), b"reserved": b"0"}
    assert total <= Decimal("0.0001")


async def test_reconciler_and_settle_are_mutually_exclusive(upstream: Settings) -> None:
    """Whichever of the settle and the reconciler comes first wins; the other is a duplicate,
    so each admitted call has exactly one ledger row and is charged once."""
    from common import keyspace, services
    from common.quota import BudgetClaim, intent_record

    intents, intents_due = keyspace.intents("proj_race")

    governor = services.governor.get()
    redis = deps.redis.get()
    now_ms = int(time.time() * 1000)
    await create_tenant(upstream, "proj_race", budget_monthly_usd="1")
    bound = Decimal("0.00002")

    async def admit(request_id: str) -> BudgetClaim:
        intent = intent_record(
            request_id=request_id,
            project_id="proj_race",
            key_id=None,
            model="gpt-4.1-nano",
            prompt_tokens=100,
            completion_tokens=25,
            cost_usd=bound,
            streamed=False,
            budget_month=month(),
            created_at_ms=now_ms,
        )
        claim = BudgetClaim(
            "proj_race", month(), request_id, to_nano(bound), to_nano(Decimal(1)), now_ms, intent
        )
        await governor.admit(now_ms=now_ms, budget=claim)
        return claim

    async def settle(claim: BudgetClaim) -> bool:
        record = _record(claim.request_id, "proj_race")
        outcome = await governor.settle(
            claim,
            request_id=claim.request_id,
            project_id="proj_race",
            month=month(),
            actual=record.cost_usd,
            record=record,
        )
        return not outcome.duplicate

    first = await admit("req_settled_first")
    assert await settle(first)
    late = await admit("req_reconciled_first")
    assert int(await redis.call("HLEN", intents)) == 1
    assert await governor.reconcile(now_ms + 1) == 1
    assert not await settle(late)  # the instance came back too late: a duplicate
    assert await governor.reconcile(now_ms + 1) == 0
    assert int(await redis.call("HLEN", intents)) == 0
    assert int(await redis.call("ZCARD", intents_due)) == 0
    rows = {r["request_id"]: r for r in await ledger_rows(upstream)}
    assert rows["req_settled_first"]["status"] == "success"
    assert (rows["req_reconciled_first"]["status"], rows["req_reconciled_first"]["cost_usd"]) == (
        "reconciled",
        bound,
    )
    spent = int(await redis.call("HGET", budget_keys("proj_race", month())[0], "spent"))
    assert spent == to_nano(Decimal("0.0000056")) + to_nano(bound)
