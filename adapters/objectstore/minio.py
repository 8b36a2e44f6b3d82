"""MinIO / S3 object store through the minio SDK."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta

import urllib3
from minio import Minio
from minio.error import S3Error

from domain.errors import NotFound, TransientError
from domain.keys import validate_key

_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}


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
