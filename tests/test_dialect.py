"""A wire protocol plugs into the upstream client as a Dialect, without touching the retry loop."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web

from common.catalog import ModelCatalog, Upstream
from common.dialect import Answer, WireRequest
from common.errors import BadRequest, UpstreamBadResponse
from common.llm import DIALECTS, UpstreamClient
from common.openai_dialect import OpenAIDialect
from common.pricing import Price, PriceTable
from common.settings import Settings
from common.upstream_errors import malformed
from tests.conftest import serve_app

KEY = "k" * 20


class TextDialect(OpenAIDialect):
    """A made-up protocol: POST /generate, key in x-key, answer {"text", "tokens": [in, out]}."""

    def request(
        self, upstream: Upstream, body: dict[str, Any], request_id: str, forward: Mapping[str, str]
    ) -> WireRequest:
        headers = {"x-key": upstream.api_key or "", "x-request": request_id}
        return WireRequest(f"{upstream.base_url}/generate", headers, orjson.dumps(body))

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        data = orjson.loads(body)
        if not isinstance(data, dict) or "text" not in data:
            raise malformed(upstream, "not a text answer", "shape")
        prompt, completion = data["tokens"]
        return Answer(data, prompt, completion, False)

    def error_tokens(self, body: bytes) -> Iterable[object]:
        return (orjson.loads(body).get("kind"),)


@pytest.fixture
async def text_upstream() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server speaking TextDialect; its answers follow the request's `script`."""
    seen: list[dict[str, Any]] = []

    async def generate(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        seen.append({"headers": dict(request.headers), "body": body})
        step = body["script"][len(seen) - 1]
        if step == "busy":
            return web.json_response({"kind": "rate_limit_error", "say": KEY}, status=503)
        if step == "refuse":
            return web.json_response({"kind": "invalid_value", "say": KEY}, status=400)
        if step == "odd":
            return web.json_response({"something": "else"})
        return web.json_response({"text": "hello", "tokens": [5, 2]})

    app = web.Application()
    app.router.add_post("/v9/generate", generate)
    async with serve_app(app) as root:
        yield f"{root}/v9", seen


def _client() -> UpstreamClient:
    settings = Settings(openai_max_retries=2, openai_timeout=10)
    return UpstreamClient(
        settings,
        ModelCatalog(settings, PriceTable(settings)),
        rng=random.Random(0),
        dialects={**DIALECTS, "text": TextDialect()},
    )


def _upstream(base: str) -> Upstream:
    price = Price(Decimal("1"), Decimal("1"))
    return Upstream("tx", base, KEY, "tx-1", price, dialect="text")


async def _complete(client: UpstreamClient, base: str, script: list[str]) -> Any:
    body = {"script": script}
    try:
        return await client.complete([_upstream(base)], lambda u: body, "req_9", client.deadline())
    finally:
        await client.aclose()


async def test_a_dialect_chooses_endpoint_headers_and_reads_the_answer(
    text_upstream: tuple[str, list[dict[str, Any]]],
) -> None:
    """The upstream's dialect decides where the call goes, how the key travels, what usage is."""
    base, seen = text_upstream
    result = await _complete(_client(), base, ["ok"])
    assert (result.prompt_tokens, result.completion_tokens, result.data["text"]) == (5, 2, "hello")
    assert seen[0]["headers"]["x-key"] == KEY
    assert seen[0]["headers"]["x-request"] == "req_9"


async def test_the_retry_loop_and_error_mapping_serve_every_dialect(
    text_upstream: tuple[str, list[dict[str, Any]]],
) -> None:
    """A 503 in another dialect is retried; a 400 becomes our 400 naming only a safe code."""
    base, seen = text_upstream
    result = await _complete(_client(), base, ["busy", "ok"])
    assert (result.attempts, len(seen)) == (2, 2)
    seen.clear()
    with pytest.raises(BadRequest) as refused:
        await _complete(_client(), base, ["refuse"])
    assert refused.value.details["upstream_code"] == "invalid_value"
    assert KEY not in str(refused.value)


async def test_a_dialect_rejects_an_answer_it_cannot_read(
    text_upstream: tuple[str, list[dict[str, Any]]],
) -> None:
    """A 200 the dialect cannot read is an UpstreamBadResponse and is not retried."""
    base, seen = text_upstream
    with pytest.raises(UpstreamBadResponse) as bad:
        await _complete(_client(), base, ["odd", "ok"])
    assert bad.value.reason == "shape"
    assert len(seen) == 1
