"""Governance: allowed models, token caps, rate limits, hard budgets, PII, idempotency, cache."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import httpx2
import orjson
import pytest

from common import deps, services
from common.quota import BudgetClaim, Limit, budget_keys, to_nano
from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, ledger_rows, login

MESSAGES = [{"role": "user", "content": "hi"}]
NANO_IN, NANO_OUT = Decimal("0.10"), Decimal("0.40")


def prompt_bound(max_tokens: int) -> int:
    """The reservation bounds the prompt by the bytes of the whole forwarded body."""
    body = {"max_tokens": max_tokens, "model": "gpt-4.1-nano", "messages": MESSAGES}
    return len(orjson.dumps(body))  # 85 for max_tokens=100


def worst_case(max_tokens: int) -> Decimal:
    """What one gpt-4.1-nano call with MESSAGES reserves."""
    return (prompt_bound(max_tokens) * NANO_IN + max_tokens * NANO_OUT) / Decimal(1_000_000)


async def make_client(router: Any, ip: str = "10.0.0.1") -> httpx2.AsyncClient:
    """An in-process client whose TCP peer is `ip`."""
    transport = httpx2.ASGITransport(app=router, client=(ip, 5555))
    return httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)


@pytest.fixture
def upstream(settings: Settings, configure: Any, mock: MockUpstream) -> Settings:
    """Settings in force with the mock upstream configured."""
    current: Settings = configure(openai_api_key="k", openai_base_url=mock.url)
    return current


async def call(
    http: httpx2.AsyncClient,
    tenant: Tenant,
    max_tokens: int = 100,
    headers: dict[str, str] | None = None,
) -> httpx2.Response:
    """One spec invoke with MESSAGES."""
    body: dict[str, Any] = {
        "model": "gpt-4.1-nano",
        "messages": MESSAGES,
        "parameters": {"max_tokens": max_tokens},
    }
    return await http.post(
        "/api/v1/llm/invoke", json=body, headers={**tenant.auth, **(headers or {})}
    )


# -- allowed models and token caps ------------------------------------------------------------


async def test_models_list_only_the_allowed_ones(upstream: Settings, router: Any) -> None:
    """GET /v1/models lists exactly the project's allowed models."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, allowed_models=("gpt-4o-mini",)))
    reply = await http.get("/v1/models", headers=tenant.key_auth)
    assert [m["id"] for m in reply.json()["data"]] == ["gpt-4o-mini"]


