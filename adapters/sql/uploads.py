"""The upload repository over SQLAlchemy Core, inside a unit of work's session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from adapters.sql import tables as t
from adapters.sql.outbox import _aware
from domain.models import Chunk, Upload, UploadStatus

_u = t.uploads
_c = t.upload_chunks


def _upload(row: Any) -> Upload:
    return Upload(
        id=row.id, filename=row.filename, total_chunks=row.total_chunks, content_type=row.content_type,
        owner=row.owner, expected_size=row.expected_size, expected_sha256=row.expected_sha256,
        status=UploadStatus(row.status), failure_reason=row.failure_reason, final_key=row.final_key,
        size=row.size, sha256=row.sha256, image_id=row.image_id, created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at), completed_at=_aware(row.completed_at),
    )


class SqlUploadRepository:
    """Row locks: SELECT ... FOR UPDATE on PostgreSQL (SKIP LOCKED for the collector's claim); on
    SQLite every transaction holds the database's write lock from its start (BEGIN IMMEDIATE)."""

    def __init__(self, session: Session) -> None:
        self._s = session
        self._pg = session.get_bind().dialect.name == "postgresql"

    def add(self, upload: Upload) -> None:
        self._s.execute(insert(_u).values(**self._row(upload)))

    def get(self, upload_id: str) -> Upload | None:
        row = self._s.execute(select(_u).where(_u.c.id == upload_id)).first()
        return _upload(row) if row else None

    def get_for_update(self, upload_id: str) -> Upload | None:
        row = self._s.execute(select(_u).where(_u.c.id == upload_id).with_for_update()).first()
        return _upload(row) if row else None

    def save(self, upload: Upload) -> None:
        row = self._row(upload)
        row.pop("id")
        self._s.execute(update(_u).where(_u.c.id == upload.id).values(**row))

    def chunks(self, upload_id: str) -> list[Chunk]:
        rows = self._s.execute(select(_c).where(_c.c.upload_id == upload_id).order_by(_c.c.idx))
        return [Chunk(r.upload_id, r.idx, r.size, r.key, r.etag) for r in rows]

    def put_chunk(self, chunk: Chunk) -> None:
        # Callers hold the upload's row lock, so delete-then-insert cannot race another writer.
        self._s.execute(delete(_c).where(_c.c.upload_id == chunk.upload_id, _c.c.idx == chunk.index))
        self._s.execute(insert(_c).values(upload_id=chunk.upload_id, idx=chunk.index, size=chunk.size,
                                          key=chunk.key, etag=chunk.etag, created_at=datetime.now(UTC)))

    def delete_chunks(self, upload_id: str) -> int:
        return int(self._s.execute(delete(_c).where(_c.c.upload_id == upload_id)).rowcount or 0)

    def claim_abandoned(self, before: datetime, limit: int) -> list[Upload]:
        q = (select(_u)
             .where(_u.c.status == UploadStatus.UPLOADING.value, _u.c.updated_at < before)
             .order_by(_u.c.updated_at, _u.c.id)
             .limit(limit))
        if self._pg:
            q = q.with_for_update(skip_locked=True)
        return [_upload(r) for r in self._s.execute(q)]

    def list_ids(self, status: UploadStatus | None = None, limit: int = 100) -> list[str]:
        q = select(_u.c.id).order_by(_u.c.created_at.desc(), _u.c.id).limit(limit)
        if status is not None:
            q = q.where(_u.c.status == status.value)
        return list(self._s.scalars(q))

    @staticmethod
    def _row(upload: Upload) -> dict[str, Any]:
        return {
            "id": upload.id, "filename": upload.filename, "content_type": upload.content_type,
            "owner": upload.owner, "total_chunks": upload.total_chunks,
            "expected_size": upload.expected_size, "expected_sha256": upload.expected_sha256,
            "status": upload.status.value, "failure_reason": upload.failure_reason,
            "final_key": upload.final_key, "size": upload.size, "sha256": upload.sha256,
            "image_id": upload.image_id, "created_at": upload.created_at,
            "updated_at": upload.updated_at, "completed_at": upload.completed_at,
        }
