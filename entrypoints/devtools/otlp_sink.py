"""A tiny OTLP/HTTP trace receiver for development and tests: a collector stand-in on 127.0.0.1.

    python -m entrypoints.devtools.otlp_sink [--host 127.0.0.1] [--port 4318]

It takes what OpenTelemetry's http/protobuf exporter sends (``POST /v1/traces``, protobuf, gzip
or not), keeps the spans in memory and answers as a collector does. ``GET /spans`` returns them
as JSON (``?trace_id=<hex>`` for one trace), ``GET /stats`` how many (per service),
``GET /traces/<trace id>`` one trace as an indented text tree (what docs/tracing.md shows);
``POST /reset`` forgets them. Run from the command line, it also prints each trace's tree a few
seconds after its last span arrived.

Point a process at it with ``OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass
class SpanRecord:
    """One span, as the tests, the bench and the text tree read it (ids in hex)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)  # span ids
    status: str = "UNSET"
    status_message: str = ""

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


def decode(body: bytes) -> list[SpanRecord]:
    """The spans of one OTLP ExportTraceServiceRequest (protobuf)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    found = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(SpanRecord(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex() or None, name=span.name, kind=KINDS.get(span.kind, "?"),
                    service=str(resource.get("service.name", "")), start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes={kv.key: _value(kv.value) for kv in span.attributes},
                    links=[link.span_id.hex() for link in span.links],
                    status=STATUS.get(span.status.code, "?"), status_message=span.status.message))
    return found


def from_sdk(span: Any) -> SpanRecord:
    """A finished span of the OpenTelemetry SDK (an InMemorySpanExporter's) as a SpanRecord."""
    context, parent = span.context, span.parent
    return SpanRecord(
        trace_id=format(context.trace_id, "032x"), span_id=format(context.span_id, "016x"),
        parent_id=format(parent.span_id, "016x") if parent is not None else None, name=span.name,
        kind=span.kind.name, service=str(span.resource.attributes.get("service.name", "")),
        start_ns=span.start_time or 0, end_ns=span.end_time or 0, attributes=dict(span.attributes or {}),
        links=[format(link.context.span_id, "016x") for link in span.links],
        status=span.status.status_code.name, status_message=span.status.description or "")


#: Attributes shown beside a span's name in the text tree, and their labels there.
SHOWN = {"messaging.destination.name": "queue", "dramatiq.retries": "retries", "dramatiq.outcome": "outcome",
         "atelier.outbox.event_type": "event", "http.request.method": "method", "http.method": "method",
         "url.full": "url", "http.url": "url", "http.response.status_code": "status", "http.status_code": "status",
         "error.type": "error", "atelier.paced_s": "paced_s"}


def tree(spans: Iterable[SpanRecord], trace_id: str | None = None) -> str:
    """One trace (the first one's if trace_id is None) as an indented text tree, children in start order."""
    spans = [s for s in spans if trace_id is None or s.trace_id == trace_id]
    if not spans:
        return "(no spans)"
    trace_id = trace_id or spans[0].trace_id
    spans = [s for s in spans if s.trace_id == trace_id]
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for s in spans:
        children.setdefault(s.parent_id if s.parent_id in ids else None, []).append(s)
    t0 = min(s.start_ns for s in spans)
    lines = [f"trace {trace_id}"]

    def show(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s.start_ns):
            shown = " ".join(dict.fromkeys(f"{label}={s.attributes[k]}" for k, label in SHOWN.items()
                                           if k in s.attributes))
            links = f" links={','.join(link[:8] for link in s.links)}" if s.links else ""
            error = " ERROR" if s.status == "ERROR" else ""
            orphan = " (parent not here)" if depth == 0 and s.parent_id else ""
            lines.append(f"{'  ' * depth}{s.name} [{s.kind.lower()} {s.service}] "
                         f"+{(s.start_ns - t0) / 1e6:.1f} ms {s.ms:.1f} ms span={s.span_id[:8]}{links}{error}"
                         f"{orphan} {shown}".rstrip())
            show(s.span_id, depth + 1)

    show(None, 0)
    return "\n".join(lines)


class Sink:
    """The spans received so far; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[SpanRecord] = []
        self.requests = 0
        self.last_arrival = 0.0

    def add(self, spans: list[SpanRecord]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1
            self.last_arrival = time.monotonic()

    def spans(self, trace_id: str | None = None) -> list[SpanRecord]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def reset(self) -> None:
        with self._lock:
            self._spans.clear()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlparse(self.path).path
        if path == "/reset":
            self.server.sink.reset()
            return self._reply(200, b"{}", "application/json")
        if path != "/v1/traces":
            return self._reply(404, b"", "text/plain")
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            spans = decode(body)
        except Exception as exc:  # a collector answers 400 to what it cannot read
            return self._reply(400, str(exc).encode(), "text/plain")
        self.server.sink.add(spans)
        # An empty ExportTraceServiceResponse: all accepted.
        self._reply(200, b"", "application/x-protobuf")

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlparse(self.path)
        if url.path == "/spans":
            trace_id = (parse_qs(url.query).get("trace_id") or [None])[0]
            data = json.dumps([asdict(s) for s in self.server.sink.spans(trace_id)]).encode()
            return self._reply(200, data, "application/json")
        if url.path == "/stats":
            spans = self.server.sink.spans()
            services: dict[str, int] = {}
            for s in spans:
                services[s.service] = services.get(s.service, 0) + 1
            data = json.dumps({"spans": len(spans), "requests": self.server.sink.requests, "services": services})
            return self._reply(200, data.encode(), "application/json")
        if url.path.startswith("/traces/"):
            trace_id = url.path.rsplit("/", 1)[1]
            return self._reply(200, tree(self.server.sink.spans(trace_id), trace_id).encode() + b"\n",
                               "text/plain")
        self._reply(404, b"", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sink: Sink) -> None:
        super().__init__(address, _Handler)
        self.sink = sink


def start(host: str = "127.0.0.1", port: int = 0) -> tuple[_Server, Sink]:
    """Serve in a background thread; returns the server (``server.server_address``) and its sink.
    Stop it with ``server.shutdown(); server.server_close()``."""
    sink = Sink()
    server = _Server((host, port), sink)
    threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True).start()
    return server, sink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otlp_sink", description="A tiny OTLP/HTTP trace receiver.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--quiet-after", type=float, default=3.0,
                        help="print a trace's tree once no span of it arrived for this many seconds")
    parser.add_argument("--no-print", action="store_true", help="keep the spans, print no trees (benchmarks)")
    args = parser.parse_args(argv)
    server, sink = start(args.host, args.port)
    print(f"OTLP/HTTP sink on http://{args.host}:{server.server_address[1]} (POST /v1/traces)", flush=True)
    printed: set[str] = set()
    try:
        while True:
            time.sleep(0.5)
            if not args.no_print and sink.last_arrival and time.monotonic() - sink.last_arrival >= args.quiet_after:
                spans = sink.spans()
                for trace_id in dict.fromkeys(s.trace_id for s in spans):
                    if trace_id not in printed:
                        printed.add(trace_id)
                        print(tree(spans, trace_id) + "\n", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
