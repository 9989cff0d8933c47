"""Traces of the call pipeline, the GenAI-convention metrics, and the broker's own overhead.

Tracing is off unless an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): then no OpenTelemetry module is imported and a request
costs a few timer reads. On, each request is one server span continuing the caller's W3C
`traceparent`, with a child span per step (authenticate, screen, admit, the upstream call,
settle); the upstream request carries `traceparent`, so the provider's spans join the trace.
Export runs in the SDK's thread (common.tracing_sdk).

Whether tracing is on or not, each call measures the time spent outside the upstream call
(`X-Bradax-Overhead-Ms`, bradax_overhead_seconds) and feeds the GenAI conventions' histograms
(token usage, operation duration, time to first token) through common.telemetry.

Attributes are figures and identifiers: model names, token counts, cost, the masked project,
the request id, the admission decision. Never prompt or answer text, keys or personal data.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from common.catalog import Upstream
from common.logs import get_logger, mask_project
from common.settings import Settings
from common.telemetry import Telemetry

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.context import Context as OtelContext
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from common.tracing_sdk import Drops

OVERHEAD_HEADER = "X-Bradax-Overhead-Ms"
OPERATION = "chat"
# gen_ai.provider.name of each dialect, in the conventions' spelling
_PROVIDERS = {"bedrock": "aws.bedrock", "gemini": "gcp.gemini"}


def operation_name(api: str) -> str:
    """gen_ai.operation.name of an API face's calls."""
    return "embeddings" if api == "embeddings" else OPERATION


SHUTDOWN_SECONDS = 5.0
_NO_HEADERS: Mapping[str, str] = {}
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()


def provider_name(upstream: Upstream) -> str:
    """gen_ai.provider.name of an upstream (Azure OpenAI takes its key in `api-key`)."""
    if upstream.dialect == "openai" and upstream.key_header == "api-key":
        return "azure.ai.openai"
    return _PROVIDERS.get(upstream.dialect, upstream.dialect)


def error_type(exc: BaseException) -> str:
    """error.type of a failure: the broker's error code, else the exception's class name."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    return "cancelled" if type(exc).__name__ == "CancelledError" else type(exc).__name__


class Tracing:
    """The process' tracer when tracing is configured; else nothing (and nothing imported)."""

    def __init__(self, settings: Settings, service_name: str) -> None:
        self.tracer: Tracer | None = None
        self.provider: TracerProvider | None = None
        self.drops: Drops | None = None
        endpoint = settings.otlp_traces_endpoint
        if endpoint is None:
            return
        try:
            from common import tracing_sdk
        except ImportError:
            get_logger().warning("an OTLP endpoint is set but OpenTelemetry is not installed")
            return
        self.drops = tracing_sdk.Drops()
        self.provider, self.tracer = tracing_sdk.provider(
            settings, endpoint, service_name, self.drops
        )

    @classmethod
    def off(cls) -> Tracing:
        """Tracing that records nothing."""
        found = cls.__new__(cls)
        found.tracer, found.provider, found.drops = None, None, None
        return found

    def take_drops(self) -> dict[str, int]:
        """Spans dropped since the last call, by reason (empty while none were)."""
        if self.drops is None or not self.drops.pending:
            return {}
        return self.drops.take()

    async def aclose(self) -> None:
        """Export what is queued and stop the export thread; a collector that does not answer
        within SHUTDOWN_SECONDS does not hold the process' shutdown (those spans are lost)."""
        import asyncio

        if self.provider is not None:
            provider, self.provider = self.provider, None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(provider.shutdown), SHUTDOWN_SECONDS)


current: contextvars.ContextVar[CallTrace | None] = contextvars.ContextVar(
    "bradax_call_trace", default=None
)


