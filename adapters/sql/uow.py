"""Unit of Work and repositories over SQLAlchemy Core."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session, sessionmaker

from adapters.sql import tables as t
from adapters.sql.images import SqlImageRepository
from adapters.sql.messages import SqlMessageRepository
from adapters.sql.outbox import SqlOutboxRepository
from adapters.sql.uploads import SqlUploadRepository
from domain.models import DomainEvent


class SqlUnitOfWork:
    """One session, one transaction. Leaving the block without commit() rolls back.

    ``correlation_id`` is called when an event is recorded, to stamp it with the
    correlation id of the work that caused it (the composition root reads it from
    the running message's context); ``trace_context`` likewise, for the W3C trace context
    of the current span (None when not traced), with which the relay sends the event.
    """

    def __init__(self, session_factory: sessionmaker[Session],
                 correlation_id: Callable[[], str | None] = lambda: None,
                 trace_context: Callable[[], dict[str, str] | None] = lambda: None) -> None:
        self._factory = session_factory
        self._correlation_id = correlation_id
        self._trace_context = trace_context
        self.session: Session | None = None

    def add_event(self, event: DomainEvent) -> None:
        assert self.session is not None
        # The producer chose the id: a longer one than the column must not fail the transaction.
        correlation_id = self._correlation_id()
        if correlation_id:
            correlation_id = correlation_id[:64]
        self.session.execute(insert(t.outbox_events).values(
            id=event.id, type=event.type, aggregate_type=event.aggregate_type,
            aggregate_id=event.aggregate_id, payload=event.payload,
            correlation_id=correlation_id, created_at=event.occurred_at,
            next_attempt_at=event.occurred_at, attempts=0, dead=False, trace_context=self._trace_context(),
        ))

    def __enter__(self) -> SqlUnitOfWork:
        self.session = self._factory()
        self.images = SqlImageRepository(self.session)
        self.outbox = SqlOutboxRepository(self.session)
        self.uploads = SqlUploadRepository(self.session)  # --- uploads ---
        self.messages = SqlMessageRepository(self.session)  # --- messaging ---
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.session is not None
        try:
            self.session.rollback()
        finally:
            self.session.close()
            self.session = None

    def commit(self) -> None:
        assert self.session is not None
        self.session.commit()

    def rollback(self) -> None:
        assert self.session is not None
        self.session.rollback()


def uow_factory(engine: Engine, correlation_id: Callable[[], str | None] = lambda: None,  # type: ignore[no-untyped-def]
                trace_context: Callable[[], dict[str, str] | None] = lambda: None):
    """Return a callable that makes a fresh SqlUnitOfWork per use."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    return lambda: SqlUnitOfWork(factory, correlation_id, trace_context)
