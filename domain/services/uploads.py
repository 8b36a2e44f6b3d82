"""Upload use cases: register chunks, merge them into one verified object, collect abandoned uploads.

The service owns the status machine UPLOADING -> MERGING -> COMPLETED | FAILED.

Crash safety rests on four things:
- status changes happen under the upload's row lock (get_for_update), so two merges running at
  once change the status once: the second to reach COMPLETED finds it done and records nothing;
- the merged object has a deterministic key (uploads/<id>/<file name>) and is written whole or
  not at all (S3 multipart complete, or a temporary file renamed), so merging again just writes
  the same bytes to the same key;
- a merge that finds MERGING (a worker died mid-merge) simply merges again;
- chunks are deleted only after COMPLETED is committed, and a merge that finds COMPLETED deletes
  whatever chunks are left, so a crash between the commit and the clean-up is finished by the
  retry.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from domain.clock import SystemClock
from domain.errors import InvalidPayload, NotFound, PermanentError
from domain.keys import validate_key
from domain.models import Chunk, DomainEvent, Image, Upload, UploadStatus, new_id
from domain.ports import Clock, MetricsStore, ObjectStore, UnitOfWork

log = logging.getLogger(__name__)

CHUNKS_PREFIX = "upload-chunks"
UPLOADS_PREFIX = "uploads"
#: S3's multipart rule: every part but the last is at least 5 MiB, and at most 10,000 parts.
COMPOSE_MIN_PART = 5 * 1024 * 1024
COMPOSE_MAX_PARTS = 10_000
MAX_CHUNKS = 100_000
READ_PIECE = 1024 * 1024  # bytes read at a time when streaming
ABANDONED = "abandoned"
COLLECTED_METRIC = "atelier_uploads_collected_total"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+@-]")


class ChecksumMismatch(PermanentError):
    """The merged object is not what the producer said it would be (size or sha256)."""


def chunk_key(upload_id: str, index: int) -> str:
    return validate_key(f"{CHUNKS_PREFIX}/{upload_id}/{index:06d}")


def safe_filename(filename: str) -> str:
    """The file name as one object-key segment: unsafe characters become '_'."""
    name = _UNSAFE.sub("_", filename.replace("\\", "/").rsplit("/", 1)[-1])[:200]
    return name if name.strip(".") else "file"


def final_key(upload_id: str, filename: str) -> str:
    """Deterministic: every merge of an upload writes the same key."""
    return validate_key(f"{UPLOADS_PREFIX}/{upload_id}/{safe_filename(filename)}")


def missing_indexes(total_chunks: int, chunks: Sequence[Chunk]) -> list[int]:
    have = {c.index for c in chunks}
    return [i for i in range(total_chunks) if i not in have]


def can_compose(sizes: Sequence[int], min_part: int = COMPOSE_MIN_PART,
                max_parts: int = COMPOSE_MAX_PARTS) -> bool:
    """Server-side compose is possible when every chunk but the last is at least ``min_part``."""
    return 0 < len(sizes) <= max_parts and all(size >= min_part for size in sizes[:-1])


@dataclass(frozen=True)
class UploadPolicy:
    url_expiry_s: int = 3600  # presigned download URLs
    retention: timedelta = timedelta(hours=24)  # an UPLOADING upload idle this long is abandoned
    gc_batch_size: int = 100
    compose_min_part: int = COMPOSE_MIN_PART  # raise it to force streaming (the benchmark does)


class UploadService:
    def __init__(
        self,
        uow: Callable[[], UnitOfWork],
        store: ObjectStore,
        policy: UploadPolicy = UploadPolicy(),
        clock: Clock | None = None,
        metrics: MetricsStore | None = None,
    ) -> None:
        self._uow = uow
        self._store = store
        self.policy = policy
        self._clock = clock or SystemClock()
        self._metrics = metrics

    # -- producer side --------------------------------------------------------------------
    def create_upload(
        self,
        filename: str,
        total_chunks: int,
        content_type: str | None = None,
        *,
        owner: str | None = None,
        expected_size: int | None = None,
        expected_sha256: str | None = None,
    ) -> Upload:
        """Record an upload UPLOADING; its chunks follow with upload_chunk or register_chunk."""
        if not isinstance(filename, str) or not filename.strip() or len(filename) > 255:
            raise InvalidPayload("filename must be a non-empty string of at most 255 characters")
        if not isinstance(total_chunks, int) or not 1 <= total_chunks <= MAX_CHUNKS:
            raise InvalidPayload(f"total_chunks must be an integer from 1 to {MAX_CHUNKS}")
        if expected_size is not None and (not isinstance(expected_size, int) or expected_size < 0):
            raise InvalidPayload("expected_size must be a non-negative integer")
        if expected_sha256 is not None:
            expected_sha256 = str(expected_sha256).lower()
            if not _SHA256.match(expected_sha256):
                raise InvalidPayload("expected_sha256 must be 64 hexadecimal digits")
        now = self._clock.now()
        upload = Upload(
            id=new_id(), filename=filename, total_chunks=total_chunks, content_type=content_type,
            owner=owner, expected_size=expected_size, expected_sha256=expected_sha256,
            created_at=now, updated_at=now,
        )
        with self._uow() as uow:
            uow.uploads.add(upload)
            uow.commit()
        return upload

    def upload_chunk(self, upload_id: str, index: int, data: bytes) -> Chunk:
        """Store one chunk's bytes under its key and register it. Sending an index again replaces it."""
        self._check_index(self.get_upload(upload_id), index)
        key = chunk_key(upload_id, index)
        self._store.put(key, data)
        try:
            # MD5 of the bytes: what S3 reports as the ETag of a single-part PUT.
            return self.register_chunk(upload_id, index, len(data), etag=hashlib.md5(data).hexdigest())
        except PermanentError:
            # The upload finished meanwhile (merged, failed, collected): nothing else would remove
            # this object. (MERGING still reads the chunks: leave it.)
            if self.get_upload(upload_id).status in (UploadStatus.COMPLETED, UploadStatus.FAILED):
                self._store.delete(key)
            raise

    def register_chunk(self, upload_id: str, index: int, size: int, *, etag: str | None = None) -> Chunk:
        """Register a chunk whose object is already at chunk_key(upload_id, index)."""
        if not isinstance(size, int) or size < 0:
            raise InvalidPayload("chunk size must be a non-negative integer")
        with self._uow() as uow:
            upload = uow.uploads.get_for_update(upload_id)
            if upload is None:
                raise NotFound(f"upload {upload_id} does not exist")
            self._check_index(upload, index)
            chunk = Chunk(upload_id, index, size, chunk_key(upload_id, index), etag)
            uow.uploads.put_chunk(chunk)
            upload.updated_at = self._clock.now()  # activity: keeps the collector away
            uow.uploads.save(upload)
            uow.commit()
        return chunk

    @staticmethod
    def _check_index(upload: Upload, index: int) -> None:
        if upload.status is not UploadStatus.UPLOADING:
            raise PermanentError(f"upload {upload.id} is {upload.status.value}: it takes no more chunks")
        if not isinstance(index, int) or not 0 <= index < upload.total_chunks:
            raise InvalidPayload(f"chunk index must be from 0 to {upload.total_chunks - 1}, got {index!r}")

    def get_upload(self, upload_id: str) -> Upload:
        with self._uow() as uow:
            upload = uow.uploads.get(upload_id)
        if upload is None:
            raise NotFound(f"upload {upload_id} does not exist")
        return upload

    def list_chunks(self, upload_id: str) -> list[Chunk]:
        with self._uow() as uow:
            return uow.uploads.chunks(upload_id)

    def download_url(self, upload_id: str, expires_seconds: int | None = None) -> str:
        """A fresh presigned URL of a COMPLETED upload's object."""
        upload = self.get_upload(upload_id)
        if upload.status is not UploadStatus.COMPLETED or upload.final_key is None:
            raise PermanentError(f"upload {upload_id} is {upload.status.value}, not COMPLETED")
        return self._store.url(upload.final_key, expires_seconds or self.policy.url_expiry_s)

    # -- merge ----------------------------------------------------------------------------
    def merge_upload(self, upload_id: str, progress: Callable[[float, str], None] | None = None) -> Upload:
        """Merge every chunk into one object, verify it, record COMPLETED, remove the chunks.

        ``progress(fraction, note)`` is called once per part read (the actor passes
        runtime.jobs.report_progress, which may raise domain.errors.Cancelled: the upload then
        stays MERGING, and merging again later starts over, as after a crash).

        Safe to run again and to run twice at once (see the module docstring). Missing chunks
        are a permanent error naming them; the upload stays UPLOADING so the producer can send
        them and ask again. A size or checksum mismatch, or a chunk object that has vanished,
        makes the upload FAILED: its objects are deleted, since nothing will ever use them.
        """
        with self._uow() as uow:
            upload = uow.uploads.get_for_update(upload_id)
            if upload is None:
                raise NotFound(f"upload {upload_id} does not exist")
            chunks = uow.uploads.chunks(upload_id)
            if upload.status is UploadStatus.COMPLETED:
                finished = upload
            elif upload.status is UploadStatus.FAILED:
                log.info("upload already FAILED (%s), nothing to do", upload.failure_reason)
                return upload
            else:
                finished = None
                missing = missing_indexes(upload.total_chunks, chunks)
                if missing:
                    shown = ", ".join(map(str, missing[:50])) + (" ..." if len(missing) > 50 else "")
                    raise PermanentError(
                        f"upload {upload_id} is missing {len(missing)} of {upload.total_chunks} chunks: "
                        f"indexes {shown}")
                if upload.status is UploadStatus.UPLOADING:
                    upload.start_merging(self._clock.now())
                    uow.uploads.save(upload)
                    uow.commit()
                # MERGING already: an earlier run died mid-merge (or runs right now); merge again.
        if finished is not None:
            # A crash after the COMPLETED commit may have left chunks: finish the clean-up.
            self._delete_chunks(upload_id, chunks)
            return finished

        key = final_key(upload_id, upload.filename)
        try:
            strategy, size, sha256 = self._merge(upload, chunks, key, progress or (lambda fraction, note: None))
        except Exception as exc:
            current = self.get_upload(upload_id)
            if current.status is UploadStatus.COMPLETED:
                # A concurrent merge finished first and removed the chunks we were reading.
                log.info("upload completed by a concurrent merge")
                return current
            if isinstance(exc, NotFound):
                reason = f"a chunk object is missing: {exc}"
                self._fail(upload_id, reason, chunks, key)
                raise PermanentError(reason) from exc
            raise

        problem = self._verify(upload, chunks, size, sha256)
        if problem:
            self._fail(upload_id, problem, chunks, key)
            raise ChecksumMismatch(problem)

        expiry = self.policy.url_expiry_s
        url = self._store.url(key, expiry)
        with self._uow() as uow:
            upload = uow.uploads.get_for_update(upload_id)
            if upload is None:
                raise NotFound(f"upload {upload_id} vanished while merging")
            if upload.status is not UploadStatus.MERGING:
                return upload  # a concurrent merge recorded the outcome first
            now = self._clock.now()
            upload.mark_completed(key=key, size=size, sha256=sha256, now=now)
            if upload.is_image:
                # Registered in the same transaction; routing upload.completed to
                # process_uploaded_image starts its processing (bootstrap/routing.py).
                image = Image(id=new_id(), original_key=key, content_type=upload.content_type,
                              owner=upload.owner, created_at=now, updated_at=now)
                uow.images.add(image)
                upload.image_id = image.id
                uow.add_event(DomainEvent("image.uploaded", "image", image.id, {
                    "image_id": image.id, "owner": upload.owner, "content_type": upload.content_type,
                    "upload_id": upload.id}))
            uow.uploads.save(upload)
            uow.add_event(DomainEvent("upload.completed", "upload", upload.id, {
                "upload_id": upload.id, "filename": upload.filename, "content_type": upload.content_type,
                "owner": upload.owner, "size": size, "sha256": sha256, "key": key,
                "image_id": upload.image_id, "download_url": url,
                "download_url_expires_at": (now + timedelta(seconds=expiry)).isoformat(),
                "merge": strategy}))
            uow.commit()
        log.info("upload completed", extra={"strategy": strategy, "size": size})
        self._delete_chunks(upload_id, chunks)
        return upload

    def _merge(self, upload: Upload, chunks: Sequence[Chunk], key: str,
               progress: Callable[[float, str], None]) -> tuple[str, int, str | None]:
        """Write the merged object; return (strategy, size, sha256 or None if not computed)."""
        content_type = upload.content_type or "application/octet-stream"
        keys = [c.key for c in chunks]
        n = len(keys)
        if can_compose([c.size for c in chunks], self.policy.compose_min_part):
            progress(0.0, f"composing {n} parts")
            self._store.compose(key, keys, content_type)
            size = self._store.size(key)
            sha256 = None
            if upload.expected_sha256 is not None:
                # Hashing needs the bytes: one streamed read (S3 keeps no sha256 of a composed object).
                digest = hashlib.sha256()
                ends = list(itertools.accumulate(c.size for c in chunks))
                read, part = 0, 0
                for piece in self._store.read_stream(key, READ_PIECE):
                    digest.update(piece)
                    read += len(piece)
                    while part < n and read >= ends[part]:
                        part += 1
                        progress(part / n, f"verified part {part}/{n}")
                sha256 = digest.hexdigest()
            else:
                progress(1.0, f"composed {n} parts")
            return "compose", size, sha256

        digest = hashlib.sha256()

        def pieces() -> Iterator[bytes]:
            for i, k in enumerate(keys):
                progress(i / n, f"part {i + 1}/{n}")
                for piece in self._store.read_stream(k, READ_PIECE):
                    digest.update(piece)
                    yield piece

        size = self._store.put_stream(key, pieces(), content_type)
        return "stream", size, digest.hexdigest()

    @staticmethod
    def _verify(upload: Upload, chunks: Sequence[Chunk], size: int, sha256: str | None) -> str | None:
        registered = sum(c.size for c in chunks)
        if upload.expected_size is not None and size != upload.expected_size:
            return f"size mismatch: expected {upload.expected_size} bytes, merged {size}"
        if size != registered:
            return f"size mismatch: chunks were registered with {registered} bytes, merged {size}"
        if upload.expected_sha256 is not None and sha256 != upload.expected_sha256:
            return f"sha256 mismatch: expected {upload.expected_sha256}, merged {sha256}"
        return None

    def _fail(self, upload_id: str, reason: str, chunks: Sequence[Chunk], key: str) -> None:
        with self._uow() as uow:
            upload = uow.uploads.get_for_update(upload_id)
            if upload is None or upload.status is UploadStatus.COMPLETED:
                return
            if upload.status is not UploadStatus.FAILED:  # a concurrent merge may have failed it first
                upload.mark_failed(reason, self._clock.now())
                uow.uploads.save(upload)
                uow.add_event(DomainEvent("upload.failed", "upload", upload.id,
                                          {"upload_id": upload.id, "reason": upload.failure_reason}))
                uow.commit()
        log.warning("upload failed: %s", reason)
        # Bad bytes must not be downloadable, and nothing will merge these chunks again.
        self._store.delete(key)
        self._delete_chunks(upload_id, chunks)

    def _delete_chunks(self, upload_id: str, chunks: Sequence[Chunk]) -> None:
        """Objects first, then rows: a crash in between leaves rows the next run deletes again."""
        if not chunks:
            return
        for chunk in chunks:
            self._store.delete(chunk.key)
        with self._uow() as uow:
            uow.uploads.delete_chunks(upload_id)
            uow.commit()

    # -- garbage collection ---------------------------------------------------------------
    def collect_abandoned(self) -> int:
        """Uploads UPLOADING with no activity for the retention period lose their chunks (objects
        and rows) and become FAILED "abandoned", a batch per transaction until none is left.

        Each batch is claimed under row locks (skipping rows another collector holds on
        PostgreSQL), its objects deleted, then committed: a crash before the commit leaves the
        uploads UPLOADING for the next run, which deletes again (deleting is idempotent).
        Returns how many uploads this run collected.
        """
        total = 0
        while True:
            now = self._clock.now()
            with self._uow() as uow:
                batch = uow.uploads.claim_abandoned(now - self.policy.retention, self.policy.gc_batch_size)
                if not batch:
                    break
                for upload in batch:
                    keys = {c.key for c in uow.uploads.chunks(upload.id)}
                    # Objects put whose registration never committed live under the same prefix.
                    keys.update(self._store.list(f"{CHUNKS_PREFIX}/{upload.id}/"))
                    for key in sorted(keys):
                        self._store.delete(key)
                    uow.uploads.delete_chunks(upload.id)
                    upload.mark_failed(ABANDONED, now)
                    uow.uploads.save(upload)
                    uow.add_event(DomainEvent("upload.failed", "upload", upload.id,
                                              {"upload_id": upload.id, "reason": ABANDONED}))
                uow.commit()
            total += len(batch)
            self._count_collected(len(batch))
        log.info("abandoned uploads collected", extra={"collected": total})
        return total

    def _count_collected(self, n: int) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.add([(COLLECTED_METRIC, (), n)])
        except Exception as exc:  # the collection is committed; a lost count must not undo it
            log.warning("could not count collected uploads: %s", exc)