async def test_max_tokens_over_the_project_cap_is_400(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """Asking for more than max_tokens_per_request is a 400 that never reaches the upstream."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, max_tokens_per_request=64))
    reply = await call(http, tenant, max_tokens=65)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "max_tokens_exceeded"
    assert (await call(http, tenant, max_tokens=64)).status_code == 200
    assert mock.stats()["requests"] == 1


# -- rate limits ------------------------------------------------------------------------------


async def test_hourly_limit_admits_exactly_its_number(upstream: Settings, router: Any) -> None:
    """Twenty concurrent calls against max_requests_per_hour=7 admit exactly seven."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, max_requests_per_hour=7))
    replies = await asyncio.gather(*(call(http, tenant, max_tokens=1) for _ in range(20)))
    codes = sorted(r.status_code for r in replies)
    assert codes == [200] * 7 + [429] * 13
    refused = next(r for r in replies if r.status_code == 429)
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["limit_name"] == "max_requests_per_hour"
    assert refused.headers["x-ratelimit-limit"] == "7"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert 0 < int(refused.headers["retry-after"]) <= 3600
    assert int(refused.headers["x-ratelimit-reset"]) == int(refused.headers["retry-after"])


async def test_success_carries_rate_limit_headers(upstream: Settings, router: Any) -> None:
    """An admitted call reports its tightest limit in X-RateLimit-* headers."""
    http = await make_client(router)
    tenant = await login(
        http, await create_tenant(upstream, max_requests_per_hour=50, max_requests_per_second=20)
    )
    reply = await call(http, tenant, max_tokens=1)
    assert reply.headers["x-ratelimit-limit"] == "20"
    assert reply.headers["x-ratelimit-remaining"] == "19"
    assert int(reply.headers["x-ratelimit-reset"]) in (1,)


async def test_burst_limit_is_exact_within_one_second(upstream: Settings) -> None:
    """Fifty concurrent admissions in the same second against a burst limit of 5 admit five."""
    governor = services.governor.get()
    now_ms = int(time.time()) * 1000 + 100
    limit = Limit("max_requests_per_second", "ps:proj_burst", 5, 1)

    async def one() -> bool:
        try:
            await governor.admit(now_ms=now_ms, limits=[limit])
            return True
        except Exception:
            return False

    results = await asyncio.gather(*(one() for _ in range(50)))
    assert results.count(True) == 5


async def test_burst_limit_applies_to_the_api(upstream: Settings, router: Any) -> None:
    """A project with max_requests_per_second=2 gets 429s from a burst of ten calls."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, max_requests_per_second=2))
    replies = await asyncio.gather(*(call(http, tenant, max_tokens=1) for _ in range(10)))
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert 2 <= len(ok) <= 4  # two per second; the burst may straddle one boundary
    assert len(ok) + len(refused) == 10
    assert {r.json()["error"]["limit_name"] for r in refused} == {"max_requests_per_second"}


async def test_ip_limit_counts_the_client_ip(
    configure: Any, settings: Settings, mock: MockUpstream, router: Any
) -> None:
    """RATE_LIMIT_IP_PER_HOUR limits each client IP separately, across projects."""
    current = configure(openai_api_key="k", openai_base_url=mock.url, rate_limit_ip_per_hour=3)
    first = await make_client(router, "10.0.0.1")
    second = await make_client(router, "10.0.0.2")
    tenant = await login(first, await create_tenant(current))
    codes = [(await call(first, tenant, max_tokens=1)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert (await call(second, tenant, max_tokens=1)).status_code == 200


async def test_forwarded_for_is_trusted_only_from_trusted_proxies(
    configure: Any, settings: Settings, mock: MockUpstream, router: Any
) -> None:
    """X-Forwarded-For picks the client IP only when the peer is a trusted proxy."""
    current = configure(
        openai_api_key="k",
        openai_base_url=mock.url,
        rate_limit_ip_per_hour=2,
        trusted_proxies="10.10.0.0/16",
    )
    proxy = await make_client(router, "10.10.0.5")
    tenant = await login(proxy, await create_tenant(current))
    for client_ip in ("203.0.113.1", "203.0.113.2"):
        for _ in range(2):
            reply = await call(proxy, tenant, max_tokens=1, headers={"X-Forwarded-For": client_ip})
            assert reply.status_code == 200
    assert (
        await call(proxy, tenant, max_tokens=1, headers={"X-Forwarded-For": "203.0.113.1"})
    ).status_code == 429
    # From an untrusted peer the header is ignored: the peer itself is limited.
    rogue = await make_client(router, "192.0.2.9")
    codes = [
        (
            await call(rogue, tenant, max_tokens=1, headers={"X-Forwarded-For": f"198.51.100.{i}"})
        ).status_code
        for i in range(3)
    ]
    assert codes == [200, 200, 429]


async def test_rate_limiting_can_be_turned_off(
    configure: Any, settings: Settings, mock: MockUpstream, router: Any
) -> None:
    """RATE_LIMITING_ENABLED=false admits beyond every rate limit (budget still applies)."""
    current = configure(openai_api_key="k", openai_base_url=mock.url, rate_limiting_enabled=False)
    http = await make_client(router)
    tenant = await login(http, await create_tenant(current, max_requests_per_hour=1))
    codes = {(await call(http, tenant, max_tokens=1)).status_code for _ in range(3)}
    assert codes == {200}


# -- budgets ----------------------------------------------------------------------------------


async def test_budget_admits_exactly_the_worst_cases_that_fit(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """With a slow upstream, 60 concurrent calls admit exactly floor(budget / worst case)."""
    per_call = worst_case(100)
    budget = Decimal("0.0010")
    fits = int(to_nano(budget) // to_nano(per_call))
    assert fits == 20
    mock.configure(latency_ms=800)
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, budget_monthly_usd=budget))
    replies = await asyncio.gather(*(call(http, tenant, max_tokens=100) for _ in range(60)))
    codes = [r.status_code for r in replies]
    assert codes.count(200) == fits
    assert codes.count(402) == 60 - fits
    assert mock.stats()["requests"] == fits
    rows = await ledger_rows(upstream)
    assert sum(r["cost_usd"] for r in rows) <= budget
    denied = next(r for r in replies if r.status_code == 402).json()["error"]
    assert denied["code"] == "budget_exceeded"
    assert denied["budget_usd"] == "0.001"
    assert Decimal(denied["remaining_usd"]) < per_call


async def test_settled_calls_release_their_reservation(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """After each call settles, only its actual cost stays spent; the rest is free again."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, budget_monthly_usd="0.0010"))
    for _ in range(30):  # 30 sequential calls: more than the 20 worst cases that fit at once
        reply = await call(http, tenant, max_tokens=100)
        assert reply.status_code == 200
    budget_key, resv_key, _ = budget_keys(tenant.project_id, _month())
    redis = deps.redis.get()
    assert int(await redis.call("HGET", budget_key, "reserved")) == 0
    assert int(await redis.call("ZCARD", resv_key)) == 0
    spent = int(await redis.call("HGET", budget_key, "spent"))
    rows = await ledger_rows(upstream)
    assert spent == to_nano(sum((r["cost_usd"] for r in rows), Decimal(0)))


def _month() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y%m")


async def test_a_dead_calls_reservation_is_released_after_the_timeout(
    configure: Any, settings: Settings, mock: MockUpstream, router: Any
) -> None:
    """A reservation nobody settles (a crashed call) is released once its deadline passes."""
    current = configure(
        openai_api_key="k", openai_base_url=mock.url, reservation_timeout_seconds=1.0
    )
    http = await make_client(router)
    tenant = await login(http, await create_tenant(current, budget_monthly_usd="0.0001"))
    per_call = to_nano(worst_case(200))  # 88.5 µUSD: one fits in 0.0001, two do not
    now_ms = int(time.time() * 1000)
    # A call that was admitted and then died: reserved, never settled.
    await services.governor.get().admit(
        now_ms=now_ms,
        budget=BudgetClaim(
            tenant.project_id,
            _month(),
            "req_dead",
            per_call,
            to_nano(Decimal("0.0001")),
            now_ms + 1000,
        ),
    )
    assert (await call(http, tenant, max_tokens=200)).status_code == 402
    await asyncio.sleep(1.2)
    assert (await call(http, tenant, max_tokens=200)).status_code == 200


async def test_lost_spend_is_rebuilt_from_the_ledger(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """If Redis forgets the month's spend, it is rebuilt from the ledger before admitting."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, budget_monthly_usd="0.0010"))
    for _ in range(5):
        assert (await call(http, tenant, max_tokens=100)).status_code == 200
    rows = await ledger_rows(upstream)
    spent_before = sum((r["cost_usd"] for r in rows), Decimal(0))
    budget_key, _, _ = budget_keys(tenant.project_id, _month())
    redis = deps.redis.get()
    await redis.call("DEL", budget_key)
    assert (await call(http, tenant, max_tokens=100)).status_code == 200
    rebuilt = int(await redis.call("HGET", budget_key, "spent"))
    last = (await ledger_rows(upstream))[-1]["cost_usd"]
    assert rebuilt == to_nano(spent_before) + to_nano(last)


async def test_soft_threshold_is_counted_once_a_month(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """Crossing 80% of the budget is counted (and logged) once per month, not once per call."""
    http = await make_client(router)
    # Each call costs 8 * 0.1e-6 + 12 * 0.4e-6 = 5.6e-6 USD: the 15th crosses 80% of 0.0001,
    # the 17th no longer fits its 13.2e-6 worst case.
    tenant = await login(http, await create_tenant(upstream, budget_monthly_usd="0.0001"))
    codes = [(await call(http, tenant, max_tokens=12)).status_code for _ in range(20)]
    assert codes == [200] * 16 + [402] * 4
    telemetry = deps.telemetry.get()
    await telemetry.flush()
    crossings = await deps.redis.get().call(
        "HGET", "bx:m:counters", f"budget_soft_threshold_total|project={tenant.project_id}"
    )
    assert int(crossings) == 1


# -- PII --------------------------------------------------------------------------------------

PII_PROMPT = [{"role": "user", "content": "Meu CPF é 529.982.247-25 e o e-mail ana@example.com"}]


async def test_pii_is_blocked_by_default(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """With pii_detection, a prompt with a CPF and an e-mail gets 422 naming the kinds only."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, compliance_rules=("pii_detection",)))
    reply = await http.post(
        "/api/v1/llm/invoke",
        headers=tenant.auth,
        json={"model": "gpt-4.1-nano", "messages": PII_PROMPT},
    )
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["code"] == "pii_detected"
    assert error["pii_kinds"] == ["cpf", "email"]
    assert "529.982" not in reply.text
    assert "ana@example.com" not in reply.text
    assert mock.stats()["requests"] == 0


async def test_pii_can_be_redacted_before_the_upstream(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """With pii_action=redact the upstream receives the prompt with the data masked."""
    http = await make_client(router)
    tenant = await login(
        http,
        await create_tenant(
            upstream, compliance_rules=("pii_detection", "lgpd"), pii_action="redact"
        ),
    )
    reply = await http.post(
        "/api/v1/llm/invoke",
        headers=tenant.auth,
        json={"model": "gpt-4.1-nano", "messages": PII_PROMPT},
    )
    assert reply.status_code == 200
    assert mock.stats()["last_messages"] == [
        {"role": "user", "content": "Meu CPF é [CPF] e o e-mail [EMAIL]"}
    ]


async def test_clean_prompts_pass_pii_detection(upstream: Settings, router: Any) -> None:
    """Numbers that are not personal data (prices, dates, invalid CPFs) are not blocked."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, compliance_rules=("pii_detection",)))
    text = "O seguro custa R$ 1.234,56 desde 27/07/2025; pedido 123.456.789-00 (inválido)."
    reply = await http.post(
        "/api/v1/llm/invoke",
        headers=tenant.auth,
        json={"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": text}]},
    )
    assert reply.status_code == 200


@pytest.mark.parametrize(
    "budget",
    [{"pii_scan_max_chars": 1024}, {"pii_scan_timeout_seconds": 0.000_001}],
    ids=["size", "time"],
)
async def test_pii_detection_fails_closed(
    upstream: Settings, configure: Any, router: Any, mock: MockUpstream, budget: dict[str, Any]
) -> None:
    """A prompt whose scan would exceed the size or time budget is refused, never let through."""
    current = configure(openai_api_key="k", openai_base_url=mock.url, **budget)
    http = await make_client(router)
    tenant = await login(http, await create_tenant(current, compliance_rules=("pii_detection",)))
    text = "Sem dados pessoais, apenas texto comum para ocupar espaço. " * 1200  # ~70 KB
    reply = await http.post(
        "/api/v1/llm/invoke",
        headers=tenant.auth,
        json={"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": text}]},
    )
    assert reply.status_code == 422
    assert reply.json()["error"]["code"] == "pii_check_failed"
    assert mock.stats()["requests"] == 0


# -- idempotency ------------------------------------------------------------------------------


async def test_idempotent_retry_returns_the_first_answer(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """A retry with the same Idempotency-Key replays the answer: one upstream call, one charge."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream))
    headers = {**tenant.auth, "Idempotency-Key": "order-42"}
    body = {"model": "gpt-4.1-nano", "messages": MESSAGES}
    first = await http.post("/api/v1/llm/invoke", json=body, headers=headers)
    second = await http.post("/api/v1/llm/invoke", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert mock.stats()["requests"] == 1
    assert len(await ledger_rows(upstream)) == 1


async def test_idempotency_key_with_another_body_is_refused(
    upstream: Settings, router: Any
) -> None:
    """Reusing an Idempotency-Key for a different request is a 400."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream))
    headers = {**tenant.auth, "Idempotency-Key": "k1"}
    await http.post(
        "/api/v1/llm/invoke", headers=headers, json={"model": "gpt-4.1-nano", "messages": MESSAGES}
    )
    other = await http.post(
        "/api/v1/llm/invoke", headers=headers, json={"model": "gpt-4.1-mini", "messages": MESSAGES}
    )
    assert other.status_code == 400
    assert other.json()["error"]["code"] == "idempotency_key_reused"


async def test_concurrent_idempotent_calls_reach_the_upstream_once(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """Two simultaneous calls with one key: one is served, the other told it is in progress."""
    mock.configure(latency_ms=300)
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream))
    headers = {**tenant.auth, "Idempotency-Key": "same"}
    body = {"model": "gpt-4.1-nano", "messages": MESSAGES}
    replies = await asyncio.gather(
        *(http.post("/api/v1/llm/invoke", json=body, headers=headers) for _ in range(2))
    )
    assert sorted(r.status_code for r in replies) == [200, 409]
    assert mock.stats()["requests"] == 1


async def test_failed_idempotent_call_can_be_retried(
    configure: Any, settings: Settings, mock: MockUpstream, router: Any
) -> None:
    """When the first attempt fails upstream, the same key may be retried and then succeeds."""
    current = configure(openai_api_key="k", openai_base_url=mock.url, openai_max_retries=0)
    http = await make_client(router)
    tenant = await login(http, await create_tenant(current))
    mock.enqueue({"status": 500})
    headers = {**tenant.auth, "Idempotency-Key": "retry-me"}
    body = {"model": "gpt-4.1-nano", "messages": MESSAGES}
    assert (await http.post("/api/v1/llm/invoke", json=body, headers=headers)).status_code == 502
    assert (await http.post("/api/v1/llm/invoke", json=body, headers=headers)).status_code == 200


# -- response cache ---------------------------------------------------------------------------


async def test_cache_serves_identical_deterministic_calls(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """At temperature 0, a repeated call is served from the cache, free and marked as cached."""
    http = await make_client(router)
    tenant = await login(http, await create_tenant(upstream, cache_enabled=True))
    params = {"max_tokens": 5, "temperature": 0}
    first = await http.post(
        "/api/v1/llm/invoke",
        headers=tenant.auth,
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": params},
    )
    second = await http.post(
        "/api/v1/llm/invoke",
        headers=tenant.auth,
        json={"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": params},
    )
    assert second.headers["x-bradax-cache"] == "HIT"
    assert "x-bradax-cache" not in first.headers
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["cached"] is True
    assert second.json()["cost_usd"] == "0"
    assert mock.stats()["requests"] == 1
    rows = await ledger_rows(upstream)
    assert [(r["cached"], r["cost_usd"]) for r in rows] == [
        (False, Decimal(first.json()["cost_usd"])),
        (True, Decimal(0)),
    ]


async def test_cache_is_off_unless_deterministic_and_allowed(
    upstream: Settings, router: Any, mock: MockUpstream
) -> None:
    """No cache at temperature > 0, nor for projects that do not allow it."""
    http = await make_client(router)
    allowed = await login(http, await create_tenant(upstream, "proj_cache", cache_enabled=True))
    denied = await login(http, await create_tenant(upstream, "proj_nocache"))
    for tenant, temperature in ((allowed, 0.7), (allowed, 0.7), (denied, 0), (denied, 0)):
        reply = await http.post(
            "/api/v1/llm/invoke",
            headers=tenant.auth,
            json={
                "model": "gpt-4.1-nano",
                "messages": MESSAGES,
                "parameters": {"temperature": temperature},
            },
        )
        assert "x-bradax-cache" not in reply.headers
    assert mock.stats()["requests"] == 4


# -- Redis unavailable ------------------------------------------------------------------------


async def test_redis_down_fails_closed(
    configure: Any, settings: Settings, mock: MockUpstream, router: Any
) -> None:
    """With Redis unreachable, an invoke gets 503 and nothing reaches the upstream."""
    healthy = configure(openai_api_key="k", openai_base_url=mock.url)
    http = await make_client(router)
    tenant = await login(http, await create_tenant(healthy))
    await deps.aclose()
    configure(openai_api_key="k", openai_base_url=mock.url, redis_url="redis://127.0.0.1:9/0")
    reply = await call(http, tenant)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "service_unavailable"
    assert mock.stats()["requests"] == 0
