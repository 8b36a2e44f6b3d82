"""OpenTelemetry tracing, set up from the standard ``OTEL_*`` environment variables (docs/tracing.md).

Tracing is on in a process when
- OTEL_TRACES_EXPORTER is set (``otlp``, ``console``, ``none``, or a comma-separated list of them;
  ``none``: spans are made, propagated and put in log lines, but exported nowhere), or
  OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is (then ``otlp``); and
  OTEL_SDK_DISABLED is not ``true``; or
- the application set an OpenTelemetry TracerProvider of its own before it imported ``actors``:
  then that provider is used as it is, and nothing is added to it.

Everything else is the SDK's own reading of the standard variables: OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES (service name ``atelier`` when neither names one), OTEL_TRACES_SAMPLER and
OTEL_TRACES_SAMPLER_ARG, OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout, compression), OTEL_BSP_*
(the batch processor), OTEL_PROPAGATORS (default: W3C tracecontext and baggage). The OTLP exporter
speaks http/protobuf (port 4318); OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter package.

With tracing on, outgoing HTTP is instrumented (httpx: the chat channels and Qdrant over HTTP;
urllib3: MinIO), unless OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names ``httpx`` or ``urllib3``.

With nothing set, nothing of OpenTelemetry is imported: the broker is built without the Tracing
middleware, the unit of work records no trace context and the log processor returns at once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bootstrap.settings import ConfigError

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console", "none")
INSTRUMENTED = ("httpx", "urllib3")
DEFAULT_SERVICE_NAME = "atelier"


@dataclass(frozen=True)
class TracingPlan:
    """What the environment asks for: ``exporters`` (empty: tracing off)."""

    exporters: tuple[str, ...] = ()
    protocol: str = "http/protobuf"
    instrument: tuple[str, ...] = INSTRUMENTED

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


def plan_from_env(environ: Mapping[str, str]) -> TracingPlan:
    """Read the OTEL_* variables; raise ConfigError naming the variable on a value atelier cannot serve."""

    def value(name: str) -> str:
        return environ.get(name, "").strip()

    if value("OTEL_SDK_DISABLED").lower() == "true":
        return TracingPlan()
    names = [n.strip().lower() for n in value("OTEL_TRACES_EXPORTER").split(",") if n.strip()]
    if not names and (value("OTEL_EXPORTER_OTLP_ENDPOINT") or value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = ["otlp"]
    if not names:
        return TracingPlan()
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ConfigError(f"configuration error: OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not one of "
                          f"{', '.join(EXPORTERS)}")
    if "none" in names and len(names) > 1:
        raise ConfigError("configuration error: OTEL_TRACES_EXPORTER: none cannot be listed with other exporters")
    protocol = (value("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or value("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").lower()
    if "otlp" in names and protocol not in ("http/protobuf", "grpc"):
        raise ConfigError(f"configuration error: OTEL_EXPORTER_OTLP_PROTOCOL: {protocol} is not served "
                          "(http/protobuf, or grpc with opentelemetry-exporter-otlp-proto-grpc installed)")
    disabled = {n.strip().lower() for n in value("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS").split(",")}
    return TracingPlan(exporters=tuple(dict.fromkeys(names)), protocol=protocol,
                       instrument=tuple(n for n in INSTRUMENTED if n not in disabled))


@dataclass
class _State:
    provider: Any  # an opentelemetry TracerProvider
    owned: bool  # built here from the environment (flushed and shut down with the process)
    instrumented: tuple[Any, ...] = ()


_lock = threading.Lock()
_configured = False
_state: _State | None = None
#: opentelemetry.trace.get_current_span once tracing is on: the log processor's only lookup.
_current_span: Any = None


def configure_tracing(*, tracer_provider: Any = None, environ: Mapping[str, str] | None = None) -> bool:
    """Set tracing up for this process, once; return whether it is on (later calls return the
    first answer). ``tracer_provider``: use this one (tests, embedding applications) rather than
    the application's global provider or one built from the environment; it is not made global.

    Raises ConfigError (its one line also printed to stderr) on an OTEL_* value atelier cannot serve."""
    global _configured, _state, _current_span
    with _lock:
        if _configured:
            return _state is not None
        try:
            plan = plan_from_env(os.environ if environ is None else environ)
            if tracer_provider is not None:
                provider, owned = tracer_provider, False
            elif (application := _application_provider()) is not None:
                provider, owned = application, False
            elif plan.enabled:
                provider, owned = _build_provider(plan), True
            else:
                _configured = True
                return False
        except ConfigError as exc:
            print(exc.message, file=sys.stderr)
            raise
        from opentelemetry import trace

        _state = _State(provider, owned, _instrument(plan.instrument, provider))
        _current_span = trace.get_current_span
        _configured = True
        return True


def _application_provider() -> Any:
    """The TracerProvider the application set itself, if it did (never imports OpenTelemetry)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    return None if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider) else provider


def _build_provider(plan: TracingPlan) -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
    for name in plan.exporters:
        if name == "none":
            continue
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, plan.protocol)))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str, protocol: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One JSON object per line on stdout (the SDK's default spreads each span over many lines).
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError("configuration error: OTEL_EXPORTER_OTLP_PROTOCOL: grpc needs the package "
                              "opentelemetry-exporter-otlp-proto-grpc; atelier ships http/protobuf (port 4318)"
                              ) from None
        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION


def _instrument(names: tuple[str, ...], tracer_provider: Any) -> tuple[Any, ...]:
    """Instrument outgoing HTTP: httpx (channels, Qdrant over HTTP), urllib3 (MinIO)."""
    done = []
    for name in names:
        if name == "httpx":
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor as Instrumentor
        else:
            from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor as Instrumentor  # type: ignore[assignment]
        instrumentor = Instrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            continue  # the application instrumented it already
        instrumentor.instrument(tracer_provider=tracer_provider)
        done.append(instrumentor)
    return tuple(done)


def tracing_enabled() -> bool:
    return _state is not None


def tracer_provider() -> Any:
    """The provider spans go to (None: tracing is off)."""
    return _state.provider if _state is not None else None


def reset_tracing() -> None:
    """Forget the set-up (tests): remove the instrumentation, flush and shut down a provider built
    here (a global provider cannot be replaced: OpenTelemetry sets it once per process)."""
    global _configured, _state, _current_span
    with _lock:
        state, _state, _configured, _current_span = _state, None, False, None
    if state is None:
        return
    for instrumentor in state.instrumented:
        instrumentor.uninstrument()


def current_trace_context() -> dict[str, str] | None:
    """The W3C trace context (traceparent, tracestate, baggage) of the current span, as text
    fields: what the unit of work records with an outbox event. None when tracing is off or
    nothing is active."""
    if _state is None:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    try:
        propagate.inject(carrier)
    except Exception:  # baggage the propagator cannot encode must not fail the producer's transaction
        log.warning("the trace context could not be recorded with the event", exc_info=True)
        return None
    return carrier or None


@contextmanager
def untraced() -> Iterator[None]:
    """Calls made inside make no spans (readiness probes: a span per probe would bury the traces)."""
    if _state is None:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def add_trace_ids(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id`` and ``span_id`` (hex) of the active span, if any. Costs one
    global lookup per line while tracing is off."""
    current_span = _current_span
    if current_span is None:
        return event_dict
    context = current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered (a process about to exit without atexit: Dramatiq's worker processes)."""
    if _state is not None and hasattr(_state.provider, "force_flush"):
        _state.provider.force_flush(timeout_ms)
