"""The transactional outbox: its repository and the publisher the relay hands events to."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from domain.models import Delivery, OutboxEvent


class OutboxRepository(Protocol):
    """The outbox inside the current unit of work's transaction.

    claim_due locks the rows it returns until the transaction ends, and skips rows another
    transaction holds, so relays running in parallel never claim the same event.
    """

    def claim_due(self, now: datetime, limit: int) -> list[OutboxEvent]: ...

    def mark_published(self, event_ids: Sequence[str], now: datetime) -> None: ...

    def mark_failed(self, event_id: str, *, attempts: int, error: str, next_attempt_at: datetime,
                    dead: bool) -> None: ...

    def get(self, event_id: str) -> OutboxEvent | None: ...

    def list(self, *, dead: bool | None = None, published: bool | None = None,
             limit: int = 100) -> list[OutboxEvent]: ...

    def revive(self, event_id: str, now: datetime) -> bool:
        """Make a dead (or failing) event due again with its attempts reset; False if unknown."""
        ...


class EventPublisher(Protocol):
    """Hands outbox events to the broker and announces them (the outbox relay's way out)."""

    def enqueue(self, deliveries: Sequence[Delivery]) -> dict[str, str]:
        """Enqueue every delivery. Returns {event id: error} for deliveries that failed on their
        own (the others went out); raises TransientError when the broker cannot be reached."""
        ...

    def notify(self, events: Sequence[OutboxEvent]) -> None:
        """Announce published events (pub/sub: fire and forget)."""
        ...
