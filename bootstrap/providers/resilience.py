"""The middleware's state (dedup keys, circuit breakers, fallback queues, dead letters), the sender
that puts messages back on the broker, and the services over them."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.metrics import MetricSpec
    from bootstrap.settings import Settings


class ResilienceProviders:
    settings: Settings
    engine: Any
    metrics_store: Any
    _shared_state: Any

    @cached_property
    def dedup_store(self):  # type: ignore[no-untyped-def]
        from adapters.state.memory import InMemoryDedupStore
        from adapters.state.redis import RedisDedupStore

        return self._shared_state(RedisDedupStore, InMemoryDedupStore, "dedup")

    @cached_property
    def breaker_store(self):  # type: ignore[no-untyped-def]
        from adapters.state.memory import InMemoryBreakerStore
        from adapters.state.redis import RedisBreakerStore

        return self._shared_state(RedisBreakerStore, InMemoryBreakerStore, "circuit")

    @cached_property
    def fallback_queue(self):  # type: ignore[no-untyped-def]
        from adapters.state.memory import InMemoryFallbackQueue
        from adapters.state.redis import RedisFallbackQueue

        return self._shared_state(RedisFallbackQueue, InMemoryFallbackQueue, "fallback")

    @cached_property
    def dead_letter_store(self):  # type: ignore[no-untyped-def]
        from adapters.sql.deadletters import SqlDeadLetterStore

        return SqlDeadLetterStore(self.engine)

    @cached_property
    def letter_fallback(self):  # type: ignore[no-untyped-def]
        from adapters.state.letters import InMemoryLetterFallback, RedisLetterFallback

        return self._shared_state(RedisLetterFallback, InMemoryLetterFallback, "deadletters:")

    @cached_property
    def message_sender(self):  # type: ignore[no-untyped-def]
        from adapters.sender import BrokerSender
        from bootstrap.broker import get_broker

        return BrokerSender(get_broker())

    @cached_property
    def dead_letters(self):  # type: ignore[no-untyped-def]
        from domain.clock import SystemClock
        from domain.services.deadletters import DeadLetterService

        return DeadLetterService(self.dead_letter_store, self.message_sender, SystemClock(),
                                 replay_dedup_window=self.settings.dlq_replay_dedup_window,
                                 fallback=self.letter_fallback)

    @cached_property
    def fallback_drainer(self):  # type: ignore[no-untyped-def]
        from domain.services.fallback import FallbackDrainer

        s = self.settings
        return FallbackDrainer(self.fallback_queue, self.breaker_store, self.message_sender,
                               policy=s.breaker_policy, batch_size=s.fallback_batch_size)

    def capability_metrics(self) -> list[MetricSpec]:
        """Dead letters, dedup skips, breaker states and fallback queue lengths for /metrics."""
        from adapters.metrics import MetricSpec, store_counter
        from middleware.circuit import CIRCUIT_PARKED, CIRCUIT_TRANSITIONS
        from middleware.deadletters import DEAD_LETTER_WRITE_FAILURES, DEAD_LETTERS, DEAD_LETTERS_FALLBACK
        from middleware.dedup import DEDUP_SKIPS

        store = self.metrics_store
        return [
            store_counter(store, DEAD_LETTERS, "Messages written to the dead-letter store.",
                          ("queue_name", "actor_name", "reason")),
            store_counter(store, DEAD_LETTER_WRITE_FAILURES,
                          "Dead-letter writes that failed; the message was put back to try again.",
                          ("queue_name", "actor_name")),
            MetricSpec("atelier_dead_letters", "gauge", "Dead letters stored and not replayed.",
                       lambda: self.dead_letter_store.count(replayed=False)),
            store_counter(store, DEAD_LETTERS_FALLBACK,
                          "Dead letters the store refused repeatedly, kept in the fallback store instead.",
                          ("queue_name", "actor_name")),
            MetricSpec("atelier_dead_letters_in_fallback", "gauge",
                       "Dead letters waiting in the fallback store (atelier dlq restore).",
                       lambda: self.letter_fallback.count()),
            store_counter(store, DEDUP_SKIPS,
                          "Deliveries not run because of their dedup key (done, busy, redelivery, dead_lettered).",
                          ("queue_name", "actor_name", "reason")),
            MetricSpec("atelier_circuit_state", "gauge", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                       lambda: {(name, ): state.gauge for name, state in self.breaker_store.states().items()},
                       ("circuit",)),
            store_counter(store, CIRCUIT_TRANSITIONS, "Circuit breaker state changes, by state entered.",
                          ("circuit", "state")),
            store_counter(store, CIRCUIT_PARKED, "Messages parked while their circuit was open.", ("circuit", "how")),
            MetricSpec("atelier_fallback_queue_length", "gauge", "Messages parked in each circuit's fallback queue.",
                       lambda: {(name, ): n for name, n in self.fallback_queue.lengths().items()}, ("circuit",)),
        ]
