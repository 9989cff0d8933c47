"""LangChain's ChatOpenAI (Responses API and chat completions) and ChatAnthropic against the
broker served as `bradax serve` serves it, over HTTP: unchanged, governed and ledgered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI

from common.settings import Settings
from tests.conftest import MockUpstream, Process, Tenant, create_tenant, ledger_rows, serve_broker

MODEL = "gpt-4.1-nano"


@pytest.fixture
async def served(
    settings: Settings, configure: Any, mock: MockUpstream, tmp_path: Path
) -> Iterator[tuple[Process, Tenant, Settings]]:
    """The broker as a child process over the mock, with one project."""
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url, openai_max_retries=0)
    tenant = await create_tenant(current)
    broker = serve_broker(current, tmp=tmp_path)
    try:
        yield broker, tenant, current
    finally:
        broker.stop()


def claude(broker: Process, key: str, model: str, tokens: int) -> ChatAnthropic:
    """LangChain's ChatAnthropic on the broker (the Messages face)."""
    return ChatAnthropic(
        model_name=model,
        base_url=broker.url,
        api_key=key,
        max_tokens_to_sample=tokens,
        max_retries=0,
        timeout=30,
        stop=None,
    )


def responses(broker: Process, key: str, model: str, tokens: int) -> ChatOpenAI:
    """LangChain's ChatOpenAI on the broker's Responses API."""
    return ChatOpenAI(
        model=model,
        base_url=broker.url + "/v1",
        api_key=key,
        use_responses_api=True,
        max_tokens=tokens,
        max_retries=0,
    )


def _text(message: AIMessage | AIMessageChunk) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")


async def test_chat_openai_on_the_responses_api(served: Any, mock: MockUpstream) -> None:
    """ChatOpenAI(use_responses_api=True): invoke and stream answer the mock's words, with
    usage, and every call is one ledger row at a non-zero cost."""
    broker, tenant, settings = served
    llm = responses(broker, tenant.api_key, MODEL, 4)
    answer = await llm.ainvoke("Explique seguros")
    assert _text(answer) == "w0 w1 w2 w3"
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == 4
    streamed: AIMessageChunk | None = None
    async for chunk in llm.astream("Explique seguros"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None
    assert _text(streamed) == "w0 w1 w2 w3"
    assert streamed.usage_metadata is not None
    assert streamed.usage_metadata["output_tokens"] == 4
    rows = await ledger_rows(settings, tenant.project_id)
    assert [(r["status"], r["completion_tokens"], r["streamed"]) for r in rows] == [
        ("success", 4, False),
        ("success", 4, True),
    ]
    assert all(r["cost_usd"] > 0 for r in rows)
    assert [c["prompt_tokens"] for c in mock.stats()["calls"]] == [r["prompt_tokens"] for r in rows]


async def test_chat_openai_on_chat_completions(served: Any) -> None:
    """ChatOpenAI's default (chat completions) through the broker, plain and streamed."""
    broker, tenant, settings = served
    llm = ChatOpenAI(model=MODEL, base_url=broker.url + "/v1", api_key=tenant.api_key, max_tokens=3)
    assert _text(await llm.ainvoke("oi")) == "w0 w1 w2"
    parts = [_text(c) async for c in llm.astream("oi")]
    assert "".join(parts) == "w0 w1 w2"
    rows = await ledger_rows(settings, tenant.project_id)
    assert [r["completion_tokens"] for r in rows] == [3, 3]


async def test_chat_anthropic_through_the_messages_face(served: Any) -> None:
    """ChatAnthropic pointed at the broker: invoke and stream, usage and the ledger."""
    broker, tenant, settings = served
    llm = claude(broker, tenant.api_key, MODEL, 5)
    answer = await llm.ainvoke("Explique seguros")
    assert _text(answer) == "w0 w1 w2 w3 w4"
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == 5
    streamed: AIMessageChunk | None = None
    async for chunk in llm.astream("Explique seguros"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None
    assert _text(streamed) == "w0 w1 w2 w3 w4"
    rows = await ledger_rows(settings, tenant.project_id)
    assert [(r["completion_tokens"], r["streamed"]) for r in rows] == [(5, False), (5, True)]
    assert all(r["cost_usd"] > 0 for r in rows)


async def test_a_project_over_budget_is_refused_in_langchain_too(
    settings: Settings, configure: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    """A 402 reaches LangChain as the SDK's own error, from both faces; no upstream call."""
    import anthropic
    import openai

    current = configure(openai_api_key="mock-key", openai_base_url=mock.url)
    tenant = await create_tenant(current, "proj_broke", budget_monthly_usd="0.0001")
    broker = serve_broker(current, tmp=tmp_path)
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            await responses(broker, tenant.api_key, MODEL, 4000).ainvoke("oi")
        assert refused.value.status_code == 402
        with pytest.raises(anthropic.APIStatusError) as again:
            await claude(broker, tenant.api_key, MODEL, 4000).ainvoke("oi")
        assert again.value.status_code == 402
    finally:
        broker.stop()
    assert mock.stats()["requests"] == 0


async def test_langchain_over_native_upstreams(
    settings: Settings, configure: Any, mock: MockUpstream, tmp_path: Path
) -> None:
    """ChatAnthropic and ChatOpenAI on the Responses API, on models served by native
    Anthropic and Gemini upstreams: both answer, and the ledger has each call's tokens."""
    routes = {
        "claude": {
            "provider": "anthropic",
            "base_url": mock.root + "/v1",
            "api_key": "mock-key",
            "upstream_model": "claude-sonnet-4-5",
            "input_per_1m": "3",
            "output_per_1m": "15",
        },
        "gemini": {
            "provider": "gemini",
            "base_url": mock.root + "/v1beta",
            "api_key": "mock-key",
            "upstream_model": "gemini-2.5-flash",
            "input_per_1m": "0.30",
            "output_per_1m": "2.50",
        },
    }
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url, openai_max_retries=0)
    mock.configure(models=["claude-sonnet-4-5", "gemini-2.5-flash"])
    tenant = await create_tenant(current, allowed_models=tuple(routes))
    broker = serve_broker(current, tmp=tmp_path, MODEL_ROUTES=orjson.dumps(routes).decode())
    try:
        for model in routes:
            answer = await claude(broker, tenant.api_key, model, 3).ainvoke("oi")
            assert _text(answer) == "w0 w1 w2", model
            answer = await responses(broker, tenant.api_key, model, 3).ainvoke("oi")
            assert _text(answer) == "w0 w1 w2", model
    finally:
        broker.stop()
    rows = await ledger_rows(current, tenant.project_id)
    assert [(r["model"], r["completion_tokens"]) for r in rows] == [
        ("claude", 3),
        ("claude", 3),
        ("gemini", 3),
        ("gemini", 3),
    ]
    assert all(r["cost_usd"] > 0 for r in rows)