class CallTrace:
    """One request's timers, span and GenAI metric labels."""

    __slots__ = (
        "api",
        "labels",
        "operation",
        "outgoing",
        "parent",
        "span",
        "started",
        "telemetry",
        "tracer",
        "upstream_seconds",
    )

    def __init__(
        self,
        tracing: Tracing,
        telemetry: Telemetry,
        api: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        request_id: str,
    ) -> None:
        self.started = time.perf_counter()
        self.telemetry = telemetry
        self.api = api
        self.operation = operation_name(api)
        self.upstream_seconds = 0.0
        self.tracer = tracing.tracer
        self.span: Span | None = None
        self.parent: OtelContext | None = None
        self.outgoing: Mapping[str, str] = _NO_HEADERS
        self.labels = {
            "gen_ai_operation_name": self.operation,
            "gen_ai_provider_name": "",
            "gen_ai_request_model": "",
            "gen_ai_response_model": "",
        }
        if self.tracer is not None:
            from common import tracing_sdk

            attributes = {
                "http.request.method": method,
                "url.path": path,
                "gen_ai.operation.name": self.operation,
                "bradax.api": api,
                "bradax.request_id": request_id,
            }
            self.span, self.parent = tracing_sdk.start_server(
                self.tracer, f"{method} {path}", headers, attributes
            )

    # -- attributes ------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        """Set a span attribute (no-op when tracing is off)."""
        if self.span is not None and value is not None:
            self.span.set_attribute(key, value)

    def planned(self, project_id: str, model: str, max_tokens: int | None, stream: bool) -> None:
        """What the call asks for, once its body and project are known."""
        self.labels["gen_ai_request_model"] = model
        if self.span is not None:
            self.span.set_attributes(
                {
                    "bradax.project": mask_project(project_id) or "",
                    "gen_ai.request.model": model,
                    "bradax.stream": stream,
                }
            )
            self.set("gen_ai.request.max_tokens", max_tokens)

    def answered_by(self, upstream: Upstream) -> None:
        """The upstream that answered: its provider and model name (ours, not its claim)."""
        self.labels["gen_ai_provider_name"] = provider_name(upstream)
        self.labels["gen_ai_response_model"] = upstream.model
        if self.span is not None:
            self.span.set_attributes(
                {
                    "gen_ai.provider.name": provider_name(upstream),
                    "gen_ai.response.model": upstream.model,
                }
            )

    def finish_reasons(self, data: Mapping[str, Any]) -> None:
        """gen_ai.response.finish_reasons from a chat completion (bounded: it is a claim)."""
        if self.span is None:
            return
        reasons = [
            reason[:32]
            for choice in list(data.get("choices") or ())[:16]
            if isinstance(choice, dict) and isinstance(reason := choice.get("finish_reason"), str)
        ]
        if reasons:
            self.span.set_attribute("gen_ai.response.finish_reasons", reasons)

    # -- steps -----------------------------------------------------------------------------

    def step(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A child span around one step of the pipeline."""
        if self.tracer is None or self.parent is None:
            return _NULL
        return _Step(self, name)

    def upstream_call(self, model: str) -> UpstreamCall:
        """Time (and trace) the upstream call; its span's traceparent goes with the request."""
        return UpstreamCall(self, model)

    # -- the end ---------------------------------------------------------------------------

    def overhead(self) -> float:
        """Seconds spent so far outside the upstream call."""
        return max(0.0, time.perf_counter() - self.started - self.upstream_seconds)

    def overhead_header(self) -> str:
        """X-Bradax-Overhead-Ms's value, and the overhead counted (once per answer)."""
        seconds = self.overhead()
        self.telemetry.observe("overhead", seconds, api=self.api)
        self.set("bradax.overhead_ms", round(seconds * 1000, 3))
        return f"{seconds * 1000:.3f}"

    def first_event(self) -> None:
        """The first event of a streamed answer went to the client."""
        took = time.perf_counter() - self.started
        self.telemetry.observe("genai_time_to_first_token", took, **self.labels)
        self.set("gen_ai.server.time_to_first_token", took)

    def end(self, status: int, error: str | None = None) -> None:
        """End the server span with the answer's status."""
        span, self.span = self.span, None
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if error is not None or status >= 400:
            span.set_attribute("error.type", error or str(status))
        if status >= 500:  # a refusal (4xx) is the broker working, not a failed span
            from common import tracing_sdk

            tracing_sdk.fail(span, error or str(status))
        span.end()


class _Step:
    """A step's child span (no exception text is recorded: the error type only)."""

    __slots__ = ("name", "span", "trace")

    def __init__(self, trace: CallTrace, name: str) -> None:
        self.trace = trace
        self.name = name
        self.span: Span | None = None

    def __enter__(self) -> None:
        from common import tracing_sdk

        assert self.trace.tracer is not None
        assert self.trace.parent is not None
        self.span = tracing_sdk.start_child(self.trace.tracer, self.trace.parent, self.name)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.span is None:
            return
        if exc is not None:
            from common import tracing_sdk

            tracing_sdk.fail(self.span, error_type(exc))
        self.span.end()


class UpstreamCall:
    """The upstream call of a request: timed always, a client span when tracing is on."""

    __slots__ = ("began", "model", "span", "trace", "upstream")

    def __init__(self, trace: CallTrace | None, model: str) -> None:
        self.trace = trace
        self.model = model
        self.began = 0.0
        self.span: Span | None = None
        self.upstream: Upstream | None = None

    def __enter__(self) -> UpstreamCall:
        self.began = time.perf_counter()
        trace = self.trace
        if trace is not None and trace.tracer is not None and trace.parent is not None:
            from common import tracing_sdk

            self.span = tracing_sdk.start_child(
                trace.tracer, trace.parent, f"{trace.operation} {self.model}", client=True
            )
            self.span.set_attributes(
                {"gen_ai.operation.name": trace.operation, "gen_ai.request.model": self.model}
            )
            trace.outgoing = tracing_sdk.outgoing(self.span)
        return self

    def answered(self, upstream: Upstream) -> None:
        """The upstream that gave the answer."""
        self.upstream = upstream

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        trace = self.trace
        if trace is None:
            return
        took = time.perf_counter() - self.began
        trace.upstream_seconds += took
        trace.outgoing = _NO_HEADERS
        if self.upstream is not None:
            trace.answered_by(self.upstream)
        failed = error_type(exc) if exc is not None else ""
        trace.telemetry.observe("genai_operation_duration", took, **trace.labels, error_type=failed)
        span = self.span
        if span is not None:
            if self.upstream is not None:
                span.set_attributes(
                    {
                        "gen_ai.provider.name": provider_name(self.upstream),
                        "gen_ai.response.model": self.upstream.model,
                        "server.address": _host(self.upstream.base_url),
                    }
                )
            if exc is not None:
                from common import tracing_sdk

                tracing_sdk.fail(span, failed)
            span.end()


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


# -- module-level helpers: the step modules reach the request's trace through `current` ------


def step(name: str) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current request (a no-op outside one, or with tracing off)."""
    trace = current.get()
    return _NULL if trace is None else trace.step(name)


def upstream_call(model: str) -> UpstreamCall:
    """Time the current request's upstream call (see CallTrace.upstream_call)."""
    return UpstreamCall(current.get(), model)


def outgoing_headers() -> Mapping[str, str]:
    """The trace headers an upstream request carries now (empty with tracing off)."""
    trace = current.get()
    return _NO_HEADERS if trace is None else trace.outgoing


def settled(
    telemetry: Telemetry,
    model: str,
    upstream: Upstream | None,
    prompt: int,
    completion: int,
    cost: Decimal,
    cached: bool,
) -> None:
    """A call was settled: its token usage histogram and span attributes."""
    trace = current.get()
    if upstream is not None and not cached:
        operation = OPERATION if trace is None else trace.operation
        labels = {"gen_ai_operation_name": operation, "gen_ai_request_model": model}
        labels["gen_ai_provider_name"] = provider_name(upstream)
        labels["gen_ai_response_model"] = upstream.model
        telemetry.observe("genai_token_usage", prompt, **labels, gen_ai_token_type="input")
        telemetry.observe("genai_token_usage", completion, **labels, gen_ai_token_type="output")
    if trace is not None and trace.span is not None:
        trace.span.set_attributes(
            {
                "gen_ai.usage.input_tokens": prompt,
                "gen_ai.usage.output_tokens": completion,
                "bradax.cost_usd": str(cost),
                "bradax.cache_hit": cached,
            }
        )
