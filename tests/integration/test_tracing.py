"""Tracing with real servers and libraries: the outbox on SQLite and PostgreSQL, wired by the composition
root; a channel gateway against the mock channels server (httpx instrumented); MinIO's client against
moto's S3 server (urllib3 instrumented). Spans go to the SDK's in-memory exporter."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dramatiq
import pytest
from sqlalchemy import select

from adapters.channels.http import WhatsAppGateway
from adapters.outbox_publisher import DramatiqPublisher
from adapters.sql import tables as t
from bootstrap.container import Container
from bootstrap.settings import load_settings
from domain.models import DomainEvent, MessageChannel, OutboundMessage, new_id
from domain.services.outbox import OutboxRelay, Route
from entrypoints.devtools.otlp_sink import tree
from tests.integration.test_channels import Mock
from tests.tracing_support import Recorder, ancestors, named, one, tracing_on
from tests.unit.stack import make_stack


@pytest.fixture
def recorder():
    r = Recorder()
    with tracing_on(r.provider):
        yield r
    r.close()


def test_an_event_is_relayed_in_the_trace_of_the_transaction_that_recorded_it(recorder, outbox_db):
    container = Container(load_settings(database_url=outbox_db))  # the unit of work as the root wires it
    stack = make_stack(tracer_provider=recorder.provider)
    ran = []
    dramatiq.actor(lambda image_id: ran.append(image_id), broker=stack.broker, actor_name="sub", queue_name="q")
    publisher = DramatiqPublisher(stack.broker, tracer_provider=recorder.provider, messaging_system="stub")
    relay = OutboxRelay(container.uow, publisher, [Route("image.*", "sub", args=lambda e: (e["aggregate_id"],))])
    try:
        with recorder.tracer.start_as_current_span("web request") as request, container.uow() as uow:
            uow.add_event(DomainEvent("image.uploaded", "image", "traced"))
            uow.commit()
        with container.uow() as uow:
            uow.add_event(DomainEvent("image.uploaded", "image", "untraced"))  # no span active
            uow.commit()
        with recorder.tracer.start_as_current_span("relay_outbox tick") as tick:
            assert relay.relay_batch().deliveries == 2
        stack.join()
    finally:
        stack.worker.stop()
        stack.broker.close()
    assert sorted(ran) == ["traced", "untraced"]
    with container.engine.connect() as conn:
        contexts = {r.aggregate_id: r.trace_context for r in conn.execute(
            select(t.outbox_events.c.aggregate_id, t.outbox_events.c.trace_context))}
    container.close()
    request_trace = format(request.get_span_context().trace_id, "032x")
    assert contexts["untraced"] is None
    assert contexts["traced"]["traceparent"].split("-")[1:3] == [request_trace,
                                                                  format(request.get_span_context().span_id, "016x")]

    spans = recorder.spans()
    runs = {s.attributes["messaging.message.id"]: s for s in named(spans, "process sub")}
    traced = next(s for s in runs.values() if s.trace_id == request_trace)
    # producer -> outbox -> relay -> subscriber: one trace; the relay's send is linked to its tick.
    assert [s.name for s in ancestors(spans, traced)] == ["send sub", "web request"], tree(spans, request_trace)
    send = ancestors(spans, traced)[0]
    assert send.links == [format(tick.get_span_context().span_id, "016x")]
    assert send.attributes["atelier.outbox.event_type"] == "image.uploaded"
    # The event recorded without a trace is sent inside the tick that relayed it.
    [other] = [s for s in runs.values() if s is not traced]
    assert [s.name for s in ancestors(spans, other)] == ["send sub", "relay_outbox tick"]


def test_the_relay_passes_a_recorded_context_on_when_it_does_not_trace_itself(recorder, sqlite_url):
    container = Container(load_settings(database_url=sqlite_url))
    broker = dramatiq.brokers.stub.StubBroker()
    dramatiq.actor(lambda image_id: None, broker=broker, actor_name="sub", queue_name="q")
    relay = OutboxRelay(container.uow, DramatiqPublisher(broker), [Route("image.*", "sub",
                                                                         args=lambda e: (e["aggregate_id"],))])
    with recorder.tracer.start_as_current_span("web request") as request, container.uow() as uow:
        uow.add_event(DomainEvent("image.uploaded", "image", "i-1"))
        uow.commit()
    relay.relay_batch()
    [message] = broker.queues["q"].queue
    container.close()
    decoded = dramatiq.Message.decode(message)
    assert decoded.options["traceparent"].split("-")[2] == format(request.get_span_context().span_id, "016x")


def test_only_the_w3c_fields_of_a_recorded_context_go_on_the_message(recorder, sqlite_url):
    """A row edited by hand must not set delivery options (max_retries, dedup_key) through it."""
    from sqlalchemy import update

    container = Container(load_settings(database_url=sqlite_url))
    broker = dramatiq.brokers.stub.StubBroker()
    dramatiq.actor(lambda image_id: None, broker=broker, actor_name="sub", queue_name="q")
    with container.uow() as uow:
        event = DomainEvent("image.uploaded", "image", "i-2")
        uow.add_event(event)
        uow.commit()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with container.engine.begin() as conn:
        conn.execute(update(t.outbox_events).values(trace_context={
            "traceparent": traceparent, "max_retries": "lots", "dedup_key": "mine", "baggage": 7}))
    OutboxRelay(container.uow, DramatiqPublisher(broker),
                [Route("image.*", "sub", args=lambda e: (e["aggregate_id"],))]).relay_batch()
    container.close()
    options = dramatiq.Message.decode(broker.queues["q"].queue[0]).options
    assert options["traceparent"] == traceparent and "max_retries" not in options and "baggage" not in options
    assert options["dedup_key"] == f"{event.id}:sub"


@pytest.fixture
def mock():
    m = Mock()
    yield m
    m.close()


def test_a_channel_call_is_a_client_span_of_the_run_and_carries_its_context(recorder, mock):
    gateway = WhatsAppGateway(f"{mock.url}/whatsapp", "tok", "12345")
    message = OutboundMessage(new_id(), MessageChannel.WHATSAPP, "+15550001111", text="hi")
    with recorder.tracer.start_as_current_span("process deliver_message") as run:
        gateway.send(message, "idem-1")
    gateway.close()
    spans = recorder.spans()
    client = one(spans, "POST")
    assert client.kind == "CLIENT" and client.parent_id == format(run.get_span_context().span_id, "016x")
    assert client.attributes.get("http.response.status_code", client.attributes.get("http.status_code")) == 200
    received = mock.deliveries("whatsapp")[message.id]["traceparent"]
    assert received.split("-")[1:3] == [client.trace_id, client.span_id]


def test_minio_calls_are_client_spans_of_the_run(recorder, minio_store):
    with recorder.tracer.start_as_current_span("process process_image") as run:
        minio_store.put("originals/a.bin", b"data", "application/octet-stream")
    spans = recorder.spans()
    puts = [s for s in spans if s.kind == "CLIENT" and s.name == "PUT"]
    assert puts and all(s.parent_id == format(run.get_span_context().span_id, "016x") for s in puts), tree(spans)


class FakeQdrant(ThreadingHTTPServer):
    """Answers the Qdrant REST calls QdrantIndex.ping makes, keeping each request's traceparent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                seen.append((self.path, self.headers.get("traceparent")))
                body = ({"title": "qdrant", "version": "1.12.0"} if self.path == "/"
                        else {"result": {"collections": []}, "status": "ok", "time": 0.0})
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_qdrant_calls_over_http_are_client_spans_carrying_the_run(recorder):
    from adapters.vector_index import QdrantIndex

    server = FakeQdrant()
    index = QdrantIndex("images", url=f"http://127.0.0.1:{server.server_address[1]}")
    try:
        with recorder.tracer.start_as_current_span("process embed_image") as run:
            index.ping()
    finally:
        index.close()
        server.shutdown()
        server.server_close()
    run_id = format(run.get_span_context().span_id, "016x")
    [call] = [s for s in recorder.spans() if s.kind == "CLIENT" and s.parent_id == run_id
              and str(s.attributes.get("url.full", s.attributes.get("http.url", ""))).endswith("/collections")]
    received = [header.split("-")[1:3] for path, header in server.seen if path == "/collections" and header]
    assert received == [[call.trace_id, call.span_id]]


def test_readiness_probes_make_no_spans(recorder, minio_store):
    from bootstrap.tracing import untraced

    with untraced():
        minio_store.ping()
    assert recorder.spans() == []
