"""Exact metering in every pair of API face and upstream dialect, plain, streamed, cut,
errored mid-stream and abandoned: the table test.

One broker process (`bradax serve`) per dialect, over the bundled mock speaking that dialect.
Each face calls the dialect's model in each mode; every call must leave exactly one ledger
row, and its tokens (prompt, completion, cache reads and writes) and cost must be exactly
what the mock billed at the route's prices, to the nano-dollar. A stream the upstream cuts
or breaks off with an error event, or the client abandons, has no final usage: it is charged
at its bound, never less than what the mock billed and never $0.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from common.pricing import Price
from common.settings import Settings
from tests.conftest import (
    MockUpstream,
    Process,
    create_tenant,
    ledger_rows,
    serve_broker,
    tokens,
)

FACES = ("invoke", "openai", "responses", "anthropic")
MODES = ("plain", "stream", "cut", "errored", "abandoned")
PRICES = (Decimal("1.10"), Decimal("4.40"), Decimal("0.11"), Decimal("1.375"))
MAX_TOKENS = 6
CACHE = {"read": 3, "write": 2}
# An error each provider may send in the middle of a stream
ERRORS = {
    "openai": "server_error",
    "anthropic": "overloaded_error",
    "bedrock": "modelStreamErrorException",
    "gemini": "INTERNAL",
}


@dataclass(frozen=True)
class Dialect:
    """A route to the mock in one dialect: its base URL under the mock and upstream model."""

    base: str  # appended to the mock's root
    upstream_model: str


DIALECTS = {
    "openai": Dialect("/v1", "gpt-4.1-nano"),
    "anthropic": Dialect("/v1", "claude-sonnet-4-5"),
    "bedrock": Dialect("", "anthropic.claude-sonnet-4-5-v1:0"),
    "gemini": Dialect("/v1beta", "gemini-2.5-flash"),
}
TEXT = "Explique o que é um seguro de vida em poucas palavras"


def _request(face: str, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
    """The path and body of one call in `face`'s own format."""
    messages = [{"role": "user", "content": TEXT}]
    if face == "invoke":
        body = {"model": model, "messages": messages, "parameters": {"max_tokens": MAX_TOKENS}}
        return "/api/v1/llm/invoke", {**body, "stream": stream}
    if face == "openai":
        body = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS}
        return "/v1/chat/completions", {**body, "stream": stream}
    if face == "responses":
        body = {"model": model, "input": TEXT, "max_output_tokens": MAX_TOKENS}
        return "/v1/responses", {**body, "stream": stream}
    body = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS}
    return "/v1/messages", {**body, "stream": stream}


@pytest.fixture
async def served(settings: Settings, configure: Any, mock: MockUpstream, tmp_path: Path) -> Any:
    """A broker process with one route per dialect, all to the mock."""
    routes = {
        f"m-{name}": {
            "provider": name,
            "base_url": mock.root + dialect.base,
            "api_key": "mock-key",
            "upstream_model": dialect.upstream_model,
            "input_per_1m": str(PRICES[0]),
            "output_per_1m": str(PRICES[1]),
            "cache_read_per_1m": str(PRICES[2]),
            "cache_write_per_1m": str(PRICES[3]),
        }
        for name, dialect in DIALECTS.items()
    }
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url, openai_max_retries=0)
    mock.configure(models=[d.upstream_model for d in DIALECTS.values()], reply_words=40)
    tenant = await create_tenant(current, allowed_models=tuple(routes))
    broker = serve_broker(current, tmp=tmp_path, MODEL_ROUTES=orjson.dumps(routes).decode())
    try:
        yield broker, tenant, current
    finally:
        broker.stop()


async def _call(
    http: httpx2.AsyncClient,
    broker: Process,
    headers: dict[str, str],
    face: str,
    model: str,
    mode: str,
) -> str:
    """Make one call; returns its request id."""
    path, body = _request(face, model, mode != "plain")
    if mode == "plain":
        reply = await http.post(broker.url + path, json=body, headers=headers)
        assert reply.status_code == 200, (face, mode, reply.text)
        return reply.headers["x-request-id"]
    async with http.stream("POST", broker.url + path, json=body, headers=headers) as reply:
        assert reply.status_code == 200, (face, mode, (await reply.aread())[:300])
        request_id = reply.headers["x-request-id"]
        async for _ in reply.aiter_bytes():
            if mode == "abandoned":
                break  # the client goes away after the first bytes
    return request_id


async def _ledger(settings: Settings, project: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The ledger rows of these calls, once all are there (an abandoned stream settles late)."""
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(50):
        rows = {r["request_id"]: r for r in await ledger_rows(settings, project)}
        if set(ids) <= set(rows):
            break
        await asyncio.sleep(0.1)
    return rows


@pytest.mark.parametrize("dialect", list(DIALECTS))
async def test_every_face_is_metered_exactly_on_the_dialect(
    dialect: str, served: Any, mock: MockUpstream
) -> None:
    broker, tenant, settings = served
    model = f"m-{dialect}"
    async with httpx2.AsyncClient(timeout=30) as http:
        token = await http.post(
            broker.url + "/api/v1/auth/token",
            json={"project_id": tenant.project_id, "api_key": tenant.api_key},
        )
        access = token.json()["access_token"]
        made: list[tuple[str, str, str]] = []
        for face in FACES:
            headers = {"Authorization": f"Bearer {access if face == 'invoke' else tenant.api_key}"}
            for mode in MODES:
                if mode == "cut":
                    mock.enqueue({"cut_after_chunks": 2})
                elif mode == "errored":
                    mock.enqueue({"stream_error": ERRORS[dialect], "cut_after_chunks": 2})
                elif mode == "abandoned":
                    mock.enqueue({"chunk_delay_ms": 20})  # still generating when the client goes
                elif mode in ("plain", "stream"):
                    mock.enqueue({"cache": CACHE})
                made.append((face, mode, await _call(http, broker, headers, face, model, mode)))
    calls = {c["request_id"]: c for c in mock.stats()["calls"]}
    rows = await _ledger(settings, tenant.project_id, [rid for _, _, rid in made])
    assert len(rows) == len(made)
    price = Price(*PRICES)
    wrong = []
    for face, mode, request_id in made:
        call, row = calls[request_id], rows[request_id]
        billed, charged = tokens(call), tokens(row)
        cost = price.cost(*billed[:2], *billed[2:])
        if mode in ("plain", "stream"):
            if (charged, row["cost_usd"], row["status"]) != (billed, cost, "success"):
                wrong.append((face, mode, charged, row["cost_usd"], row["status"], billed, cost))
            continue
        # No final usage: charged at the bound (or, abandoned after the usage, exactly).
        at_bound = row["cost_usd"] == price.bound(row["prompt_tokens"], row["completion_tokens"])
        exact = (charged, row["cost_usd"]) == (billed, cost)
        statuses = ("client_disconnected",) if mode == "abandoned" else ("cut",)
        if (
            row["status"] not in statuses
            or not (at_bound or exact)
            or row["cost_usd"] < cost
            or row["cost_usd"] <= 0
            or row["completion_tokens"] < call["completion_tokens"]
        ):
            wrong.append((face, mode, charged, row["cost_usd"], row["status"], billed, cost))
    assert wrong == []
