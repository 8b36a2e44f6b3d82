"""Chunked uploads: the upload repository."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from domain.models import Chunk, Upload


class UploadRepository(Protocol):
    """Uploads and their chunks inside the current unit of work's transaction."""

    def add(self, upload: Upload) -> None: ...

    def get(self, upload_id: str) -> Upload | None: ...

    def get_for_update(self, upload_id: str) -> Upload | None:
        """The upload, row-locked until the transaction ends (concurrent merges serialise here)."""
        ...

    def save(self, upload: Upload) -> None: ...

    def chunks(self, upload_id: str) -> list[Chunk]:
        """Registered chunks, by index."""
        ...

    def put_chunk(self, chunk: Chunk) -> None:
        """Register a chunk; registering an index again replaces it."""
        ...

    def delete_chunks(self, upload_id: str) -> int: ...

    def claim_abandoned(self, before: datetime, limit: int) -> list[Upload]:
        """Up to ``limit`` uploads still UPLOADING with no activity since ``before``, row-locked;
        rows another transaction holds are skipped, so collectors in parallel never share one."""
        ...
