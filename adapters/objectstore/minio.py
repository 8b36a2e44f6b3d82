"""MinIO / S3 object store through the minio SDK.

compose() is S3's server-side copy (multipart upload of UploadPartCopy parts): the bytes stay in
the store. put_stream() is a multipart upload fed part by part from an iterator, so a worker holds
about one part (STREAM_PART_SIZE) in memory whatever the object's size.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.error import S3Error

from domain.errors import NotFound, PermanentError, TransientError
from domain.keys import validate_key

_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}
#: Part size of streamed multipart uploads: the memory a streaming merge holds (objects up to 80 GB).
STREAM_PART_SIZE = 8 * 1024 * 1024


def make_client(endpoint: str, access_key: str, secret_key: str, *, secure: bool,
                region: str | None = None, timeout: float = 10.0) -> Minio:
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout * 6),
        maxsize=16,
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                 region=region, http_client=http)


class MinioObjectStore:
    def __init__(self, client: Minio, bucket: str, *, create_bucket: bool = True) -> None:
        self.client = client
        self.bucket = bucket
        self._bucket_checked = not create_bucket

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._translate(exc, self.bucket) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"object store unreachable: {exc}") from exc
        self._bucket_checked = True

    @staticmethod
    def _translate(exc: Exception, key: str) -> Exception:
        if isinstance(exc, S3Error) and exc.code in _MISSING:
            return NotFound(f"object {key!r} does not exist")
        return TransientError(f"object store error on {key!r}: {exc}")

    def _call(self, key: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._ensure_bucket()
        try:
            return fn(*args, **kwargs)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._translate(exc, key) from exc

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        validate_key(key)
        self._call(key, self.client.put_object, self.bucket, key, io.BytesIO(data), len(data),
                   content_type=content_type)

    def get(self, key: str) -> bytes:
        validate_key(key)

        def _read() -> bytes:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call(key, _read)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except NotFound:
            return False

    def size(self, key: str) -> int:
        validate_key(key)
        return int(self._call(key, self.client.stat_object, self.bucket, key).size)

    def delete(self, key: str) -> None:
        validate_key(key)
        self._call(key, self.client.remove_object, self.bucket, key)

    def list(self, prefix: str = "") -> Iterator[str]:
        objects = self._call(prefix, lambda: list(
            self.client.list_objects(self.bucket, prefix=prefix, recursive=True)))
        for obj in objects:
            yield obj.object_name

    def url(self, key: str, expires_seconds: int = 3600) -> str:
        validate_key(key)
        return self._call(key, self.client.presigned_get_object, self.bucket, key,
                          expires=timedelta(seconds=expires_seconds))

    def ping(self) -> None:
        self._bucket_checked = False
        self._ensure_bucket()

    # --- uploads ---
    def compose(self, key: str, sources: Sequence[str], content_type: str = "application/octet-stream") -> None:
        validate_key(key)
        for source in sources:
            validate_key(source)

        def _compose() -> None:
            try:
                self.client.compose_object(
                    self.bucket, key, [ComposeSource(self.bucket, s) for s in sources],
                    metadata={"Content-Type": content_type})
            except ValueError as exc:  # the SDK refuses parts under 5 MiB before calling S3
                raise PermanentError(f"cannot compose {key!r}: {exc}") from exc

        # The SDK aborts its multipart upload on failure; the destination stays as it was.
        self._call(key, _compose)

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        validate_key(key)
        resp = self._call(key, self.client.get_object, self.bucket, key)
        try:
            yield from resp.stream(chunk_size)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"object store error reading {key!r}: {exc}") from exc
        finally:
            resp.close()
            resp.release_conn()

    def put_stream(self, key: str, chunks: Iterable[bytes],
                   content_type: str = "application/octet-stream") -> int:
        validate_key(key)
        reader = _IterReader(chunks)
        # Unknown length: the SDK reads STREAM_PART_SIZE at a time and uploads each as a part, one
        # at a time (parallel parts would multiply the memory held). An exception from the
        # iterator aborts the multipart upload, so no partial object ever appears.
        self._call(key, self.client.put_object, self.bucket, key, reader, -1,
                   content_type=content_type, part_size=STREAM_PART_SIZE, num_parallel_uploads=1)
        return reader.total


class _IterReader:
    """A file-like read(n) over an iterator of byte strings, buffering at most n + one piece."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = bytearray()
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            piece = next(self._it, None)
            if piece is None:
                break
            self._buf += piece
            self.total += len(piece)
        if size < 0:
            size = len(self._buf)
        with memoryview(self._buf) as view:
            out = bytes(view[:size])  # one copy, not a bytearray slice and then bytes
        del self._buf[:size]
        return out
