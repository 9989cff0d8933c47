"""The OpenTelemetry SDK side of common.tracing, imported only when tracing is on.

The provider exports by OTLP/HTTP from a BatchSpanProcessor: a bounded queue drained by the
SDK's own thread, so a slow or dead collector never holds a request. What cannot be delivered
(queue full, export failed) is counted by reason and reported as
bradax_trace_spans_dropped_total.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.context import Context as OtelContext
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from common.settings import VERSION, Settings

_PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent / tracestate


class Drops:
    """Spans lost on the way to the collector, by reason (written by the export thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.pending = False  # read without the lock: a hint that take() has something

    def add(self, reason: str, count: int) -> None:
        """Count `count` spans lost for `reason`."""
        with self._lock:
            self._counts[reason] += count
            self.pending = True

    def take(self) -> dict[str, int]:
        """The counts since the last take (and forget them)."""
        with self._lock:
            counts, self._counts = dict(self._counts), Counter()
            self.pending = False
        return counts


class CountingExporter(SpanExporter):
    """An exporter whose failed batches are counted as dropped spans."""

    def __init__(self, inner: SpanExporter, drops: Drops) -> None:
        self.inner = inner
        self.drops = drops

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.drops.add("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingProcessor(BatchSpanProcessor):
    """A BatchSpanProcessor that counts the spans its full queue turns away."""

    def __init__(self, exporter: SpanExporter, drops: Drops, max_queue_size: int) -> None:
        super().__init__(
            exporter, max_queue_size=max_queue_size, max_export_batch_size=min(512, max_queue_size)
        )
        self.drops = drops
        self.capacity = max_queue_size

    def on_end(self, span: ReadableSpan) -> None:
        queue = getattr(self._batch_processor, "_queue", None)
        sampled = span.context is not None and span.context.trace_flags.sampled
        if sampled and queue is not None and len(queue) >= self.capacity:
            self.drops.add("queue_full", 1)  # the SDK drops the oldest queued span
        super().on_end(span)


def sampler(settings: Settings) -> sampling.Sampler:
    """The sampler OTEL_TRACES_SAMPLER[_ARG] name (the SDK's names and defaults)."""
    ratio = settings.otel_traces_sampler_arg
    ratio = 1.0 if ratio is None else ratio
    choice = settings.otel_traces_sampler
    if choice == "always_on":
        return sampling.ALWAYS_ON
    if choice == "always_off":
        return sampling.ALWAYS_OFF
    if choice == "traceidratio":
        return sampling.TraceIdRatioBased(ratio)
    if choice == "parentbased_always_off":
        return sampling.ParentBased(sampling.ALWAYS_OFF)
    if choice == "parentbased_traceidratio":
        return sampling.ParentBased(sampling.TraceIdRatioBased(ratio))
    return sampling.ParentBased(sampling.ALWAYS_ON)


def provider(
    settings: Settings, endpoint: str, service_name: str, drops: Drops
) -> tuple[TracerProvider, Tracer]:
    """A tracer provider exporting to `endpoint` (other OTEL_EXPORTER_OTLP_* variables, such
    as headers and timeout, are read by the exporter itself), and its tracer."""
    resource = Resource.create(
        {"service.name": settings.otel_service_name or service_name, "service.version": VERSION}
    )
    found = TracerProvider(resource=resource, sampler=sampler(settings))
    exporter = CountingExporter(OTLPSpanExporter(endpoint=endpoint), drops)
    found.add_span_processor(CountingProcessor(exporter, drops, settings.otel_bsp_max_queue_size))
    return found, found.get_tracer("bradax", VERSION)


def start_server(
    tracer: Tracer, name: str, headers: Mapping[str, str], attributes: dict[str, Any]
) -> tuple[Span, OtelContext]:
    """The server span of a request, continuing the caller's traceparent; and the context
    its children start in."""
    parent = _PROPAGATOR.extract(headers)
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    return span, set_span_in_context(span)


def start_child(tracer: Tracer, parent: OtelContext, name: str, *, client: bool = False) -> Span:
    """A step's span under the request's server span."""
    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    return tracer.start_span(name, context=parent, kind=kind)


def outgoing(span: Span) -> dict[str, str]:
    """The traceparent (and tracestate) headers naming `span` as the parent."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
    return carrier


def fail(span: Span, error_type: str) -> None:
    """Mark `span` failed with the broker's error code (never an exception's message)."""
    span.set_attribute("error.type", error_type)
    span.set_status(StatusCode.ERROR)
