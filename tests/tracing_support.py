"""Spans for tests: an SDK TracerProvider with an in-memory exporter, and what to ask of a trace."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from entrypoints.devtools.otlp_sink import SpanRecord, from_sdk, tree


class Recorder:
    """A TracerProvider (not the global one) whose finished spans are kept in memory."""

    def __init__(self, service: str = "test") -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource({"service.name": service}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def spans(self) -> list[SpanRecord]:
        return [from_sdk(s) for s in self.exporter.get_finished_spans()]

    def close(self) -> None:
        self.provider.shutdown()


@contextmanager
def tracing_on(provider: TracerProvider) -> Iterator[None]:
    """This test process traces into ``provider`` (bootstrap.tracing's state: the unit of work's
    trace context, log lines, HTTP instrumentation), as a process configured by OTEL_* would."""
    from bootstrap import tracing

    tracing.reset_tracing()  # an earlier `import actors` here found it off
    assert tracing.configure_tracing(tracer_provider=provider)
    try:
        yield
    finally:
        tracing.reset_tracing()


def named(spans: Iterable[SpanRecord], name: str) -> list[SpanRecord]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_ns)


def one(spans: Iterable[SpanRecord], name: str) -> SpanRecord:
    found = named(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r}:\n{tree(spans)}"
    return found[0]


def ancestors(spans: Iterable[SpanRecord], span: SpanRecord) -> list[SpanRecord]:
    """The span's parents up to the root, nearest first (only those present)."""
    by_id = {s.span_id: s for s in spans}
    chain, parent = [], by_id.get(span.parent_id or "")
    while parent is not None:
        chain.append(parent)
        parent = by_id.get(parent.parent_id or "")
    return chain


def descends(spans: Iterable[SpanRecord], span: SpanRecord, ancestor: SpanRecord) -> bool:
    return any(a.span_id == ancestor.span_id for a in ancestors(list(spans), span))
