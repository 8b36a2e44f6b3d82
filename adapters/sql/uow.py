"""Unit of Work and repositories over SQLAlchemy Core."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from adapters.sql import tables as t
from adapters.sql.messages import SqlMessageRepository
from adapters.sql.outbox import SqlOutboxRepository
from adapters.sql.uploads import SqlUploadRepository
from domain.models import DomainEvent, Image, ImageStatus, Thumbnail


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class SqlImageRepository:
    def __init__(self, session: Session) -> None:
        self._s = session

    def add(self, image: Image) -> None:
        self._s.execute(insert(t.images).values(**self._row(image)))
        self._write_thumbnails(image)

    def get(self, image_id: str) -> Image | None:
        return self._load(image_id, lock=False)

    def get_for_update(self, image_id: str) -> Image | None:
        return self._load(image_id, lock=True)

    def save(self, image: Image) -> None:
        row = self._row(image)
        row.pop("id")
        self._s.execute(update(t.images).where(t.images.c.id == image.id).values(**row))
        self._s.execute(delete(t.thumbnails).where(t.thumbnails.c.image_id == image.id))
        self._write_thumbnails(image)

    def list_ids(self, status: ImageStatus | None = None, limit: int | None = None, *,
                 owner: str | None = None, created_from: datetime | None = None,
                 created_to: datetime | None = None) -> list[str]:
        q = select(t.images.c.id).order_by(t.images.c.created_at, t.images.c.id)
        if status is not None:
            q = q.where(t.images.c.status == status.value)
        if owner is not None:
            q = q.where(t.images.c.owner == owner)
        if created_from is not None:
            q = q.where(t.images.c.created_at >= created_from)
        if created_to is not None:
            q = q.where(t.images.c.created_at < created_to)
        if limit is not None:
            q = q.limit(limit)
        return list(self._s.scalars(q))

    def _load(self, image_id: str, *, lock: bool) -> Image | None:
        q = select(t.images).where(t.images.c.id == image_id)
        if lock:
            q = q.with_for_update()
        row = self._s.execute(q).mappings().first()
        if row is None:
            return None
        thumbs = self._s.execute(
            select(t.thumbnails).where(t.thumbnails.c.image_id == image_id).order_by(t.thumbnails.c.size)
        ).mappings()
        return Image(
            id=row["id"],
            original_key=row["original_key"],
            content_type=row["content_type"],
            owner=row["owner"],
            status=ImageStatus(row["status"]),
            failure_reason=row["failure_reason"],
            metadata=row["metadata"] or {},
            created_at=_aware(row["created_at"]),
            updated_at=_aware(row["updated_at"]),
            thumbnails=[
                Thumbnail(r["size"], r["key"], r["width"], r["height"], r["format"], r["byte_size"])
                for r in thumbs
            ],
        )

    @staticmethod
    def _row(image: Image) -> dict[str, Any]:
        return {
            "id": image.id,
            "original_key": image.original_key,
            "content_type": image.content_type,
            "owner": image.owner,
            "status": image.status.value,
            "failure_reason": image.failure_reason,
            "metadata": image.metadata,
            "created_at": image.created_at,
            "updated_at": image.updated_at,
        }

    def _write_thumbnails(self, image: Image) -> None:
        if image.thumbnails:
            self._s.execute(
                insert(t.thumbnails),
                [
                    {
                        "image_id": image.id, "size": th.size, "key": th.key, "width": th.width,
                        "height": th.height, "format": th.format, "byte_size": th.byte_size,
                    }
                    for th in image.thumbnails
                ],
            )


class SqlUnitOfWork:
    """One session, one transaction. Leaving the block without commit() rolls back.

    ``correlation_id`` is called when an event is recorded, to stamp it with the
    correlation id of the work that caused it (the composition root reads it from
    the running message's context).
    """

    def __init__(self, session_factory: sessionmaker[Session],
                 correlation_id: Callable[[], str | None] = lambda: None) -> None:
        self._factory = session_factory
        self._correlation_id = correlation_id
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
            next_attempt_at=event.occurred_at, attempts=0, dead=False,
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


def uow_factory(engine: Engine, correlation_id: Callable[[], str | None] = lambda: None):  # type: ignore[no-untyped-def]
    """Return a callable that makes a fresh SqlUnitOfWork per use."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    return lambda: SqlUnitOfWork(factory, correlation_id)
