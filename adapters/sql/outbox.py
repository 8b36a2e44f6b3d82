"""The outbox repository over SQLAlchemy Core, inside a unit of work's session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import false, select, update
from sqlalchemy.orm import Session

from adapters.sql import tables as t
from domain.models import OutboxEvent

_e = t.outbox_events


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _event(row) -> OutboxEvent:  # type: ignore[no-untyped-def]
    return OutboxEvent(
        id=row.id, type=row.type, aggregate_type=row.aggregate_type, aggregate_id=row.aggregate_id,
        payload=row.payload, correlation_id=row.correlation_id, created_at=_aware(row.created_at),
        attempts=row.attempts, next_attempt_at=_aware(row.next_attempt_at),
        published_at=_aware(row.published_at), last_error=row.last_error, dead=bool(row.dead),
        trace_context=_trace_context(row.trace_context),
    )


def _trace_context(value: object) -> dict[str, str] | None:
    # Only text fields: whatever else a hand-edited row holds is not a context to send on.
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)} or None


class SqlOutboxRepository:
    """On PostgreSQL the claim is SELECT ... FOR UPDATE SKIP LOCKED: rows another relay holds are
    skipped, not waited for. SQLite has no row locks; its transactions start with BEGIN IMMEDIATE
    (see engine.py), so one relay at a time holds the database's write lock for its batch."""

    def __init__(self, session: Session) -> None:
        self._s = session
        self._pg = session.get_bind().dialect.name == "postgresql"

    def claim_due(self, now: datetime, limit: int) -> list[OutboxEvent]:
        # The predicate matches the partial index ix_outbox_pending.
        q = (select(_e)
             .where(_e.c.published_at.is_(None), _e.c.dead == false(), _e.c.next_attempt_at <= now)
             .order_by(_e.c.next_attempt_at)
             .limit(limit))
        if self._pg:
            q = q.with_for_update(skip_locked=True)
        return [_event(r) for r in self._s.execute(q)]

    def mark_published(self, event_ids: Sequence[str], now: datetime) -> None:
        self._s.execute(update(_e).where(_e.c.id.in_(list(event_ids))).values(published_at=now))

    def mark_failed(self, event_id: str, *, attempts: int, error: str, next_attempt_at: datetime,
                    dead: bool) -> None:
        self._s.execute(update(_e).where(_e.c.id == event_id).values(
            attempts=attempts, last_error=error[:4000], next_attempt_at=next_attempt_at, dead=dead))

    def get(self, event_id: str) -> OutboxEvent | None:
        row = self._s.execute(select(_e).where(_e.c.id == event_id)).first()
        return _event(row) if row else None

    def list(self, *, dead: bool | None = None, published: bool | None = None,
             limit: int = 100) -> list[OutboxEvent]:
        q = select(_e).order_by(_e.c.created_at.desc(), _e.c.id).limit(limit)
        if dead is not None:
            q = q.where(_e.c.dead == dead)
        if published is not None:
            q = q.where(_e.c.published_at.is_not(None) if published else _e.c.published_at.is_(None))
        return [_event(r) for r in self._s.execute(q)]

    def revive(self, event_id: str, now: datetime) -> bool:
        result = self._s.execute(update(_e).where(_e.c.id == event_id, _e.c.published_at.is_(None)).values(
            attempts=0, dead=False, last_error=None, next_attempt_at=now))
        return bool(result.rowcount)
