"""Tracing (issue 19) on the StubBroker: the Tracing middleware in atelier's stack, spans recorded by
the SDK's in-memory exporter; the OTEL_* reading of bootstrap/tracing.py; trace ids in log lines;
scheduler ticks starting their own traces."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import subprocess
import sys
import time

import dramatiq
import pytest
import structlog
from opentelemetry import baggage
from opentelemetry import context as otel_context

from adapters.sender import BrokerSender
from bootstrap import tracing
from bootstrap.settings import ConfigError, Settings
from domain.clock import SystemClock
from domain.errors import Cancelled, InvalidPayload, Paced
from domain.services.deadletters import DeadLetterService
from entrypoints.devtools.otlp_sink import tree
from middleware.tracing import LINK_OPTION, SHUTDOWN_FLUSH_MS, TRACEPARENT, Tracing
from tests import services
from tests.tracing_support import Recorder, ancestors, named, one, tracing_on
from tests.unit.stack import make_stack


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


@pytest.fixture
def traced(recorder):
    s = make_stack(tracer_provider=recorder.provider)
    yield s
    s.worker.stop()
    s.broker.close()


def _hex(n: int, width: int) -> str:
    return format(n, f"0{width}x")


def test_a_run_continues_the_producers_trace(traced, recorder):
    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def work(n):
        pass

    with recorder.tracer.start_as_current_span("web request") as request:
        sent = work.send_with_options(args=(1,), correlation_id="req-7")
    traced.join()
    spans = recorder.spans()
    producer, send, process = one(spans, "web request"), one(spans, "send work"), one(spans, "process work")
    assert send.parent_id == producer.span_id and process.parent_id == send.span_id
    assert {s.trace_id for s in spans} == {_hex(request.get_span_context().trace_id, 32)}
    assert sent.options[TRACEPARENT].split("-")[2] == send.span_id
    assert (send.kind, process.kind) == ("PRODUCER", "CONSUMER")
    assert process.attributes == {
        "messaging.system": "stub", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": "q", "messaging.message.id": sent.message_id, "dramatiq.actor": "work",
        "dramatiq.retries": 0, "messaging.message.conversation_id": "req-7", "dramatiq.outcome": "done"}
    assert send.attributes["messaging.destination.name"] == "q" and send.end_ns >= send.start_ns > 0


def test_a_producer_with_no_active_span_starts_no_trace(traced, recorder):
    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def work():
        pass

    sent = work.send()
    traced.join()
    assert TRACEPARENT not in sent.options and "baggage" not in sent.options
    [process] = recorder.spans()  # no send span
    assert process.name == "process work" and process.parent_id is None


def test_what_an_actor_sends_is_in_its_trace_with_the_producers_baggage(traced, recorder):
    seen = {}

    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def second():
        seen["tenant"] = baggage.get_baggage("tenant")

    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def first():
        second.send()

    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with recorder.tracer.start_as_current_span("request"):
            first.send()
    finally:
        otel_context.detach(token)
    traced.join()
    spans = recorder.spans()
    chain = [s.name for s in ancestors(spans, one(spans, "process second"))]
    assert chain == ["send second", "process first", "send first", "request"], tree(spans)
    assert seen == {"tenant": "acme"}
    assert len({s.trace_id for s in spans}) == 1


def test_retries_are_runs_of_the_same_trace_each_linked_to_the_run_before(traced, recorder):
    calls = []

    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    with recorder.tracer.start_as_current_span("request"):
        flaky.send()
    traced.join()
    spans = recorder.spans()
    send = one(spans, "send flaky")
    runs = named(spans, "process flaky")
    assert [r.attributes["dramatiq.retries"] for r in runs] == [0, 1, 2]
    assert [r.attributes["dramatiq.outcome"] for r in runs] == ["retried", "retried", "done"]
    assert all(r.parent_id == send.span_id for r in runs)  # the same parent: the send
    assert [r.links for r in runs] == [[], [runs[0].span_id], [runs[1].span_id]]
    assert runs[0].status == "ERROR" and runs[0].attributes["error.type"] == "builtins.RuntimeError"
    assert runs[2].status == "UNSET"


def test_retries_of_a_message_that_came_without_a_context_join_its_first_runs_trace(traced, recorder):
    calls = []

    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise RuntimeError("not yet")

    flaky.send()  # no active span
    traced.join()
    first, second = named(recorder.spans(), "process flaky")
    assert first.parent_id is None
    assert second.trace_id == first.trace_id and second.parent_id == first.span_id
    assert second.links == [first.span_id]


def test_a_permanent_failure_is_a_failed_span_and_its_replay_continues_the_trace(traced, recorder):
    broken = [True]

    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def strict():
        if broken[0]:
            raise InvalidPayload("no such thing")

    with recorder.tracer.start_as_current_span("request"):
        sent = strict.send()
    traced.join()
    failed = one(recorder.spans(), "process strict")
    assert failed.attributes["dramatiq.outcome"] == "failed" and failed.status == "ERROR"
    assert "InvalidPayload: no such thing" in failed.status_message
    [letter] = traced.letters.letters.values()
    assert letter.options[TRACEPARENT] == sent.options[TRACEPARENT]
    assert letter.options[LINK_OPTION].split("-")[2] == failed.span_id
    broken[0] = False
    DeadLetterService(traced.letters, BrokerSender(traced.broker), SystemClock()).replay(letter.id)  # no span
    traced.join()
    _, replayed = named(recorder.spans(), "process strict")
    assert replayed.attributes["dramatiq.outcome"] == "done"
    assert (replayed.trace_id, replayed.parent_id, replayed.links) == (failed.trace_id, failed.parent_id,
                                                                      [failed.span_id])


def test_a_parked_run_is_parked_and_the_run_after_it_links_to_it(traced, recorder):
    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def later():
        pass

    with recorder.tracer.start_as_current_span("request"):
        # Retry-After said to come back later: ClassifiedRetries parks it until then.
        later.send_with_options(not_before=int(time.time() * 1000) + 100)
    traced.join()
    parked, ran = named(recorder.spans(), "process later")
    assert parked.attributes["dramatiq.outcome"] == "parked" and ran.attributes["dramatiq.outcome"] == "done"
    assert ran.links == [parked.span_id] and ran.parent_id == parked.parent_id


def test_a_duplicate_skipped_by_dedup_is_a_skipped_span(traced, recorder):
    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def once(n):
        pass

    with recorder.tracer.start_as_current_span("request"):
        once.send_with_options(args=(1,), dedup_key="k", dedup_window=60)
        traced.join()
        once.send_with_options(args=(2,), dedup_key="k", dedup_window=60)
    traced.join()
    outcomes = [s.attributes["dramatiq.outcome"] for s in named(recorder.spans(), "process once")]
    assert outcomes == ["done", "skipped"]


@pytest.mark.parametrize("options", [
    {TRACEPARENT: 123},
    {TRACEPARENT: ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]},
    {TRACEPARENT: "garbage", "tracestate": "x" * 10_000},
    {TRACEPARENT: "00-00000000000000000000000000000000-0000000000000000-01"},
    {"baggage": "\ud800=1;" * 1000, LINK_OPTION: {"no": "link"}},
    {LINK_OPTION: "00-zz-zz-01"},
])
def test_junk_trace_options_from_a_producer_never_stop_a_message(traced, recorder, options):
    ran = []

    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def sturdy():
        ran.append(1)

    sturdy.send_with_options(**options)
    traced.join()
    assert ran == [1] and not traced.letters.letters
    [process] = recorder.spans()
    assert process.parent_id is None and process.links == [] and process.attributes["dramatiq.outcome"] == "done"


def test_a_message_skipped_before_the_tracing_hook_leaves_no_span_open(traced, recorder):
    @dramatiq.actor(broker=traced.broker, queue_name="q", dead_letter_expired=False)
    def stale():
        pass

    old = stale.message_with_options(max_age=1000)
    traced.broker.enqueue(dataclasses.replace(old, message_timestamp=old.message_timestamp - 10_000))  # expired
    traced.join()

    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def fresh():
        pass

    fresh.send()
    traced.join()
    assert [s.name for s in recorder.spans()] == ["process fresh"]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


def test_a_run_ends_its_span_and_restores_the_context_whatever_its_exception_does(recorder):
    middleware = Tracing(tracer_provider=recorder.provider)
    broker = dramatiq.brokers.stub.StubBroker(middleware=[])
    message = dramatiq.Message("q", "a", (), {}, {})
    before = otel_context.get_current()
    middleware.before_process_message(broker, message)
    assert otel_context.get_current() != before
    middleware.after_process_message(broker, message, exception=Unprintable())
    assert otel_context.get_current() == before
    [span] = recorder.spans()
    assert span.attributes["error.type"].endswith("Unprintable") and span.attributes["dramatiq.outcome"] == "failed"


@pytest.mark.parametrize(("exception", "outcome"), [(Cancelled("cancelled by an operator"), "cancelled"),
                                                    (Paced("over the channel's rate", wait_s=1.5), "parked")])
def test_a_run_cancelled_or_paced_is_not_an_error(recorder, exception, outcome):
    middleware = Tracing(tracer_provider=recorder.provider)
    broker = dramatiq.brokers.stub.StubBroker(middleware=[])
    message = dramatiq.Message("q", "a", (), {}, {})
    middleware.before_process_message(broker, message)
    middleware.after_process_message(broker, message, exception=exception)
    [span] = recorder.spans()
    assert span.attributes["dramatiq.outcome"] == outcome and span.status == "UNSET"


def test_baggage_that_cannot_be_encoded_fails_neither_the_send_nor_the_transaction(traced, recorder):
    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def work():
        pass

    with tracing_on(recorder.provider):
        token = otel_context.attach(baggage.set_baggage("who", "\ud800"))
        try:
            with recorder.tracer.start_as_current_span("request"):
                assert tracing.current_trace_context() is None  # what the unit of work records
                sent = work.send()
        finally:
            otel_context.detach(token)
    traced.join()
    assert TRACEPARENT not in sent.options and "baggage" not in sent.options
    assert one(recorder.spans(), "process work").attributes["dramatiq.outcome"] == "done"


def test_the_worker_exports_what_is_buffered_when_it_stops(recorder):
    flushed = []
    recorder.provider.force_flush = lambda timeout_millis=30000: flushed.append(timeout_millis) or True
    Tracing(tracer_provider=recorder.provider).after_worker_shutdown(None, None)
    assert flushed == [SHUTDOWN_FLUSH_MS]


def test_a_send_whose_enqueue_never_completes_is_ended_as_an_error(recorder):
    middleware = Tracing(tracer_provider=recorder.provider)
    broker = dramatiq.brokers.stub.StubBroker(middleware=[middleware])
    tracer = recorder.tracer
    with tracer.start_as_current_span("request"):
        for n in range(1001):  # before_enqueue without after_enqueue: the broker raised each time
            middleware.before_enqueue(broker, dramatiq.Message("q", "a", (n,), {}, {}), None)
    sends = named(recorder.spans(), "send a")
    assert len(sends) == 501 and {s.status for s in sends} == {"ERROR"}
    assert len(middleware._sending) == 500


# --- configuration from OTEL_* ---

@pytest.mark.parametrize(("environ", "exporters"), [
    ({}, ()),
    ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, ()),
    ({"OTEL_TRACES_EXPORTER": ""}, ()),
    ({"OTEL_TRACES_EXPORTER": "none"}, ("none",)),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ("otlp", "console")),
    ({"OTEL_TRACES_EXPORTER": " Console "}, ("console",)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ("otlp",)),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, ()),
])
def test_tracing_is_on_only_when_the_environment_asks(environ, exporters):
    assert tracing.plan_from_env(environ).exporters == exporters


@pytest.mark.parametrize(("environ", "variable"), [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "none,otlp"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
])
def test_a_value_atelier_cannot_serve_stops_with_the_variables_name(environ, variable):
    with pytest.raises(ConfigError) as raised:
        tracing.plan_from_env(environ)
    assert raised.value.message.startswith(f"configuration error: {variable}: ")


def test_instrumentations_can_be_turned_off_one_by_one():
    plan = tracing.plan_from_env({"OTEL_TRACES_EXPORTER": "none", "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "urllib3"})
    assert plan.instrument == ("httpx",)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = services.subprocess_env(BROKER_URL="stub://", LOG_FORMAT="json", **env)
    environ = {k: v for k, v in environ.items() if not k.startswith("OTEL_")} | env
    return subprocess.run([sys.executable, "-c", code], env=environ, cwd=services.ROOT, capture_output=True,
                          text=True, timeout=60)


def test_with_nothing_set_a_producer_loads_nothing_of_opentelemetry():
    done = _python("import sys, actors\n"
                   "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
                   "print([type(m).__name__ for m in actors.broker.middleware])")
    assert done.returncode == 0, done.stderr
    modules, stack = done.stdout.splitlines()
    assert modules == "[]"
    assert "Tracing" not in stack and "Correlation" in stack


def test_otel_traces_exporter_puts_tracing_in_the_stack_and_spans_on_stdout():
    done = _python("import actors, structlog\n"
                   "from bootstrap.tracing import flush\n"
                   "print([type(m).__name__ for m in actors.broker.middleware])\n"
                   "from opentelemetry import trace\n"
                   "with trace.get_tracer('t').start_as_current_span('producer'):\n"
                   "    structlog.get_logger('t').info('inside')\n"
                   "flush()\n",
                   OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="atelier-test")
    assert done.returncode == 0, done.stderr
    stack, *spans = done.stdout.splitlines()
    assert "'Correlation', 'Tracing', 'Jobs', 'DeadLetters'" in stack
    [span] = [json.loads(line) for line in spans]
    assert span["name"] == "producer" and span["resource"]["attributes"]["service.name"] == "atelier-test"
    [line] = [json.loads(x) for x in done.stderr.splitlines() if '"inside"' in x]
    assert line["trace_id"] == span["context"]["trace_id"][2:] and line["span_id"] == span["context"]["span_id"][2:]


def test_a_bad_otel_value_stops_a_producer_with_one_line():
    done = _python("import actors", OTEL_TRACES_EXPORTER="zipkin")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("configuration error: OTEL_TRACES_EXPORTER: zipkin")


def test_the_service_name_defaults_to_atelier():
    done = _python("import actors\nfrom bootstrap.tracing import tracer_provider\n"
                   "print(tracer_provider().resource.attributes['service.name'])", OTEL_TRACES_EXPORTER="none")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "atelier"


def test_an_applications_own_provider_is_used_as_it_is():
    done = _python("from opentelemetry import trace\n"
                   "from opentelemetry.sdk.trace import TracerProvider\n"
                   "mine = TracerProvider()\n"
                   "trace.set_tracer_provider(mine)\n"
                   "import actors\n"
                   "from bootstrap.tracing import tracer_provider\n"
                   "print(tracer_provider() is mine, [type(m).__name__ for m in actors.broker.middleware])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True ") and "'Tracing'" in done.stdout


# --- log lines ---

def test_log_lines_carry_the_trace_and_span_ids_of_the_run(recorder):
    from bootstrap.logging import configure_logging

    configure_logging(Settings(log_format="json"), force=True)
    captured = io.StringIO()
    logging.getLogger().handlers[0].stream = captured
    stack = make_stack(tracer_provider=recorder.provider)
    try:
        with tracing_on(recorder.provider):
            @dramatiq.actor(broker=stack.broker, queue_name="q")
            def noisy():
                structlog.get_logger("test").info("working")
                logging.getLogger("stdlib").warning("stdlib too")

            with recorder.tracer.start_as_current_span("request"):
                noisy.send()
            stack.join()
            structlog.get_logger("test").info("outside")
    finally:
        stack.worker.stop()
        stack.broker.close()
        configure_logging(Settings(), force=True)
    lines = {(r := json.loads(line))["event"]: r for line in captured.getvalue().splitlines()}
    process = one(recorder.spans(), "process noisy")
    for event in ("working", "stdlib too"):
        assert lines[event]["trace_id"] == process.trace_id and lines[event]["span_id"] == process.span_id
    assert "trace_id" not in lines["outside"]


def test_with_tracing_off_the_log_processor_adds_nothing():
    assert not tracing.tracing_enabled()
    assert tracing.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    assert tracing.current_trace_context() is None


# --- scheduler ticks ---

def test_a_scheduler_tick_starts_a_trace_of_its_own(traced, recorder):
    from schedules.jobs import Job, LocalTickGuard, fire

    @dramatiq.actor(broker=traced.broker, queue_name="q")
    def tick():
        pass

    with tracing_on(recorder.provider):
        with recorder.tracer.start_as_current_span("something else") as other:
            assert fire(Job("ticking", "tick", interval=60), traced.broker, LocalTickGuard())
        traced.join()
    spans = recorder.spans()
    schedule = one(spans, "schedule ticking")
    assert schedule.parent_id is None and schedule.trace_id != _hex(other.get_span_context().trace_id, 32)
    assert [s.name for s in ancestors(spans, one(spans, "process tick"))] == ["send tick", "schedule ticking"]
