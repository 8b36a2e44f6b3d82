"""The image repository over SQLAlchemy Core: images and their thumbnails."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from adapters.sql import tables as t
from adapters.sql.outbox import _aware
from domain.models import Image, ImageStatus, Thumbnail


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
