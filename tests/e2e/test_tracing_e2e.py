"""Tracing end to end on Redis and RabbitMQ (issue 19): this test process is the producer (an SDK
provider with the in-memory exporter); in one span it registers an image and records a chat message,
through the composition root's services, so both events go into the outbox with its trace context.
A real `dramatiq actors` worker and the scheduler (its relay loop and ticks) trace with the standard
OTEL_* variables to an OTLP/HTTP sink this test runs on 127.0.0.1, the collector's stand-in.

One trace must join: the producer's span -> the outbox's send -> process_image (MinIO calls) -> its
image.processed event's send -> embed_image; and the producer's span -> route_message ->
deliver_message -> the channel's HTTP call, whose request carried the trace to the channel; the
channel fails the first call, and the retry (with any run the channel's pacing parks) is a run of the
same trace linked to the one before. The
worker's log lines of those runs carry the producer's trace id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bootstrap.container import Container
from bootstrap.settings import Settings, load_settings
from entrypoints.devtools import otlp_sink
from entrypoints.samples import make_image
from tests import services
from tests.clip_support import tiny_env
from tests.e2e.test_scheduler import SchedulerProcess
from tests.integration.test_channels import Mock
from tests.tracing_support import Recorder, ancestors, tracing_on

pytestmark = pytest.mark.e2e


@pytest.fixture
def sink():
    server, sink = otlp_sink.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", sink
    server.shutdown()
    server.server_close()


@pytest.fixture
def mock():
    m = Mock()
    yield m
    m.close()


@pytest.fixture
def env(broker_env, tmp_path, sink, mock):
    env = dict(broker_env)
    env.update(tiny_env(tmp_path / "clip"))
    env.update({
        "WHATSAPP_BASE_URL": f"{mock.url}/whatsapp", "WHATSAPP_TOKEN": "e2e-token", "WHATSAPP_PHONE_NUMBER_ID": "100",
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink[0],
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a tenth of a second, not five
    })
    yield env
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("embeddings", "messages", "outbox"))


def _chain(spans, name: str) -> list[str]:
    """Names from the span called ``name`` up to its root (empty if there is no such span)."""
    found = [s for s in spans if s.name == name]
    return [found[0].name, *(a.name for a in ancestors(spans, found[0]))] if found else []


def test_one_trace_from_the_producer_through_the_outbox_the_actors_and_the_channel(env, sink, mock, tmp_path):
    recorder = Recorder(service="producer")
    producer = Container(load_settings(**{k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}))
    worker_env = dict(env, OTEL_SERVICE_NAME="atelier-worker")
    assert mock.control(channel="whatsapp", mode="fail", status=503, count=1).status_code == 200
    with services.WorkerProcess(worker_env, tmp_path / "worker.log", threads=4) as worker, \
            SchedulerProcess(dict(env, OTEL_SERVICE_NAME="atelier-scheduler"), tmp_path / "scheduler.log"):
        with tracing_on(recorder.provider), recorder.tracer.start_as_current_span("web request") as request:
            image = producer.media.register_image(make_image(640, 480, seed=3), "image/jpeg")
            message, _ = producer.messaging.create(channel="whatsapp", recipient="+15550002222", text="traced")
        trace_id = format(request.get_span_context().trace_id, "032x")

        def joined() -> bool:
            spans = recorder.spans() + sink[1].spans(trace_id)
            return (_chain(spans, "process embed_image")[-1:] == ["web request"]
                    and any(s.name == "process deliver_message" and s.attributes.get("dramatiq.outcome") == "done"
                            and _chain(spans, s.name)[-1:] == ["web request"] for s in spans)
                    and len([s for s in spans if s.name == "POST"]) == 2)

        services.wait_for(joined, timeout=180, message=f"one trace ({worker.output()[-3000:]})")
    producer.close()
    spans = recorder.spans() + sink[1].spans(trace_id)
    text = otlp_sink.tree(spans, trace_id)
    if os.environ.get("TRACING_E2E_TREE"):  # where docs/tracing.md's trace comes from
        Path(os.environ["TRACING_E2E_TREE"]).write_text(text + "\n")

    assert _chain(spans, "process embed_image") == [
        "process embed_image", "send embed_image", "process process_image", "send process_image", "web request",
    ], text
    assert _chain(spans, "POST") == [
        "POST", "process deliver_message", "send deliver_message", "process route_message", "send route_message",
        "web request",
    ], text
    # The first run failed on the 503 and was retried; the channel's pacing may park the retry
    # before the run that sends. Each run: the same parent, linked to the run before.
    runs = sorted((s for s in spans if s.name == "process deliver_message"), key=lambda s: s.start_ns)
    outcomes = [r.attributes["dramatiq.outcome"] for r in runs]
    assert outcomes[0] == "retried" and outcomes[-1] == "done" and set(outcomes[1:-1]) <= {"parked"}, text
    assert {r.parent_id for r in runs} == {runs[0].parent_id}, text
    assert [r.links for r in runs[1:]] == [[r.span_id] for r in runs[:-1]], text
    retried = runs[-1]
    processed = [s for s in spans if s.name == "process process_image"]
    assert processed[0].attributes["messaging.system"] == ("redis" if env["BROKER_URL"].startswith("redis")
                                                             else "rabbitmq")
    assert any(s.kind == "CLIENT" and s.parent_id == processed[0].span_id for s in spans), text  # MinIO
    assert {s.service for s in spans if s.name.startswith("process ")} == {"atelier-worker"}
    # The channel got the trace with the request.
    post = next(s for s in spans if s.name == "POST" and s.parent_id == retried.span_id)
    assert mock.deliveries("whatsapp")[message.id]["traceparent"].split("-")[1:3] == [trace_id, post.span_id]
    # The worker's log lines of these runs carry the producer's trace id.
    records = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    embedded = [r for r in records if r.get("event") == "image embedded" and r.get("image_id") == image.id]
    assert embedded and embedded[0]["trace_id"] == trace_id, embedded
    delivered = [r for r in records if r.get("actor") == "deliver_message"]
    assert delivered and {r.get("trace_id") for r in delivered} == {trace_id}
    recorder.close()
