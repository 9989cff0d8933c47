"""Traces and overhead: a real OTLP/HTTP receiver decodes what the broker exports.

The receiver is a small aiohttp server (its own thread and loop) that decodes each POST to
/v1/traces as an ExportTraceServiceRequest (opentelemetry-proto). The broker runs in-process
over the bundled mock upstream, which records the headers it received.
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import httpx2
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from common import deps, tracing_sdk
from common.logs import mask_project
from common.redis import RedisStore
from common.settings import Settings
from common.telemetry import COUNTERS, field
from common.tracing import Tracing
from tests.conftest import MockUpstream, Tenant, create_tenant, free_port, login

CHAT = "/v1/chat/completions"
PROMPT_WORD = "quokkazanzibar"
ANSWER_WORD = "ornitorrincoazul"
STEPS = {"authenticate", "screen", "admit", "chat gpt-4.1-nano", "screen answer", "settle"}


class Collector:
    """An OTLP/HTTP trace receiver: every span it was sent, with its resource attributes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spans: list[tuple[dict[str, Any], Span]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((resource, span) for span in scope_spans.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._receive)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def value(any_value: AnyValue) -> Any:
    """The Python value of an OTLP AnyValue."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP key-values as a dict."""
    return {pair.key: value(pair.value) for pair in pairs}


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A running OTLP/HTTP receiver."""
    found = Collector()
    found.start()
    yield found
    found.stop()


def tracing() -> Tracing:
    """The llm_invoke function's tracing, as the in-process router loaded it."""
    module = sys.modules["bradax_function_llm_invoke"]
    found: Tracing = module._tracing.get()
    return found


async def flush() -> None:
    """Export every ended span now (from a thread: the SDK's flush blocks)."""
    provider = tracing().provider
    assert provider is not None
    assert await asyncio.to_thread(provider.force_flush)


def span_threads() -> int:
    """Live threads of OpenTelemetry's batch span processors."""
    return sum(1 for t in threading.enumerate() if t.name.startswith("OtelBatchSpan"))


async def traced_broker(
    configure: Any, mock: MockUpstream, router: Any, **overrides: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    current = configure(
        openai_api_key="mock-key", openai_base_url=mock.url, openai_max_retries=0, **overrides
    )
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    tenant = await login(http, await create_tenant(current))
    return http, tenant, current


def body(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"Explique {PROMPT_WORD} por favor"}]
    return {"model": "gpt-4.1-nano", "messages": messages, "max_tokens": 5, **extra}


def no_text(spans: list[tuple[dict[str, Any], Span]]) -> None:
    """No span name, attribute or event carries the prompt's or the answer's words."""
    for _, span in spans:
        shown = [span.name, *map(str, attributes(span.attributes).values())]
        for event in span.events:
            shown += [event.name, *map(str, attributes(event.attributes).values())]
        for text in shown:
            assert PROMPT_WORD not in text, span.name
            assert ANSWER_WORD not in text, span.name


async def test_a_traced_call_is_one_trace_joined_by_the_upstream(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any, collector: Collector
) -> None:
    """A call with a traceparent is one trace: the server span continues it, every step is its
    child, GenAI attributes are set, no text is recorded, the upstream got the trace id."""
    http, tenant, _ = await traced_broker(
        configure, mock, router, otel_exporter_otlp_endpoint=collector.url
    )
    httpx2.post(mock.root + "/_mock/reply", json={"text": ANSWER_WORD}).raise_for_status()
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    headers = {**tenant.key_auth, "traceparent": f"00-{trace_id}-{parent_id}-01"}
    reply = await http.post(CHAT, json=body(), headers=headers)
    assert reply.status_code == 200, reply.text
    assert float(reply.headers["x-bradax-overhead-ms"]) >= 0
    await flush()
    spans = [span for _, span in collector.spans]
    assert {span.trace_id.hex() for span in spans} == {trace_id}
    servers = [span for span in spans if span.kind == Span.SPAN_KIND_SERVER]
    assert len(servers) == 1
    server = servers[0]
    assert server.parent_span_id.hex() == parent_id
    assert server.name == f"POST {CHAT}"
    children = {span.name: span for span in spans if span is not server}
    assert set(children) == STEPS
    assert all(span.parent_span_id == server.span_id for span in children.values())
    upstream = children["chat gpt-4.1-nano"]
    assert upstream.kind == Span.SPAN_KIND_CLIENT
    sent = httpx2.get(mock.root + "/_mock/last_headers").json()
    assert sent["traceparent"] == f"00-{trace_id}-{upstream.span_id.hex()}-01"
    found = attributes(server.attributes)
    usage = reply.json()["usage"]
    assert found["gen_ai.operation.name"] == "chat"
    assert found["gen_ai.provider.name"] == "openai"
    assert found["gen_ai.request.model"] == "gpt-4.1-nano"
    assert found["gen_ai.response.model"] == "gpt-4.1-nano"
    assert found["gen_ai.request.max_tokens"] == 5
    assert found["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert found["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert found["gen_ai.response.finish_reasons"] == [reply.json()["choices"][0]["finish_reason"]]
    assert found["bradax.project"] == mask_project(tenant.project_id)
    assert found["bradax.request_id"] == reply.headers["x-request-id"]
    assert found["bradax.cost_usd"] == reply.headers["x-bradax-cost-usd"]
    assert found["bradax.cache_hit"] is False
    assert found["bradax.admission"] == "admitted"
    assert found["bradax.overhead_ms"] == pytest.approx(
        float(reply.headers["x-bradax-overhead-ms"]), abs=0.002
    )
    assert found["http.response.status_code"] == 200
    assert collector.spans[0][0]["service.name"] == "llm_invoke"
    no_text(collector.spans)
    await http.aclose()


async def test_a_traced_stream_ends_its_span_with_the_stream(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any, collector: Collector
) -> None:
    """A streamed call's server span ends after the stream is settled, with its usage and
    time to first token; the answer carries the overhead up to its first byte."""
    http, tenant, _ = await traced_broker(
        configure,
        mock,
        router,
        otel_exporter_otlp_endpoint=collector.url,
        otel_service_name="broker-under-test",
    )
    httpx2.post(mock.root + "/_mock/reply", json={"text": ANSWER_WORD}).raise_for_status()
    async with http.stream("POST", CHAT, json=body(stream=True), headers=tenant.key_auth) as reply:
        assert reply.status_code == 200
        assert float(reply.headers["x-bradax-overhead-ms"]) >= 0
        events = [line async for line in reply.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    for _ in range(50):  # settling runs in its own task once the stream is over
        await flush()
        if any(span.kind == Span.SPAN_KIND_SERVER for _, span in collector.spans):
            break
        await asyncio.sleep(0.05)
    spans = [span for _, span in collector.spans]
    server = next(span for span in spans if span.kind == Span.SPAN_KIND_SERVER)
    assert server.parent_span_id == b""  # no traceparent came in: a new trace
    found = attributes(server.attributes)
    assert found["bradax.stream"] is True
    assert found["bradax.stream.outcome"] == "completed"
    assert found["gen_ai.usage.output_tokens"] > 0
    assert found["gen_ai.server.time_to_first_token"] > 0
    assert {s.name for s in spans} >= {"authenticate", "admit", "chat gpt-4.1-nano", "settle"}
    assert collector.spans[0][0]["service.name"] == "broker-under-test"
    no_text(collector.spans)
    await http.aclose()


async def test_a_refused_call_is_traced_with_its_refusal(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any, collector: Collector
) -> None:
    """A refusal still answers X-Bradax-Overhead-Ms, and its span carries the error type."""
    http, tenant, _ = await traced_broker(
        configure, mock, router, otel_exporter_otlp_endpoint=collector.url
    )
    reply = await http.post(CHAT, json=body(model="no-such-model"), headers=tenant.key_auth)
    assert 400 <= reply.status_code < 500
    assert float(reply.headers["x-bradax-overhead-ms"]) >= 0
    await flush()
    server = next(s for _, s in collector.spans if s.kind == Span.SPAN_KIND_SERVER)
    found = attributes(server.attributes)
    assert found["http.response.status_code"] == reply.status_code
    assert found["error.type"] == reply.json()["error"]["code"]
    await http.aclose()


async def test_an_embeddings_call_is_traced_as_embeddings(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any, collector: Collector
) -> None:
    """gen_ai.operation.name is "embeddings" on the server and upstream spans of /v1/embeddings."""
    http, _, _ = await traced_broker(
        configure, mock, router, otel_exporter_otlp_endpoint=collector.url
    )
    embedder = await create_tenant(
        settings, "proj_embed", allowed_models=("text-embedding-3-small",)
    )
    reply = await http.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "um texto"},
        headers=embedder.key_auth,
    )
    assert reply.status_code == 200, reply.text
    await flush()
    names = {s.name: attributes(s.attributes) for _, s in collector.spans}
    assert names["POST /v1/embeddings"]["gen_ai.operation.name"] == "embeddings"
    assert names["embeddings text-embedding-3-small"]["gen_ai.operation.name"] == "embeddings"
    await http.aclose()


async def test_untraced_calls_start_no_exporter(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """Without an OTLP endpoint no tracer exists and no export thread starts; the overhead
    header is still on the answer."""
    before = span_threads()
    http, tenant, _ = await traced_broker(configure, mock, router)
    reply = await http.post(CHAT, json=body(), headers=tenant.key_auth)
    assert reply.status_code == 200
    assert float(reply.headers["x-bradax-overhead-ms"]) >= 0
    assert tracing().tracer is None
    assert tracing().provider is None
    assert span_threads() == before
    await http.aclose()


async def test_a_dead_collector_costs_dropped_spans_only(
    settings: Settings,
    configure: Any,
    mock: MockUpstream,
    router: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing listening at the endpoint calls succeed, and the lost spans are counted."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # read by the SDK's exporter
    dead = f"http://127.0.0.1:{free_port()}"
    http, tenant, current = await traced_broker(
        configure, mock, router, otel_exporter_otlp_endpoint=dead
    )
    reply = await http.post(CHAT, json=body(), headers=tenant.key_auth)
    assert reply.status_code == 200
    provider = tracing().provider
    assert provider is not None
    await asyncio.to_thread(provider.force_flush)
    assert (await http.post(CHAT, json=body(), headers=tenant.key_auth)).status_code == 200
    await deps.telemetry.get().flush()
    redis = RedisStore(current)
    try:
        dropped = await redis.call(
            "HGET", COUNTERS, field("trace_spans_dropped_total", reason="export_failed")
        )
    finally:
        await redis.close()
    assert int(dropped) == len(STEPS) + 1  # the first call's spans: one server span, its steps
    await http.aclose()


class StuckExporter(SpanExporter):
    """A collector that takes the first batch and then hangs until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(10)
        return SpanExportResult.SUCCESS


def test_a_full_export_queue_drops_and_counts_spans() -> None:
    """While the collector hangs, spans past the queue's capacity are dropped and counted."""
    drops = tracing_sdk.Drops()
    exporter = StuckExporter()
    provider = TracerProvider()
    provider.add_span_processor(tracing_sdk.CountingProcessor(exporter, drops, max_queue_size=2))
    tracer = provider.get_tracer("test")
    try:
        for _ in range(2):  # a full batch: the export thread takes it and hangs
            tracer.start_span("taken").end()
        assert exporter.entered.wait(10)
        for _ in range(5):  # two fit in the queue, three do not
            tracer.start_span("queued").end()
        assert drops.take() == {"queue_full": 3}
        assert drops.take() == {}
    finally:
        exporter.release.set()
        provider.shutdown()


async def test_a_zero_ratio_sampler_exports_nothing_but_still_propagates(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any, collector: Collector
) -> None:
    """OTEL_TRACES_SAMPLER=traceidratio with arg 0 records no span; the upstream still gets
    the caller's trace id, marked not sampled."""
    http, tenant, _ = await traced_broker(
        configure,
        mock,
        router,
        otel_exporter_otlp_endpoint=collector.url,
        otel_traces_sampler="traceidratio",
        otel_traces_sampler_arg=0.0,
    )
    trace_id = secrets.token_hex(16)
    headers = {**tenant.key_auth, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    assert (await http.post(CHAT, json=body(), headers=headers)).status_code == 200
    await flush()
    assert collector.spans == []
    sent = httpx2.get(mock.root + "/_mock/last_headers").json()
    assert sent["traceparent"].startswith(f"00-{trace_id}-")
    assert sent["traceparent"].endswith("-00")
    await http.aclose()


async def test_shutdown_exports_what_is_queued(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any, collector: Collector
) -> None:
    """Closing the function's dependencies exports the spans still queued and stops the
    export thread."""
    http, tenant, _ = await traced_broker(
        configure, mock, router, otel_exporter_otlp_endpoint=collector.url
    )
    assert (await http.post(CHAT, json=body(), headers=tenant.key_auth)).status_code == 200
    assert collector.spans == []  # the export thread waits for its schedule (5 s)
    before = span_threads()
    await deps.aclose()
    assert len(collector.spans) == len(STEPS) + 1
    assert span_threads() == before - 1
    await http.aclose()
