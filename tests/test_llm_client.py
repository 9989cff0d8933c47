"""The upstream client on its own: routes, Azure-style auth, Retry-After, backoff, breaker."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web

from common.llm import Breaker, ModelCatalog, UpstreamClient, backoff, retry_after_seconds
from common.pricing import PriceTable
from common.settings import Settings

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP upstream that records what it receives and answers a fixed completion."""
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(
            {
                "headers": dict(request.headers),
                "query": dict(request.query),
                "body": orjson.loads(await request.read()),
            }
        )
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o",
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4},
            }
        )

    app = web.Application()
    app.router.add_post("/openai/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/openai/v1", seen
    await runner.cleanup()


async def test_azure_style_route_sends_api_key_header_and_query(
    recorder: tuple[str, list[dict[str, Any]]],
) -> None:
    """A route with key_header=api-key and a query sends `api-key` and ?api-version=..."""
    base, seen = recorder
    settings = Settings(
        openai_api_key="default-key",
        model_routes={
            "gpt-4o": {
                "base_url": base,
                "api_key": "azure-key",
                "key_header": "api-key",
                "upstream_model": "my-deployment",
                "query": {"api-version": "preview"},
            }
        },
    )
    client = UpstreamClient(settings, ModelCatalog(settings, PriceTable(settings)))
    try:
        chain = client.catalog.chain("gpt-4o")
        result = await client.complete(
            chain, lambda u: orjson.dumps({**BODY, "model": u.model}), "req_1", client.deadline()
        )
    finally:
        await client.aclose()
    assert (result.prompt_tokens, result.completion_tokens) == (3, 4)
    request = seen[0]
    assert request["headers"]["api-key"] == "azure-key"
    assert "Authorization" not in request["headers"]
    assert request["query"] == {"api-version": "preview"}
    assert request["body"]["model"] == "my-deployment"
    assert request["headers"]["X-Request-ID"] == "req_1"


def test_catalog_serves_only_priced_models() -> None:
    """Models are served when priced; a routed alias inherits its upstream model's price."""
    settings = Settings(
        model_routes={
            "fast": {"upstream_model": "gpt-4.1-nano"},
            "mystery": {"base_url": "http://x/v1"},
        }
    )
    catalog = ModelCatalog(settings, PriceTable(settings))
    fast = catalog.get("fast")
    assert fast is not None
    assert (fast.model, fast.price.input_per_1m) == ("gpt-4.1-nano", Decimal("0.10"))
    assert catalog.get("mystery") is None
    assert "gpt-4o-mini" in catalog.models


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:05 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    """Retry-After in seconds, milliseconds or as a (past) HTTP date; garbage is ignored."""
    assert retry_after_seconds(headers, now=1_800_000_000) == expected


def test_backoff_is_jittered_and_capped() -> None:
    """Backoff grows exponentially, is never negative and never exceeds the cap."""
    rng = random.Random(1)
    for attempt in range(1, 12):
        for _ in range(50):
            wait = backoff(attempt, rng)
            assert 0 <= wait <= min(8.0, 0.25 * 2 ** (attempt - 1))


def test_breaker_opens_half_opens_and_closes() -> None:
    """After N failures the breaker opens; after the reset it lets one probe through."""
    now = [0.0]
    breaker = Breaker(threshold=2, reset=10, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_after() == 11
    now[0] = 10.0
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()  # one probe at a time
    breaker.failure()  # the probe failed: open again
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allow()
