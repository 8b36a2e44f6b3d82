"""The outbox relay: hands committed events to the actors subscribed to their type.

Each batch is one transaction: claim due events (locked, skipping rows another relay holds),
enqueue one message per (event, subscriber), mark the events published, commit; then announce
them on pub/sub. A crash between enqueue and commit leaves the events due again; the resend
carries the same dedup key per (event, subscriber), so the dedup middleware runs each once.

Failures:
- the broker cannot be reached (TransientError from the publisher): the transaction rolls back
  and the run stops; the events keep their attempts and wait, so an outage loses nothing.
- a delivery fails on its own (e.g. the route names an actor no worker declares): the event gets
  attempts + 1 and is due again after backoff_ms * 2**(attempts - 1); once attempts exceed
  max_retries it is marked dead and listed by the dead-letter commands.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from domain.clock import SystemClock
from domain.errors import NotFound, PermanentError, TransientError
from domain.models import Delivery, OutboxEvent
from domain.ports import Clock, EventPublisher, UnitOfWork

log = logging.getLogger(__name__)


def event_as_args(event: dict[str, Any]) -> tuple[Any, ...]:
    """Default subscriber arguments: the event itself (see OutboxEvent.message)."""
    return (event,)


@dataclass(frozen=True)
class Route:
    """Events whose type matches ``pattern`` (fnmatch wildcards: ``image.*``, ``*``) go to ``actor``.

    ``args`` turns the event message into the actor's arguments, for actors that take an id
    rather than the event (e.g. ``lambda e: (e["aggregate_id"],)``).
    """

    pattern: str
    actor: str
    args: Callable[[dict[str, Any]], tuple[Any, ...]] = event_as_args


class Router:
    """Resolves an event type to its routes, in table order, each actor once."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = tuple(routes)
        self._cache: dict[str, tuple[Route, ...]] = {}

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def routes_for(self, event_type: str) -> tuple[Route, ...]:
        found = self._cache.get(event_type)
        if found is None:
            seen: set[str] = set()
            matched = []
            for route in self._routes:
                if route.actor not in seen and fnmatch.fnmatchcase(event_type, route.pattern):
                    seen.add(route.actor)
                    matched.append(route)
            found = self._cache[event_type] = tuple(matched)
        return found

    def subscribers(self, event_type: str) -> tuple[str, ...]:
        return tuple(r.actor for r in self.routes_for(event_type))


@dataclass
class RelayStats:
    batches: int = 0
    claimed: int = 0
    published: int = 0
    deliveries: int = 0
    failed: int = 0
    dead: int = 0
    broker_down: bool = False
    more_due: bool = False  # the run's budget ran out while full batches were still coming
    errors: list[str] = field(default_factory=list)

    def add(self, other: RelayStats) -> None:
        self.batches += other.batches
        self.claimed += other.claimed
        self.published += other.published
        self.deliveries += other.deliveries
        self.failed += other.failed
        self.dead += other.dead
        self.broker_down = self.broker_down or other.broker_down
        self.errors.extend(other.errors)


class OutboxRelay:
    def __init__(
        self,
        uow: Callable[[], UnitOfWork],
        publisher: EventPublisher,
        routes: Router | Sequence[Route],
        *,
        batch_size: int = 100,
        max_retries: int = 3,
        backoff_ms: int = 1000,
        clock: Clock | None = None,
    ) -> None:
        self._uow = uow
        self._publisher = publisher
        self.router = routes if isinstance(routes, Router) else Router(routes)
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_ms = backoff_ms
        self._clock = clock or SystemClock()

    def backoff(self, attempts: int) -> timedelta:
        """Delay before the next try after the attempts-th failure: 1 s, 2 s, 4 s, ..."""
        return timedelta(milliseconds=self.backoff_ms * 2 ** max(attempts - 1, 0))

    def relay_batch(self) -> RelayStats:
        """Claim, enqueue, mark and commit one batch; then announce what was published."""
        stats = RelayStats()
        with self._uow() as uow:
            now = self._clock.now()
            events = uow.outbox.claim_due(now, self.batch_size)
            if not events:
                return stats
            stats.batches = 1
            stats.claimed = len(events)
            deliveries = [
                Delivery(event, route.actor, route.args(message))
                for event in events
                for message in (event.message(),)
                for route in self.router.routes_for(event.type)
            ]
            try:
                failures = self._publisher.enqueue(deliveries) if deliveries else {}
            except TransientError as exc:
                # Leave the batch as it was: an outage is not the events' fault.
                log.warning("outbox relay: broker unavailable, %d events wait: %s", len(events), exc)
                stats.broker_down = True
                stats.errors.append(str(exc))
                return stats
            published = [e for e in events if e.id not in failures]
            if published:
                uow.outbox.mark_published([e.id for e in published], now)
            for event in events:
                error = failures.get(event.id)
                if error is None:
                    continue
                attempts = event.attempts + 1
                dead = attempts > self.max_retries
                uow.outbox.mark_failed(event.id, attempts=attempts, error=error,
                                       next_attempt_at=now + self.backoff(attempts), dead=dead)
                stats.failed += 1
                stats.dead += dead
                stats.errors.append(f"{event.id}: {error}")
                log.warning("outbox event %s (%s) %s after attempt %d: %s", event.id, event.type,
                            "is dead" if dead else "failed", attempts, error)
            uow.commit()
        stats.published = len(published)
        stats.deliveries = len(deliveries) - sum(
            1 for d in deliveries if d.event.id in failures)
        if published:
            try:
                self._publisher.notify(published)
            except Exception as exc:  # pub/sub is best effort; the events are already delivered
                log.warning("outbox relay: notification failed: %s", exc)
        return stats

    def relay(self, budget_seconds: float = 5.0) -> RelayStats:
        """Relay batches until nothing more is due, the broker is down, or the budget is spent."""
        total = RelayStats()
        deadline = time.monotonic() + budget_seconds
        while True:
            stats = self.relay_batch()
            total.add(stats)
            if stats.broker_down or stats.claimed < self.batch_size:
                break
            if time.monotonic() >= deadline:
                total.more_due = True
                break
        if total.claimed:
            log.info("outbox relay: %d events published, %d deliveries, %d failed, %d dead in %d batches",
                     total.published, total.deliveries, total.failed, total.dead, total.batches)
        return total

    # Operations on what the relay left behind.

    def list_events(self, *, dead: bool | None = None, published: bool | None = None,
                    limit: int = 100) -> list[OutboxEvent]:
        with self._uow() as uow:
            return uow.outbox.list(dead=dead, published=published, limit=limit)

    def list_dead(self, limit: int = 100) -> list[OutboxEvent]:
        """Dead events, newest first: what `atelier dlq` shows for the outbox."""
        return self.list_events(dead=True, limit=limit)

    def retry(self, event_id: str) -> OutboxEvent:
        """Make a dead or failing event due now, attempts reset; the next relay run sends it."""
        with self._uow() as uow:
            event = uow.outbox.get(event_id)
            if event is None:
                raise NotFound(f"outbox event {event_id} does not exist")
            if event.published_at is not None:
                raise PermanentError(f"outbox event {event_id} was already published at "
                                     f"{event.published_at.isoformat()}")
            uow.outbox.revive(event_id, self._clock.now())
            uow.commit()
            return uow.outbox.get(event_id) or event
