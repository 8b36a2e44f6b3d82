"""Middleware state in one process's memory: the StubBroker and the embedded default. Same
semantics as redis.py, one lock per store."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from domain.resilience import BreakerDecision, BreakerPolicy, CircuitState, DedupOutcome, lease_outcome


def _now_ms() -> int:
    return int(time.time() * 1000)


class InMemoryDedupStore:
    """The DedupStore in one process (the StubBroker, the embedded default): the same answers as
    the Redis one (tests/integration/test_resilience_state.py runs both)."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, int]] = {}  # key -> (value, expires at ms)
        self._lock = threading.Lock()

    def _get(self, key: str) -> str | None:
        entry = self._keys.get(key)
        if entry is None or entry[1] <= _now_ms():
            self._keys.pop(key, None)
            return None
        return entry[0]

    def acquire(self, key: str, token: str, lease_ms: int) -> DedupOutcome:
        with self._lock:
            outcome = lease_outcome(self._get(key), token)
            if outcome is None or outcome is DedupOutcome.ACQUIRED:  # free, or its own lease: extended
                self._keys[key] = (f"r:{token}", _now_ms() + lease_ms)
                return DedupOutcome.ACQUIRED
            return outcome

    def take_free(self, items: Sequence[tuple[str, str, int]]) -> list[DedupOutcome]:
        outcomes = []
        with self._lock:
            for key, token, lease_ms in items:
                value = self._get(key)
                if value is None:
                    self._keys[key] = (f"r:{token}", _now_ms() + lease_ms)
                    outcomes.append(DedupOutcome.ACQUIRED)
                else:
                    outcomes.append(DedupOutcome.DONE if value == "done" else DedupOutcome.BUSY)
        return outcomes

    def renew(self, items: Sequence[tuple[str, str, int]]) -> list[bool]:
        renewed = []
        with self._lock:
            for key, token, lease_ms in items:
                value = self._get(key)
                ours = value is None or value == f"r:{token}"
                if ours:
                    self._keys[key] = (f"r:{token}", _now_ms() + lease_ms)
                renewed.append(ours)
        return renewed

    def remaining_ms(self, key: str) -> int:
        with self._lock:
            if self._get(key) is None:
                return 0
            return max(self._keys[key][1] - _now_ms(), 0)

    def complete(self, key: str, token: str, window_ms: int) -> None:
        with self._lock:
            self._keys[key] = ("done", _now_ms() + max(window_ms, 1))

    def complete_many(self, items: Sequence[tuple[str, str, int]]) -> None:
        for key, token, window_ms in items:
            self.complete(key, token, window_ms)

    def release(self, key: str, token: str) -> None:
        with self._lock:
            if self._get(key) == f"r:{token}":
                del self._keys[key]

    def claim(self, key: str, holder: str, ttl_ms: int) -> str:
        with self._lock:
            value = self._get(key)
            if value is None:
                self._keys[key] = (holder, _now_ms() + max(ttl_ms, 1))
                return holder
            return value


