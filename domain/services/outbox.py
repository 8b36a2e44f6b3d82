"""The outbox relay: hands committed events to the actors subscribed to their type.

Each batch is one transaction: claim due events (locked, skipping rows another relay holds),
enqueue one message per (event, subscriber), mark the events published, commit; then announce
them on pub/sub. A crash between enqueue and commit leaves the events due again; the resend
carries the same dedup key per (event, subscriber), so the dedup middleware runs each once.

Failures:
- the broker cannot be reached (TransientError from the publisher): the transaction rolls back
  and the run stops; the events keep their attempts and wait, so an outage loses nothing.
- a delivery fails on its own (the route names an actor no worker declares, its ``args`` raise,
  the encoder or the broker refuses that one message): the event gets attempts + 1 and is due
  again after backoff_ms * 2**(attempts - 1); once attempts exceed max_retries it is marked dead
  and listed by the dead-letter commands. The other events of the batch go out: one poisoned
  event never holds the batch back, and its backoff moves it behind them.
- an event whose type the routing table does not know (no route, not declared announce-only):
  this relay's code is older than the code that recorded it (a rolling deploy). It is neither
  published nor charged an attempt: it stays due, checked again every ``unrouted_recheck_s``, so
  a relay that knows the type sends it; ``unrouted_grace_s`` after it was recorded it is marked
  dead with the reason (a type no relay knows: a typo, or a route removed), where `atelier dlq`
  shows it and `atelier outbox retry` revives it. Why not published: a published event is never
  looked at again, so its subscribers would never get it.
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
    """Resolves an event type to its routes, in table order, each actor once.

    ``announced``: patterns of event types that have no subscriber on purpose: they are published
    (announced on pub/sub) with no delivery. A type matching neither is unknown to this table.
    """

    def __init__(self, routes: Sequence[Route], announced: Sequence[str] = ()) -> None:
        self._routes = tuple(routes)
        self._announced = tuple(announced)
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

    def knows(self, event_type: str) -> bool:
        """True if the table routes this type or declares it announce-only."""
        return bool(self.routes_for(event_type)) or any(
            fnmatch.fnmatchcase(event_type, pattern) for pattern in self._announced)


@dataclass
class RelayStats:
    batches: int = 0
    claimed: int = 0
    published: int = 0
    deliveries: int = 0
    failed: int = 0
    dead: int = 0
    unrouted: int = 0  # left due: their type is unknown to this relay's routing table
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
        self.unrouted += other.unrouted
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
        unrouted_grace_s: float = 86_400,
        unrouted_recheck_s: float = 30,
        clock: Clock | None = None,
    ) -> None:
        self._uow = uow
        self._publisher = publisher
        self.router = routes if isinstance(routes, Router) else Router(routes)
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_ms = backoff_ms
        self.unrouted_grace = timedelta(seconds=unrouted_grace_s)
        self.unrouted_recheck = timedelta(seconds=unrouted_recheck_s)
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
            deliveries: list[Delivery] = []
            unrouted: list[OutboxEvent] = []
            refused: dict[str, str] = {}  # event id -> why one of its deliveries could not be built
            for event in events:
                routes = self.router.routes_for(event.type)
                if not routes and not self.router.knows(event.type):
                    unrouted.append(event)
                    continue
                message = event.message()
                for route in routes:
                    try:
                        deliveries.append(Delivery(event, route.actor, route.args(message)))
                    except Exception as exc:  # this event's data, not the batch's fault
                        refused.setdefault(event.id, f"route {route.pattern} -> {route.actor}: its args "
                                                     f"failed: {type(exc).__name__}: {exc}")
            try:
                failures = self._publisher.enqueue(deliveries) if deliveries else {}
            except TransientError as exc:
                # Leave the batch as it was: an outage is not the events' fault.
                log.warning("outbox relay: broker unavailable, %d events wait: %s", len(events), exc)
                stats.broker_down = True
                stats.errors.append(str(exc))
                return stats
            failures = {**failures, **refused}
            waiting = {e.id for e in unrouted}
            published = [e for e in events if e.id not in failures and e.id not in waiting]
            if published:
                uow.outbox.mark_published([e.id for e in published], now)
            for event in unrouted:
                stats.unrouted += 1
                stats.dead += self._unrouted(uow, event, now)
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
        stats.deliveries = len(deliveries) - sum(1 for d in deliveries if d.event.id in failures)
        if published:
            try:
                self._publisher.notify(published)
            except Exception as exc:  # pub/sub is best effort; the events are already delivered
                log.warning("outbox relay: notification failed: %s", exc)
        return stats

    def _unrouted(self, uow: UnitOfWork, event: OutboxEvent, now: Any) -> bool:
        """Leave an event of a type this relay does not know due for a relay that does; dead
        once unrouted_grace has passed since it was recorded. Returns True if it died."""
        waited = now - event.created_at
        dead = waited >= self.unrouted_grace
        error = (f"no route for event type {event.type!r} in this relay's routing table (an older version?); "
                 + (f"dead after waiting {int(waited.total_seconds())} s for a relay that knows it" if dead
                    else "left due for a relay that knows it"))
        # No attempt is spent: the event is not at fault, this relay's table is.
        uow.outbox.mark_failed(event.id, attempts=event.attempts + dead, error=error,
                               next_attempt_at=now + self.unrouted_recheck, dead=dead)
        log.log(logging.ERROR if dead else logging.WARNING, "outbox event %s: %s", event.id, error)
        return dead

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
            log.info("outbox relay: %d events published, %d deliveries, %d failed, %d unrouted, %d dead in "
                     "%d batches", total.published, total.deliveries, total.failed, total.unrouted, total.dead,
                     total.batches)
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
