"""The Metrics middleware on the StubBroker, and the collector's Prometheus exposition."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, SkipMessage
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import middleware
from adapters.metrics import AtelierCollector, InMemoryMetricsStore, MetricSpec
from domain.errors import InvalidPayload, TransientError
from middleware.metrics import Metrics


def flush(broker) -> None:
    next(m for m in broker.middleware if isinstance(m, Metrics)).flush()


class SkipOdd(Middleware):
    """Stands in for a dedup window: skips messages whose argument is odd."""

    def before_process_message(self, broker, message):
        if message.args and message.args[0] % 2:
            raise SkipMessage()


@pytest.fixture
def stub():
    store = InMemoryMetricsStore()
    broker = StubBroker(middleware=[*middleware.build_stack(max_retries=1, min_backoff_ms=1, max_backoff_ms=5,
                                                            metrics_store=lambda: store), SkipOdd()])
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield broker, store
    worker.stop()
    broker.close()


def exposition(store, specs=()) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AtelierCollector(store, lambda: list(specs)))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counts_processed_failed_retried_dead_lettered_and_skipped(stub):
    broker, store = stub

    @dramatiq.actor(broker=broker, queue_name="q")
    def work(n, outcome):
        if outcome == "permanent":
            raise InvalidPayload("bad")
        if outcome == "transient":
            raise TransientError("later")

    for n, outcome in [(0, "ok"), (2, "ok"), (4, "permanent"), (6, "transient"), (1, "ok")]:
        work.send(n, outcome)
    broker.join("q", fail_fast=False)
    flush(broker)

    labels = ("q", "work")
    assert store.read("dramatiq_messages_total") == {labels: 6}  # 5 sent + 1 retry; the skip counts
    assert store.read("dramatiq_message_errors_total") == {labels: 3}  # permanent once, transient twice
    assert store.read("dramatiq_message_retries_total") == {labels: 1}
    assert store.read("dramatiq_message_rejects_total") == {labels: 2}
    assert store.read("atelier_messages_skipped_total") == {labels: 1}

    figures = exposition(store)
    key = (("actor_name", "work"), ("queue_name", "q"))
    assert figures[("dramatiq_messages_total", key)] == 6
    assert figures[("dramatiq_message_duration_milliseconds_count", key)] == 6
    assert figures[("dramatiq_message_duration_milliseconds_bucket", (key[0], ("le", "+Inf"), key[1]))] == 6
    # Buckets are cumulative (how long a message took is the machine's, not asserted here).
    assert figures[("dramatiq_message_duration_milliseconds_bucket", (key[0], ("le", "5.0"), key[1]))] <= 6


def test_histogram_buckets_are_cumulative():
    store = InMemoryMetricsStore()
    from middleware.metrics import _Tally

    tally = _Tally()  # what the middleware adds up per (queue, actor) between writes
    for millis in (3, 7, 7, 800, 10**7):
        tally.observe(millis)
    store.add(tally.samples(("q", "a")))
    figures = exposition(store)
    bucket = {le: figures[("dramatiq_message_duration_milliseconds_bucket", (("actor_name", "a"), ("le", le),
                                                                            ("queue_name", "q")))]
              for le in ("5.0", "10.0", "750.0", "1000.0", "900000.0", "+Inf")}
    assert bucket == {"5.0": 1, "10.0": 3, "750.0": 3, "1000.0": 4, "900000.0": 4, "+Inf": 5}
    assert figures[("dramatiq_message_duration_milliseconds_sum", (("actor_name", "a"), ("queue_name", "q")))] \
        == 3 + 7 + 7 + 800 + 10**7


def test_a_failing_source_is_reported_and_the_rest_still_exposed():
    store = InMemoryMetricsStore()
    store.add([("dramatiq_messages_total", ("q", "a"), 2)])

    def broken():
        raise ConnectionError("down")

    figures = exposition(store, [
        MetricSpec("atelier_circuit_state", "gauge", "0 closed, 1 open, 2 half-open", lambda: {("whatsapp",): 1},
                   ("circuit",)),
        MetricSpec("atelier_fallback_queue_length", "gauge", "Messages waiting", broken),
    ])
    assert figures[("atelier_circuit_state", (("circuit", "whatsapp"),))] == 1
    assert figures[("dramatiq_messages_total", (("actor_name", "a"), ("queue_name", "q")))] == 2
    assert figures[("atelier_scrape_errors", (("metric", "atelier_fallback_queue_length"),))] == 1
    assert not [k for k in figures if k[0] == "atelier_fallback_queue_length"]


class FlakyStore(InMemoryMetricsStore):
    def __init__(self):
        super().__init__()
        self.down = True

    def add(self, samples):
        if self.down:
            raise ConnectionError("redis down")
        super().add(samples)


def test_a_store_that_fails_never_fails_the_message_and_loses_nothing():
    store = FlakyStore()
    broker = StubBroker(middleware=middleware.build_stack(max_retries=0, metrics_store=lambda: store))
    broker.emit_after("process_boot")
    done = []

    @dramatiq.actor(broker=broker, queue_name="q")
    def work():
        done.append(1)

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        for _ in range(3):
            work.send()
        broker.join("q", fail_fast=True)
        flush(broker)  # fails: kept for the next write
        assert store.read("dramatiq_messages_total") == {}
        store.down = False
    finally:
        worker.stop()  # flushes on shutdown
    assert done == [1, 1, 1] and not broker.dead_letters
    assert store.read("dramatiq_messages_total") == {("q", "work"): 3}


def test_figures_are_written_in_the_background():
    from tests.services import wait_for

    store = InMemoryMetricsStore()
    metrics = Metrics(lambda: store, flush_interval=0.05)
    metrics._add([("dramatiq_messages_total", ("q", "a"), 1)])
    assert wait_for(lambda: store.read("dramatiq_messages_total") == {("q", "a"): 1}, timeout=10)
