"""Draining the circuits' fallback queues back to the broker once a circuit lets traffic through."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from domain.ports import BreakerStore, FallbackQueue, MessageSender
from domain.resilience import BreakerPolicy, CircuitState

log = logging.getLogger(__name__)


class FallbackDrainer:
    """For each circuit with parked messages: closed, up to ``batch_size`` go back to their queues
    per drain; half-open (or open past its reset timeout), only ``policy.half_open_trials``, the
    probes whose success closes the circuit; open, none.

    Never loses a message: items are claimed into a processing list (atomically), enqueued, then
    acknowledged. A failed enqueue puts the unsent ones back at the head of the queue; a drain
    that dies midway leaves them in the processing list, and the next drain (one per circuit at a
    time, under a lock that expires) puts them back first. An item enqueued just before such a
    crash is enqueued again: delivery is at least once, and dedup keys absorb the repeat.
    """

    def __init__(self, queue: FallbackQueue, breakers: BreakerStore, sender: MessageSender, *,
                 policy: BreakerPolicy, batch_size: int = 50, lock_ttl_ms: int = 120_000,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.queue = queue
        self.breakers = breakers
        self.sender = sender
        self.policy = policy
        self.batch_size = batch_size
        self.lock_ttl_ms = lock_ttl_ms
        self.now_ms = now_ms

    def budget(self, circuit: str) -> int:
        state, ready = self.breakers.peek(circuit, self.now_ms(), self.policy)
        if not ready:
            return 0
        if state is CircuitState.CLOSED:
            return self.batch_size
        return min(self.batch_size, self.policy.half_open_trials)

    def drain(self) -> dict[str, int]:
        """One pass over every circuit; returns {circuit: messages sent back}."""
        moved: dict[str, int] = {}
        for circuit in self.queue.circuits():
            token = uuid.uuid4().hex
            if not self.queue.lock(circuit, token, self.lock_ttl_ms):
                continue  # another drain is on it
            try:
                recovered = self.queue.recover(circuit)
                if recovered:
                    log.warning("fallback %s: %d message(s) left by an interrupted drain put back", circuit, recovered)
                sent = self._drain_one(circuit)
            finally:
                self.queue.unlock(circuit, token)
            if sent:
                moved[circuit] = sent
        return moved

    def _drain_one(self, circuit: str) -> int:
        budget = self.budget(circuit)
        if budget <= 0:
            return 0
        sent = 0
        for item in self.queue.claim(circuit, budget):
            try:
                self.sender.requeue(item)
            except Exception:
                back = self.queue.recover(circuit)
                log.warning("fallback %s: enqueue failed; %d message(s) stay parked", circuit, back, exc_info=True)
                break
            self.queue.ack(circuit, item)
            sent += 1
        if sent:
            log.info("fallback %s: %d message(s) sent back to their queues", circuit, sent)
        return sent
