"""Resilience state: what the middleware keep where every worker sees it (dedup keys, circuit
breakers, fallback queues, dead letters, shared metrics), and the sender that puts messages back."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from domain.resilience import BreakerDecision, BreakerPolicy, CircuitState, DeadLetter, DedupOutcome


class MetricsStore(Protocol):
    """Counters that every process adds to and the ops server reads at scrape time, so figures
    from several workers add up. A sample is (metric name, label values, amount)."""

    def add(self, samples: Iterable[tuple[str, tuple[str, ...], float]]) -> None: ...

    def read(self, name: str) -> dict[tuple[str, ...], float]: ...


class DedupStore(Protocol):
    """Dedup keys shared by every worker. A key is held ("running") while it runs by one delivery
    of one message, its holder (``domain.resilience.lease_holder``: ``<message id>|<delivery>``),
    with a lease the holder renews; "done" for the window once it completed. All operations are
    atomic."""

    def acquire(self, key: str, token: str, lease_ms: int) -> DedupOutcome:
        """For holder ``token``: ACQUIRED if the key was free, or already held by ``token`` itself
        (its lease is extended); DONE if it completed within its window; REDELIVERY if another
        delivery of the same message holds it; BUSY if another message does."""
        ...

    def take_free(self, items: Sequence[tuple[str, str, int]]) -> list[DedupOutcome]:
        """For each (key, holder, lease_ms), in one round trip where the store can: take the key if
        it is free (ACQUIRED); else DONE, or BUSY whoever holds it (a redelivery is decided when
        it is about to run, against what runs then)."""
        ...

    def renew(self, items: Sequence[tuple[str, str, int]]) -> list[bool]:
        """For each (key, holder, lease_ms), in one round trip where the store can: extend the
        lease if ``holder`` still holds it, or take the key again if it is free (the lease lapsed,
        or the store lost it); False if the key is done or held by another holder."""
        ...

    def remaining_ms(self, key: str) -> int:
        """How long the key's current lease or window lasts; 0 if the key is free."""
        ...

    def complete(self, key: str, token: str, window_ms: int) -> None: ...

    def complete_many(self, items: Sequence[tuple[str, str, int]]) -> None:
        """complete() for each (key, holder, window_ms), in one round trip where the store can."""
        ...

    def release(self, key: str, token: str) -> None:
        """Free the key if holder ``token`` still holds it (a failed attempt: its retry may run)."""
        ...

    def claim(self, key: str, holder: str, ttl_ms: int) -> str:
        """Set ``key`` to ``holder`` for ``ttl_ms`` unless it is set; return what it holds now
        (``holder``, or whoever claimed it first). Decides once between two parties."""
        ...


class BreakerStore(Protocol):
    """Circuit-breaker state per circuit, shared by every worker; transitions are atomic."""

    def allow(self, circuit: str, now_ms: int, policy: BreakerPolicy) -> BreakerDecision: ...

    def record_failure(self, circuit: str, now_ms: int, policy: BreakerPolicy,
                       ) -> tuple[CircuitState, CircuitState] | None:
        """Count a dependency failure; returns (from, to) when it opened the circuit."""
        ...

    def record_success(self, circuit: str, trial: bool) -> tuple[CircuitState, CircuitState] | None:
        """A successful half-open trial closes the circuit; returns (from, to) then."""
        ...

    def release_trial(self, circuit: str) -> None:
        """A trial ended without telling anything about the dependency (bad input)."""
        ...

    def peek(self, circuit: str, now_ms: int, policy: BreakerPolicy) -> tuple[CircuitState, bool]:
        """(state, whether traffic may go through now), without changing anything. An open circuit
        is judged by the reset timeout it was opened with (an actor's own), else ``policy``'s."""
        ...

    def states(self) -> dict[str, CircuitState]:
        """Every circuit that has ever counted a failure."""
        ...


class FallbackQueue(Protocol):
    """Messages parked per circuit (opaque bytes) until the circuit lets traffic through. A claim
    moves items to a processing list; ack removes them; recover moves unacked ones back."""

    def push(self, circuit: str, item: bytes) -> None: ...

    def circuits(self) -> list[str]: ...

    def lengths(self) -> dict[str, int]: ...

    def lock(self, circuit: str, token: str, ttl_ms: int) -> bool: ...

    def unlock(self, circuit: str, token: str) -> None: ...

    def claim(self, circuit: str, limit: int) -> list[bytes]: ...

    def ack(self, circuit: str, item: bytes) -> None: ...

    def recover(self, circuit: str) -> int:
        """Move claimed but unacknowledged items back to the head of the queue; returns how many."""
        ...


class DeadLetterStore(Protocol):
    """Durable, queryable store of messages that failed for good."""

    def add(self, letter: DeadLetter) -> bool:
        """Store it; False (and nothing changes) if this message and attempt are already stored."""
        ...

    def get(self, letter_id: str) -> DeadLetter | None: ...

    def list(self, *, actor: str | None = None, older_than: datetime | None = None,
             newer_than: datetime | None = None, replayed: bool | None = None,
             limit: int = 100) -> list[DeadLetter]: ...

    def mark_replayed(self, letter_id: str, at: datetime, message_id: str) -> None: ...

    def delete(self, letter_ids: Sequence[str]) -> int: ...

    def count(self, *, replayed: bool | None = None) -> int: ...


class MessageSender(Protocol):
    """Puts messages back on the broker: parked ones (opaque bytes) and replayed dead letters."""

    def requeue(self, item: bytes) -> None: ...

    def send(self, actor: str, queue: str, args: Sequence[Any], kwargs: dict[str, Any],
             options: dict[str, Any]) -> str:
        """Enqueue a new message; returns its message id."""
        ...

    def declares(self, actor: str) -> bool:
        """Whether this process knows ``actor`` (the code a replay would run is deployed here)."""
        ...


class LetterFallback(Protocol):
    """Where a dead letter goes when the dead-letter store refused it several times: kept where an
    operator sees it (``atelier dlq list`` counts them, ``atelier dlq restore`` moves them back)."""

    def add(self, letter: DeadLetter) -> None: ...

    def list(self, limit: int = 100) -> list[DeadLetter]: ...

    def remove(self, letter_ids: Sequence[str]) -> int: ...

    def count(self) -> int: ...
