"""OpenTelemetry trace context on every message, and one consumer span per run (docs/tracing.md).

Only in the stack while tracing is on (bootstrap/tracing.py): with it off, nothing of OpenTelemetry
is imported and no message carries trace options.
"""

from __future__ import annotations

import contextvars
from typing import Any

from dramatiq import Broker, Message, Worker
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from domain.errors import Cancelled, Paced

#: The W3C trace context of the message (set by the producer's send span); ``tracestate`` and
#: ``baggage`` travel beside it, under their W3C names too.
TRACEPARENT = "traceparent"
#: The traceparent of the run that sent this same message back to its queue (a retry, a park)
#: or wrote its dead letter: the next run links to it.
LINK_OPTION = "trace_link"
#: Send spans whose enqueue never completed (the broker raised) are ended once this many wait.
MAX_PENDING_SENDS = 1000
#: How long a stopping worker waits for its last spans to be exported (a collector that does not
#: answer must not eat the shutdown timeout: compose gives 35 s for a 25 s timeout).
SHUTDOWN_FLUSH_MS = 3000


class _OptionsGetter(Getter[dict[str, Any]]):
    """Reads only text options: a producer's junk (a number, a list) reads as absent, never raises."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return [k for k, v in carrier.items() if isinstance(v, str)]


_GETTER = _OptionsGetter()
_W3C = TraceContextTextMapPropagator()


def traceparent(span_context: trace.SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def _text(exception: BaseException) -> str:
    try:
        return str(exception)
    except Exception:  # an exception whose __str__ raises
        return "(its text could not be read)"


def _link(value: Any) -> list[Link] | None:
    if not isinstance(value, str):
        return None
    try:
        found = trace.get_current_span(_W3C.extract({TRACEPARENT: value}, getter=_GETTER)).get_span_context()
    except Exception:  # not a traceparent we wrote
        return None
    return [Link(found, {"dramatiq.link": "previous_run"})] if found.is_valid else None


class _Run:
    __slots__ = ("message", "span", "token", "requeued")

    def __init__(self, message: Message, span: trace.Span, token: object) -> None:
        self.message, self.span, self.token, self.requeued = message, span, token, False


#: The message running in this worker thread (or context), with its span.
_RUNNING: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("atelier_tracing_run", default=None)


class Tracing(Middleware):
    """W3C trace context (traceparent, tracestate, baggage) in the message options, and spans
    named after the messaging semantic conventions.

    Send: a message enqueued while a span is active gets a PRODUCER span ``send <actor>``, child
    of that span, whose context goes into the options; with no active span nothing is added (a
    producer that does not trace starts no trace). A message that already carries a context (the
    outbox relay sends each event's message with the context of the transaction that recorded
    it) keeps it.

    Process: each run is a CONSUMER span ``process <actor>``, child of the context the message
    carries (a new trace when it carries none), current while the hooks below this middleware
    and the actor run, so what the actor sends, its HTTP calls and its log lines belong to it.
    Attributes: messaging.system, messaging.operation.type/name (process), messaging.destination.name
    (the queue), messaging.message.id, messaging.message.conversation_id (the correlation id),
    dramatiq.actor, dramatiq.retries, dramatiq.outcome (done, failed, retried, cancelled, parked, skipped),
    error.type. A retry or a park is the same message enqueued again: the next run is a span of
    the same trace (the same parent), linked to the run before (``trace_link`` option).

    Parameters: tracer_provider (None: OpenTelemetry's global one); messaging_system (the
    messaging.system attribute: redis, rabbitmq, ...).
    """

    def __init__(self, *, tracer_provider: Any = None, messaging_system: str = "dramatiq") -> None:
        self.logger = get_logger(__name__, type(self))
        self.tracer_provider = tracer_provider
        self.messaging_system = messaging_system
        self._tracer = trace.get_tracer("atelier.middleware.tracing", tracer_provider=tracer_provider)
        self._sending: dict[str, trace.Span] = {}
        # The option names the configured propagators use (OTEL_PROPAGATORS; by default W3C
        # traceparent, tracestate and baggage): a message carrying one of them carries a context.
        self._fields = tuple(propagate.get_global_textmap().fields) or (TRACEPARENT,)

    def _carries_context(self, options: dict[str, Any]) -> bool:
        return any(field in options for field in self._fields)

    # Send.

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        try:
            running = _RUNNING.get()
            if running is not None and running.message.message_id == message.message_id:
                # The running message going back to its queue (Retries, a park): it carries its
                # context and the link to this run, set when the run started.
                running.requeued = True
                return
            options = message.options
            if self._carries_context(options):
                return  # a delayed message moving to its queue, or a context given by the sender
            parent = otel_context.get_current()
            if not trace.get_current_span(parent).get_span_context().is_valid:
                return
            span = self._tracer.start_span(f"send {message.actor_name}", context=parent, kind=SpanKind.PRODUCER,
                                           attributes={
                                               "messaging.system": self.messaging_system,
                                               "messaging.operation.type": "send",
                                               "messaging.operation.name": "send",
                                               "messaging.destination.name": message.queue_name,
                                               "messaging.message.id": message.message_id,
                                               "dramatiq.actor": message.actor_name,
                                           })
            try:
                propagate.inject(options, context=trace.set_span_in_context(span, parent))
            except Exception:  # the producer's baggage cannot be encoded: the message goes without a context
                for field in self._fields:
                    options.pop(field, None)
                span.set_status(Status(StatusCode.ERROR, "the context could not be put in the message"))
                span.end()
                raise
            self._sending[message.message_id] = span
            if len(self._sending) > MAX_PENDING_SENDS:
                self._abandon_oldest()
        except Exception:  # tracing never stops a message
            self.logger.warning("Could not trace the send of message %r.", message.message_id, exc_info=True)

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        span = self._sending.pop(message.message_id, None)
        if span is not None:
            span.end()

    def _abandon_oldest(self) -> None:
        for message_id in list(self._sending)[: len(self._sending) - MAX_PENDING_SENDS // 2]:
            span = self._sending.pop(message_id, None)
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, "the enqueue did not complete"))
                span.end()

    # Process.

    def before_process_message(self, broker: Broker, message: Message) -> None:
        try:
            options = message.options
            parent = self._parent(options)
            attributes: dict[str, Any] = {
                "messaging.system": self.messaging_system,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": message.queue_name,
                "messaging.message.id": message.message_id,
                "dramatiq.actor": message.actor_name,
            }
            retries = options.get("retries", 0)
            if isinstance(retries, int):
                attributes["dramatiq.retries"] = retries
            correlation_id = options.get("correlation_id")
            if isinstance(correlation_id, str):
                attributes["messaging.message.conversation_id"] = correlation_id
            span = self._tracer.start_span(f"process {message.actor_name}", context=parent, kind=SpanKind.CONSUMER,
                                           attributes=attributes, links=_link(options.get(LINK_OPTION)))
            here = traceparent(span.get_span_context())
            # Whatever sends this message again (Retries, a park, its dead letter) carries the link
            # to this run; a message that came without a valid context gets this run's, so its
            # later runs join this trace.
            options[LINK_OPTION] = here
            if not trace.get_current_span(parent).get_span_context().is_valid:
                options[TRACEPARENT] = here
                options.pop("tracestate", None)
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            _RUNNING.set(_Run(message, span, token))
        except Exception:  # tracing never stops a message
            self.logger.warning("Could not trace message %r.", message.message_id, exc_info=True)

    def _parent(self, options: dict[str, Any]) -> otel_context.Context:
        """The context the message carries; an empty one (a new trace) if none, or if what it
        carries cannot be read (a producer's junk: a lone surrogate in its baggage, say)."""
        if not self._carries_context(options):
            return otel_context.Context()
        try:
            return propagate.extract(options, getter=_GETTER)
        except Exception:
            return otel_context.Context()

    def after_process_message(self, broker: Broker, message: Message, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        run = self._finish(message)
        if run is None:
            return
        span = run.span
        try:
            if exception is None:
                span.set_attribute("dramatiq.outcome", "done")
                return
            if isinstance(exception, Cancelled):  # cancelled while it ran (middleware/jobs.py): not a failure
                span.set_attribute("dramatiq.outcome", "cancelled")
                return
            if isinstance(exception, Paced):  # waits for its slot in a channel's rate: parked, not a failure
                span.set_attribute("dramatiq.outcome", "parked")
                span.set_attribute("atelier.paced_s", float(exception.wait_s))
                return
            span.set_attribute("dramatiq.outcome", "retried" if run.requeued and not message.failed else "failed")
            kind = type(exception)
            span.set_attribute("error.type", f"{kind.__module__}.{kind.__qualname__}")
            span.set_status(Status(StatusCode.ERROR, f"{kind.__name__}: {_text(exception)}"[:500]))
            span.record_exception(exception)
        except Exception:  # an exception whose text cannot be read, say: the span has the rest
            self.logger.debug("Could not record the failure of message %r.", message.message_id, exc_info=True)
        finally:  # the span ends and the thread's context is restored, whatever happened above
            self._end(run)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        run = self._finish(message)
        if run is not None:
            try:
                run.span.set_attribute("dramatiq.outcome", "parked" if run.requeued else "skipped")
            finally:
                self._end(run)

    def _finish(self, message: Message) -> _Run | None:
        run = _RUNNING.get()
        if run is None or run.message is not message:
            return None  # a hook before this one skipped or refused it: no span was started
        _RUNNING.set(None)
        return run

    def _end(self, run: _Run) -> None:
        try:
            run.span.end()
        finally:
            otel_context.detach(run.token)  # type: ignore[arg-type]  # logs, never raises

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        # Dramatiq's worker processes end without running atexit: export what is buffered now.
        provider = self.tracer_provider or trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            try:
                flush(SHUTDOWN_FLUSH_MS)
            except Exception:
                self.logger.warning("Could not export the last spans.", exc_info=True)
