"""Prompt-cache tokens: priced apart per route, reserved at the dearest prompt price, charged
at it when the usage cannot be trusted, and ledgered beside the prompt tokens."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest

from common.pricing import MILLION, Price, PriceTable
from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, ledger_rows

ALIAS = "cached-nano"
# USD per 1M: input, output, cache read, cache write (a write dearer than plain input)
PRICES = (Decimal("1.00"), Decimal("4.00"), Decimal("0.10"), Decimal("1.25"))


def test_cost_prices_each_kind_of_prompt_token_apart() -> None:
    """Plain, cache-read and cache-written prompt tokens each at their price."""
    price = Price(*PRICES)
    assert (
        price.cost(100, 10, cache_read=60, cache_write=30)
        == (10 * PRICES[0] + 10 * PRICES[1] + 60 * PRICES[2] + 30 * PRICES[3]) / MILLION
    )
    assert Price(Decimal(1), Decimal(4)).cost(100, 10, 60, 30) == Decimal(140) / MILLION


@pytest.mark.parametrize(
    ("read", "write", "split"),
    [
        (None, None, (0, 0)),  # no cache prices: every prompt token at the input price
        (Decimal("0.1"), Decimal("1.25"), (0, 1000)),  # writes dearest
        (Decimal("2"), None, (1000, 0)),  # an odd route where reads cost more
        (Decimal("0.1"), Decimal("0.5"), (0, 0)),  # both cheaper than input
    ],
)
def test_the_bound_is_the_dearest_split(
    read: Decimal | None, write: Decimal | None, split: tuple[int, int]
) -> None:
    """What admission reserves covers any split of the prompt the upstream may bill."""
    price = Price(Decimal(1), Decimal(4), read, write)
    assert price.worst_split(1000) == split
    worst = price.bound(1000, 10)
    assert worst == price.cost(1000, 10, *split)
    for r, w in ((0, 0), (1000, 0), (0, 1000), (400, 600)):
        assert price.cost(1000, 10, r, w) <= worst


def test_route_cache_prices_reach_the_price_table() -> None:
    """MODEL_ROUTES' cache prices, beside prices inherited from the list."""
    settings = Settings(
        model_routes={
            ALIAS: {
                "upstream_model": "gpt-4.1-nano",
                "cache_read_per_1m": "0.025",
                "cache_write_per_1m": "0.2",
            }
        }
    )
    price = PriceTable(settings).get(ALIAS)
    assert price == Price(Decimal("0.10"), Decimal("0.40"), Decimal("0.025"), Decimal("0.2"))


@pytest.fixture
async def broker(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    """The broker over the mock with a route that prices cache tokens apart."""
    route = {
        "upstream_model": "gpt-4.1-nano",
        "input_per_1m": str(PRICES[0]),
        "output_per_1m": str(PRICES[1]),
        "cache_read_per_1m": str(PRICES[2]),
        "cache_write_per_1m": str(PRICES[3]),
    }
    current = configure(
        openai_api_key="mock-key",
        openai_base_url=mock.url,
        openai_max_retries=0,
        model_routes={ALIAS: route},
    )
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    tenant = await create_tenant(current, allowed_models=(ALIAS,))
    return http, tenant, current


def _client(http: httpx2.AsyncClient, tenant: Tenant) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=tenant.api_key, http_client=http, max_retries=0
    )


async def test_cached_prompt_tokens_are_ledgered_and_priced_apart(
    broker: Any, mock: MockUpstream
) -> None:
    """OpenAI's cached_tokens (plain and streamed) become the row's cache reads, priced at the
    route's cache-read price; the client sees them in its usage."""
    http, tenant, settings = broker
    client = _client(http, tenant)
    mock.enqueue({"cache": {"read": 5}}, {"cache": {"read": 4}})
    answer = await client.chat.completions.create(
        model=ALIAS, max_tokens=3, messages=[{"role": "user", "content": "um dois três quatro"}]
    )
    assert answer.usage is not None
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 5
    stream = await client.chat.completions.create(
        model=ALIAS,
        max_tokens=3,
        stream=True,
        messages=[{"role": "user", "content": "um dois três quatro"}],
    )
    async for _ in stream:
        pass
    rows = await ledger_rows(settings, tenant.project_id)
    calls = mock.stats()["calls"]
    assert [(r["cache_read_tokens"], r["cache_write_tokens"]) for r in rows] == [(5, 0), (4, 0)]
    price = Price(*PRICES)
    for row, call in zip(rows, calls, strict=True):
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            call["prompt_tokens"],
            call["completion_tokens"],
        )
        assert row["cache_read_tokens"] == call["cache_read_tokens"]
        assert row["cost_usd"] == price.cost(
            call["prompt_tokens"], call["completion_tokens"], call["cache_read_tokens"]
        )


async def test_unverifiable_usage_is_charged_at_the_dearest_prompt_price(
    broker: Any, mock: MockUpstream
) -> None:
    """No usage in the answer: the row is the bound, every prompt token at the cache-write
    price (dearer than input on this route), and never more than what was reserved."""
    http, tenant, settings = broker
    mock.enqueue({"usage": "absent"})
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": ALIAS, "max_tokens": 3, "messages": [{"role": "user", "content": "oi"}]},
        headers={"Authorization": f"Bearer {tenant.api_key}"},
    )
    assert reply.status_code == 200, reply.text
    [row] = await ledger_rows(settings, tenant.project_id)
    assert (row["status"], row["error_code"]) == ("usage_unverified", "usage_missing")
    assert row["cache_write_tokens"] == row["prompt_tokens"] > 0
    assert row["completion_tokens"] == 3
    price = Price(*PRICES)
    assert row["cost_usd"] == price.bound(row["prompt_tokens"], 3)
    assert row["cost_usd"] > price.cost(row["prompt_tokens"], 3)


async def test_a_call_billed_by_an_unknown_upstream_is_charged_at_the_dearest(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """The first upstream fails, its dearer fallback times out (it may be generating, and
    billing): the call is charged at the fallback's bound, the worst case admission reserved,
    not at the first upstream's cheaper price."""
    current = configure(
        openai_api_key="mock-key",
        openai_base_url=mock.url,
        openai_max_retries=0,
        openai_timeout=1.5,
        model_routes={
            "cheap": {"upstream_model": "gpt-4.1-nano", "fallbacks": ["pricey"]},
            "pricey": {"upstream_model": "gpt-4.1"},
        },
    )
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    tenant = await create_tenant(current, allowed_models=("cheap",))
    mock.enqueue({"status": 500}, {"hang": True})
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": "cheap", "max_tokens": 5, "messages": [{"role": "user", "content": "oi"}]},
        headers={"Authorization": f"Bearer {tenant.api_key}"},
    )
    assert reply.status_code == 504, reply.text
    assert [c["model"] for c in mock.stats()["calls"]] == ["gpt-4.1-nano", "gpt-4.1"]
    [row] = await ledger_rows(current, tenant.project_id)
    assert (row["status"], row["error_code"]) == ("upstream_error", "upstream_timeout")
    cheap, pricey = Price(Decimal("0.10"), Decimal("0.40")), Price(Decimal("2.00"), Decimal("8.00"))
    assert row["cost_usd"] == pricey.bound(row["prompt_tokens"], row["completion_tokens"])
    assert row["cost_usd"] > cheap.bound(row["prompt_tokens"], row["completion_tokens"])