class _Circuit:
    def __init__(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures: deque[int] = deque()
        self.opened_at = 0
        self.trials = 0
        self.trial_since = 0
        self.reset_ms: int | None = None


class InMemoryBreakerStore:
    def __init__(self) -> None:
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def _get(self, circuit: str) -> _Circuit:
        return self._circuits.setdefault(circuit, _Circuit())

    def allow(self, circuit: str, now_ms: int, policy: BreakerPolicy) -> BreakerDecision:
        with self._lock:
            c = self._get(circuit)
            if c.state is CircuitState.CLOSED:
                return BreakerDecision(True, c.state)
            if c.state is CircuitState.OPEN:
                if now_ms < c.opened_at + policy.reset_timeout_ms:
                    return BreakerDecision(False, c.state, c.opened_at + policy.reset_timeout_ms)
                c.state, c.trials, c.trial_since = CircuitState.HALF_OPEN, 1, now_ms
                return BreakerDecision(True, c.state, trial=True,
                                       transition=(CircuitState.OPEN, CircuitState.HALF_OPEN))
            if now_ms >= c.trial_since + policy.reset_timeout_ms:
                c.trials, c.trial_since = 0, now_ms  # trials that never reported expire
            if c.trials < policy.half_open_trials:
                c.trials += 1
                return BreakerDecision(True, c.state, trial=True)
            return BreakerDecision(False, c.state, c.trial_since + policy.reset_timeout_ms)

    def record_failure(self, circuit: str, now_ms: int, policy: BreakerPolicy,
                       ) -> tuple[CircuitState, CircuitState] | None:
        with self._lock:
            c = self._get(circuit)
            if c.state is CircuitState.OPEN:
                return None
            if c.state is CircuitState.HALF_OPEN:
                c.state, c.opened_at, c.trials, c.reset_ms = CircuitState.OPEN, now_ms, 0, policy.reset_timeout_ms
                c.failures.clear()
                return CircuitState.HALF_OPEN, CircuitState.OPEN
            c.failures.append(now_ms)
            while c.failures and c.failures[0] <= now_ms - policy.window_ms:
                c.failures.popleft()
            if len(c.failures) >= policy.failure_threshold:
                c.state, c.opened_at, c.trials, c.reset_ms = CircuitState.OPEN, now_ms, 0, policy.reset_timeout_ms
                c.failures.clear()
                return CircuitState.CLOSED, CircuitState.OPEN
            return None

    def record_success(self, circuit: str, trial: bool) -> tuple[CircuitState, CircuitState] | None:
        with self._lock:
            c = self._get(circuit)
            if trial and c.state is CircuitState.HALF_OPEN:
                c.state, c.trials = CircuitState.CLOSED, 0
                c.failures.clear()
                return CircuitState.HALF_OPEN, CircuitState.CLOSED
            return None

    def release_trial(self, circuit: str) -> None:
        with self._lock:
            c = self._get(circuit)
            if c.state is CircuitState.HALF_OPEN and c.trials > 0:
                c.trials -= 1

    def peek(self, circuit: str, now_ms: int, policy: BreakerPolicy) -> tuple[CircuitState, bool]:
        with self._lock:
            c = self._get(circuit)
            if c.state is CircuitState.OPEN:
                reset = c.reset_ms if c.reset_ms is not None else policy.reset_timeout_ms
                return c.state, now_ms >= c.opened_at + reset
            return c.state, True

    def states(self) -> dict[str, CircuitState]:
        with self._lock:
            return {name: c.state for name, c in sorted(self._circuits.items())}


class InMemoryFallbackQueue:
    def __init__(self) -> None:
        self._queues: dict[str, deque[bytes]] = {}
        self._processing: dict[str, list[bytes]] = {}
        self._locks: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def push(self, circuit: str, item: bytes) -> None:
        with self._lock:
            self._queues.setdefault(circuit, deque()).append(item)

    def circuits(self) -> list[str]:
        with self._lock:
            return sorted(self._queues)

    def lengths(self) -> dict[str, int]:
        with self._lock:
            return {n: len(q) + len(self._processing.get(n, [])) for n, q in sorted(self._queues.items())}

    def lock(self, circuit: str, token: str, ttl_ms: int) -> bool:
        with self._lock:
            held = self._locks.get(circuit)
            if held is not None and held[1] > _now_ms():
                return False
            self._locks[circuit] = (token, _now_ms() + ttl_ms)
            return True

    def unlock(self, circuit: str, token: str) -> None:
        with self._lock:
            if self._locks.get(circuit, ("", 0))[0] == token:
                del self._locks[circuit]

    def claim(self, circuit: str, limit: int) -> list[bytes]:
        with self._lock:
            queue = self._queues.get(circuit, deque())
            items = [queue.popleft() for _ in range(min(limit, len(queue)))]
            self._processing.setdefault(circuit, []).extend(items)
            return items

    def ack(self, circuit: str, item: bytes) -> None:
        with self._lock:
            processing = self._processing.get(circuit, [])
            if item in processing:
                processing.remove(item)

    def recover(self, circuit: str) -> int:
        with self._lock:
            items = self._processing.pop(circuit, [])
            self._queues.setdefault(circuit, deque()).extendleft(reversed(items))
            return len(items)
