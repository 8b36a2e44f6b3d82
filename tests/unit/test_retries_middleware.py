"""ClassifiedRetries on the StubBroker: permanent errors are not retried, others are."""

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import middleware
from domain.errors import InvalidPayload, TransientError


@pytest.fixture
def stub():
    broker = StubBroker(middleware=middleware.build_stack(max_retries=3, min_backoff_ms=1, max_backoff_ms=5))
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    yield broker
    worker.stop()
    broker.close()


def test_permanent_error_is_not_retried(stub):
    calls = []

    @dramatiq.actor(broker=stub, queue_name="q")
    def bad(x):
        calls.append(x)
        raise InvalidPayload("no")

    bad.send(1)
    stub.join("q", fail_fast=False)
    assert calls == [1]
    assert len(stub.dead_letters) == 1


def test_transient_error_is_retried_until_max_retries(stub):
    calls = []

    @dramatiq.actor(broker=stub, queue_name="q")
    def flaky(x):
        calls.append(x)
        raise TransientError("down")

    flaky.send(1)
    stub.join("q", fail_fast=False)
    assert len(calls) == 4  # first try + max_retries
    assert len(stub.dead_letters) == 1


def test_transient_then_success(stub):
    calls = []

    @dramatiq.actor(broker=stub, queue_name="q")
    def once_flaky(x):
        calls.append(x)
        if len(calls) < 2:
            raise ConnectionError("blip")

    once_flaky.send(1)
    stub.join("q", fail_fast=False)
    assert len(calls) == 2
    assert stub.dead_letters == []


def test_retry_after_sets_the_delay_of_the_retry():
    """A 429's Retry-After (TransientError.retry_after) replaces the backoff for that retry."""
    delays = []

    class Recorder(dramatiq.Middleware):
        def before_enqueue(self, broker, message, delay):
            delays.append(delay)

    broker = StubBroker(middleware=[*middleware.build_stack(max_retries=3, min_backoff_ms=1, max_backoff_ms=5),
                                    Recorder()])
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    calls = []

    @dramatiq.actor(broker=broker, queue_name="q")
    def limited():
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("429", retry_after=0.25)
        if len(calls) == 2:
            raise TransientError("503")

    try:
        limited.send()
        broker.join("q", fail_fast=False)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    assert len(calls) == 3 and broker.dead_letters == []
    retries = [d for d in delays if d]  # (the worker moves due messages back undelayed)
    assert len(retries) == 2
    assert retries[0] == 250  # after the 429: Retry-After, not the 1..5 ms backoff
    assert 0 < retries[1] <= 5
