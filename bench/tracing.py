"""What tracing costs: the atelier stack (state in Redis, dead letters in SQLite) on real Redis and real
RabbitMQ, a no-op actor, with tracing off (what a process with no OTEL_* variable runs: the stack has
no Tracing middleware), on without an exporter (OTEL_TRACES_EXPORTER=none: every message gets a send
span and a consumer span, carries its context, nothing is exported), and on with the batch span
processor exporting over OTLP/HTTP to a local collector stand-in (entrypoints/devtools/otlp_sink.py,
a process of its own on 127.0.0.1), every trace sampled and 10 % of them (parentbased_traceidratio).
With tracing on, each message is sent inside a producer span of its own, as a traced web request
would send it (so each is a trace, sampled or not on its own); off, the producer makes no span.
Same run, same in-process worker (8 threads), rounds interleaved, best of each.

Throughput: N messages enqueued first (the enqueue rate is printed too: the producer's span and the
send span cost there), then the worker starts; time until the last one ran. Then what tracing costs
a log line: the structlog processor that adds trace_id/span_id, with tracing off and inside a span.

    .venv/bin/python bench/tracing.py [messages]      (from the checkout root)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq  # noqa: E402
import redis  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: E402

import middleware  # noqa: E402
from adapters.metrics import RedisMetricsStore  # noqa: E402
from adapters.sql.deadletters import SqlDeadLetterStore  # noqa: E402
from adapters.sql.engine import make_engine  # noqa: E402
from adapters.sql.migrate import upgrade  # noqa: E402
from adapters.state.redis import RedisBreakerStore, RedisDedupStore, RedisFallbackQueue  # noqa: E402
from brokers.dispatch import AtelierRabbitmqBroker, AtelierRedisBroker  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
THREADS = 8
MODES = ("off", "none", "batch", "batch10")
NAMES = {"off": "tracing off", "none": "on, no exporter", "batch": "on, batch OTLP export",
         "batch10": "on, export, 10 % sampled"}
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
ROOT = Path(__file__).resolve().parent.parent


class Setup:
    def __init__(self, kind: str, mode: str, ns: str, db_url: str, sink_url: str) -> None:
        self.kind, self.mode = kind, mode
        self.queue = f"{ns}{kind}_{mode}"
        self.client = redis.Redis.from_url(REDIS_URL)
        c, engine = self.client, make_engine(db_url)
        metrics = RedisMetricsStore(c, f"atelier:{ns}metrics:")
        dedup = RedisDedupStore(c, f"atelier:{ns}dedup:")
        breakers = RedisBreakerStore(c, f"atelier:{ns}circuit:")
        fallback = RedisFallbackQueue(c, f"atelier:{ns}fallback:")
        letters = SqlDeadLetterStore(engine)
        # The sampler: parentbased_always_on (every span recorded), or 10 % of the traces.
        self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)) if mode == "batch10" else None,
                                       resource=Resource({"service.name": f"bench-{kind}-{mode}"}))
        if mode in ("batch", "batch10"):
            # The SDK's defaults (OTEL_BSP_*): what a user who sets only the endpoint gets.
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{sink_url}/v1/traces")))
        mw = middleware.build_stack(max_retries=0, metrics_store=lambda: metrics, dedup_store=lambda: dedup,
                                    breaker_store=lambda: breakers, fallback_queue=lambda: fallback,
                                    dead_letter_store=lambda: letters, tracing=mode != "off",
                                    tracer_provider=self.provider, messaging_system=kind)
        if kind == "redis":
            self.broker = AtelierRedisBroker(url=REDIS_URL, middleware=mw)
        else:
            self.broker = AtelierRabbitmqBroker(url=RABBITMQ_URL, confirm_delivery=True, middleware=mw)
        self.broker.emit_after("process_boot")
        self.tracer = self.provider.get_tracer("bench")
        self.done = 0
        self.target = 0
        self.finished = threading.Event()
        self.lock = threading.Lock()

        def noop(i: int) -> None:
            with self.lock:
                self.done += 1
                if self.done >= self.target:
                    self.finished.set()

        self.actor = dramatiq.actor(noop, broker=self.broker, actor_name=f"noop_{kind}_{mode}",
                                    queue_name=self.queue)

    def throughput(self, n: int) -> tuple[float, float]:
        """(enqueue rate, processing rate) in messages per second."""
        self.done, self.target = 0, n
        self.finished.clear()
        started = time.perf_counter()
        if self.mode == "off":
            for i in range(n):
                self.actor.send(i)
        else:
            for i in range(n):
                with self.tracer.start_as_current_span("producer request"):
                    self.actor.send(i)
        sent = n / (time.perf_counter() - started)
        worker = dramatiq.Worker(self.broker, worker_threads=THREADS, worker_timeout=100)
        started = time.perf_counter()
        worker.start()
        assert self.finished.wait(600), f"{self.kind}/{self.mode}: {self.done} of {n}"
        elapsed = time.perf_counter() - started
        worker.stop()
        # Each Worker adds its own middleware to the broker; drop it so runs do not pile them up.
        self.broker.middleware[:] = [m for m in self.broker.middleware if type(m).__name__ != "_WorkerMiddleware"]
        return sent, n / elapsed

    def close(self) -> None:
        self.provider.shutdown()
        if self.kind == "redis":
            keys = list(self.client.scan_iter(f"dramatiq:{self.queue}*"))
            if keys:
                self.client.delete(*keys)
        else:
            for suffix in ("", ".DQ", ".XQ"):
                self.broker.channel.queue_delete(f"{self.queue}{suffix}")
        self.broker.close()


def start_sink() -> tuple[subprocess.Popen[bytes], str]:
    from tests.services import free_port, wait_for

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.devtools.otlp_sink", "--port", str(port), "--no-print"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/stats", timeout=1).status == 200
        except OSError:
            return False

    wait_for(up, timeout=30, message="the OTLP sink")
    return proc, url


def sink_spans(url: str) -> dict[str, int]:
    """Spans received, per service (one service per setup)."""
    return json.loads(urllib.request.urlopen(f"{url}/stats", timeout=10).read())["services"]


def log_line_cost(number: int = 200_000) -> tuple[float, float, float]:
    """ns per call of the trace-id log processor: tracing off; on, no span active; on, in a span."""
    from bootstrap import tracing

    tracing.reset_tracing()
    off = timeit.timeit(lambda: tracing.add_trace_ids(None, "info", {}), number=number) / number * 1e9
    provider = TracerProvider()
    tracing.configure_tracing(tracer_provider=provider,
                              environ={"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "httpx,urllib3"})
    try:
        idle = timeit.timeit(lambda: tracing.add_trace_ids(None, "info", {}), number=number) / number * 1e9
        with provider.get_tracer("bench").start_as_current_span("s"):
            inside = timeit.timeit(lambda: tracing.add_trace_ids(None, "info", {}), number=number) / number * 1e9
    finally:
        tracing.reset_tracing()
    return off, idle, inside


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    ns = f"bench{uuid.uuid4().hex[:8]}_"
    tmp = tempfile.TemporaryDirectory()
    db_url = f"sqlite:///{tmp.name}/bench.db"
    upgrade(db_url)
    sink, sink_url = start_sink()
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    exported: dict[str, int] = {}
    try:
        for kind in ("redis", "rabbitmq"):
            setups = {mode: Setup(kind, mode, ns, db_url, sink_url) for mode in MODES}
            try:
                for s in setups.values():
                    s.throughput(min(500, n))  # warm up: connections, scripts
                for _ in range(ROUNDS):
                    for mode, s in setups.items():
                        sent, rate = s.throughput(n)
                        r = results.setdefault((kind, mode), {"sent": [], "rate": []})
                        r["sent"].append(sent)
                        r["rate"].append(rate)
            finally:
                for s in setups.values():
                    s.close()  # the batch processor exports what it still holds
        exported = sink_spans(sink_url)
    finally:
        sink.terminate()
        sink.wait(10)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"atelier:{ns}*"))
        if keys:
            client.delete(*keys)
        tmp.cleanup()
    made = 3 * (ROUNDS * n + min(500, n))  # per message: the producer's span, send, process
    print(f"no-op actor, {n} messages per run (traced: each in a producer span of its own), best of {ROUNDS} "
          f"interleaved rounds, {THREADS} worker threads, in-process worker; atelier's full stack")
    print(f"{'broker':<9} {'tracing':<24} {'enqueue/s':>10} {'ratio':>6} {'processed/s':>12} {'ratio':>6} "
          f"{'paired':>7}")
    for kind in ("redis", "rabbitmq"):
        off = results[(kind, "off")]
        for mode in MODES:
            r = results[(kind, mode)]
            paired = sorted(x / b for x, b in zip(r["rate"], off["rate"], strict=True))[len(r["rate"]) // 2]
            print(f"{kind:<9} {NAMES[mode]:<24} {max(r['sent']):10.0f} {max(r['sent']) / max(off['sent']):6.2f} "
                  f"{max(r['rate']):12.0f} {max(r['rate']) / max(off['rate']):6.2f} {paired:7.2f}")
    for kind in ("redis", "rabbitmq"):
        print(f"{kind}: spans the sink received: every trace sampled {exported.get(f'bench-{kind}-batch', 0)} "
              f"of {made}; 10 % sampled {exported.get(f'bench-{kind}-batch10', 0)} (about {made // 10} expected)")
    off, idle, inside = log_line_cost()
    print(f"log processor per line: tracing off {off:.0f} ns; on, no span {idle:.0f} ns; on, in a span {inside:.0f} ns")


if __name__ == "__main__":
    main()
