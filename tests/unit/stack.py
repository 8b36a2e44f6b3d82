"""The whole middleware stack on the StubBroker with in-memory state, wired the way
bootstrap/broker.py wires it; the ``stack`` fixture (tests/unit/conftest.py) gives one per test."""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq
from dramatiq.brokers.stub import StubBroker

import middleware
from adapters.metrics import InMemoryMetricsStore
from adapters.state.memory import InMemoryBreakerStore, InMemoryDedupStore, InMemoryFallbackQueue
from brokers.dispatch import AtelierStubBroker
from domain.resilience import BreakerPolicy
from middleware.metrics import Metrics
from tests.unit.fakes import FakeDeadLetterStore


@dataclass
class Stack:
    broker: StubBroker
    worker: dramatiq.Worker
    metrics: InMemoryMetricsStore
    dedup: InMemoryDedupStore
    breakers: InMemoryBreakerStore
    fallback: InMemoryFallbackQueue
    letters: FakeDeadLetterStore

    def join(self, queue: str = "q") -> None:
        self.broker.join(queue, fail_fast=False)
        self.worker.join()

    def count(self, name: str) -> dict:
        next(m for m in self.broker.middleware if isinstance(m, Metrics)).flush()
        return self.metrics.read(name)


POLICY = BreakerPolicy(failure_threshold=3, window_ms=60_000, reset_timeout_ms=300, half_open_trials=1)


def make_stack(*, tracer_provider: object = None) -> Stack:
    """``tracer_provider``: with one, the stack has the Tracing middleware, its spans going there."""
    s = Stack(None, None, InMemoryMetricsStore(), InMemoryDedupStore(), InMemoryBreakerStore(),  # type: ignore[arg-type]
              InMemoryFallbackQueue(), FakeDeadLetterStore())
    s.broker = AtelierStubBroker(middleware=middleware.build_stack(
        max_retries=2, min_backoff_ms=1, max_backoff_ms=20, metrics_store=lambda: s.metrics,
        dedup_store=lambda: s.dedup, breaker_store=lambda: s.breakers, fallback_queue=lambda: s.fallback,
        breaker_policy=POLICY, dead_letter_store=lambda: s.letters,
        tracing=tracer_provider is not None, tracer_provider=tracer_provider, messaging_system="stub"))
    s.broker.emit_after("process_boot")
    s.worker = dramatiq.Worker(s.broker, worker_threads=2, worker_timeout=20)
    s.worker.start()
    return s
