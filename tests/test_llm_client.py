"""The upstream client on its own: routes, Azure-style auth, Retry-After, backoff, breaker."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web

from common.breaker import Breaker
from common.catalog import ModelCatalog
from common.errors import UpstreamBadResponse
from common.llm import UpstreamClient, backoff
from common.pricing import PriceTable
from common.settings import Settings
from common.upstream_errors import retry_after_seconds
from tests.conftest import serve_app

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
    async with serve_app(app) as root:
        yield f"{root}/openai/v1", seen


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
            chain, lambda u: {**BODY, "model": u.model}, "req_1", client.deadline()
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


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A real HTTP upstream answering 200 with each queued raw body in turn (JSON or SSE)."""
    bodies: list[bytes] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        body = bodies.pop(0)
        if body.startswith(b"data:"):
            reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await reply.prepare(request)
            for event in body.split(b"\n\n"):
                if event:
                    await reply.write(event + b"\n\n")
            return reply
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_app(app) as root:
        yield f"{root}/v1", bodies


LONG_KEY = "sk-upstream-key-0123456789abcdef"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"id": "x"}', "shape"),
        (b"[1, 2]", "shape"),
        (b'{"choices": [', "malformed"),
        (b'{"choices": [], "echo": "Bearer ' + LONG_KEY.encode() + b'"}', "malformed"),
    ],
)
async def test_unusable_200_is_a_bad_response_after_one_attempt(
    scripted: tuple[str, list[bytes]], body: bytes, reason: str
) -> None:
    """A 200 that is not a chat completion, or echoes our key, raises UpstreamBadResponse
    (accepted, with its reason) after one attempt even with retries configured."""
    base, bodies = scripted
    bodies.extend([body, body, body])
    settings = Settings(openai_api_key=LONG_KEY, openai_base_url=base, openai_max_retries=2)
    client = UpstreamClient(settings, ModelCatalog(settings, PriceTable(settings)))
    try:
        with pytest.raises(UpstreamBadResponse) as caught:
            await client.complete(
                client.catalog.chain("gpt-4o"), lambda u: BODY, "r", client.deadline()
            )
    finally:
        await client.aclose()
    assert (caught.value.reason, caught.value.accepted, caught.value.status) == (reason, True, 502)
    assert LONG_KEY not in caught.value.message
    assert len(bodies) == 2  # exactly one attempt


async def test_unreadable_usage_leaves_the_answer_usable_and_flagged(
    scripted: tuple[str, list[bytes]],
) -> None:
    """A chat completion whose usage is unreadable is still an answer, with no token claim
    and `usage_invalid` set (the invoke path charges it at its bound), after one attempt."""
    base, bodies = scripted
    bodies.extend([b'{"choices": [], "usage": {"prompt_tokens": "many"}}'] * 3)
    settings = Settings(openai_api_key=LONG_KEY, openai_base_url=base, openai_max_retries=2)
    client = UpstreamClient(settings, ModelCatalog(settings, PriceTable(settings)))
    try:
        result = await client.complete(
            client.catalog.chain("gpt-4o"), lambda u: BODY, "r", client.deadline()
        )
    finally:
        await client.aclose()
    assert (result.prompt_tokens, result.completion_tokens, result.usage_invalid) == (
        None,
        None,
        True,
    )
    assert len(bodies) == 2  # exactly one attempt


@pytest.mark.parametrize(
    ("limits", "finish"),
    [
        ({}, "completed"),
        ({"upstream_max_event_bytes": 4096}, "oversize"),
        ({"upstream_max_stream_bytes": 8192}, "oversize"),
    ],
)
async def test_stream_limits_per_event_and_per_stream(
    scripted: tuple[str, list[bytes]], limits: dict[str, int], finish: str
) -> None:
    """A stream stops with finish=oversize at the first event over UPSTREAM_MAX_EVENT_BYTES or
    once it passes UPSTREAM_MAX_STREAM_BYTES; under both it completes."""
    base, bodies = scripted
    chunk = b'data: {"choices": [{"delta": {"content": "' + b"y" * 3000 + b'"}}]}\n\n'
    bodies.append(chunk * 2 + b'data: {"choices": [{"delta": {"content": "' + b"z" * 6000
                  + b'"}}]}\n\n' + b"data: [DONE]\n\n")  # fmt: skip
    settings = Settings(openai_api_key="k", openai_base_url=base, **limits)
    client = UpstreamClient(settings, ModelCatalog(settings, PriceTable(settings)))
    try:
        stream = await client.open_stream(
            client.catalog.chain("gpt-4o"), lambda u: BODY, "r", client.deadline(),
            strip_usage=False,
        )  # fmt: skip
        events = [event async for event in stream.events()]
        stream.close()
    finally:
        await client.aclose()
    assert stream.finish == finish
    if finish == "completed":
        assert len(events) == 4
    elif "upstream_max_event_bytes" in limits:
        assert [len(event) for event in events] == [len(chunk)] * 2  # up to the big one
    else:
        assert sum(len(event) for event in events) <= 8192


def test_breaker_release_frees_the_probe_without_closing() -> None:
    """release() lets the next probe through but neither closes nor re-opens the breaker."""
    now = [0.0]
    breaker = Breaker(threshold=1, reset=10, clock=lambda: now[0])
    breaker.failure()
    now[0] = 10.0
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.state == "half_open"
    assert breaker.allow()


async def test_stream_event_echoing_our_key_stops_the_stream(
    scripted: tuple[str, list[bytes]],
) -> None:
    """An SSE event that contains the upstream key is not relayed: the stream stops there with
    finish=unusable."""
    base, bodies = scripted
    first = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
    echo = b'data: {"choices": [{"delta": {"content": "' + LONG_KEY.encode() + b'"}}]}\n\n'
    bodies.append(first + echo + b"data: [DONE]\n\n")
    settings = Settings(openai_api_key=LONG_KEY, openai_base_url=base)
    client = UpstreamClient(settings, ModelCatalog(settings, PriceTable(settings)))
    try:
        stream = await client.open_stream(
            client.catalog.chain("gpt-4o"), lambda u: BODY, "r", client.deadline(),
            strip_usage=False,
        )  # fmt: skip
        events = [event async for event in stream.events()]
        stream.close()
    finally:
        await client.aclose()
    assert events == [first]
    assert stream.finish == "unusable"
