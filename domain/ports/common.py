"""Ports every capability uses: time, blobs, the unit of work."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

from domain.models import DomainEvent
from domain.ports.media import ImageRepository
from domain.ports.outbox import OutboxRepository
from domain.ports.uploads import UploadRepository


class Clock(Protocol):
    def now(self) -> datetime: ...


class ObjectStore(Protocol):
    """Blobs under validated keys. Missing objects raise NotFound; outages raise TransientError."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> Iterator[str]: ...

    def url(self, key: str, expires_seconds: int = 3600) -> str: ...

    def ping(self) -> None: ...

    # --- uploads ---
    def compose(self, key: str, sources: Sequence[str], content_type: str = "application/octet-stream") -> None:
        """Concatenate ``sources`` into ``key`` inside the store, without the bytes passing through
        this process (S3: every source but the last must be at least 5 MiB). The object appears
        whole or not at all; composing again gives the same object."""
        ...

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes in pieces of at most ``chunk_size``."""
        ...

    def put_stream(self, key: str, chunks: Iterable[bytes],
                   content_type: str = "application/octet-stream") -> int:
        """Store the concatenation of ``chunks`` holding a bounded amount in memory; returns its size.
        The object appears only if ``chunks`` ends normally: an exception leaves any previous
        object under ``key`` as it was."""
        ...


class UnitOfWork(Protocol):
    """One transaction. ``with uow:`` opens it; leaving without commit() rolls back."""

    images: ImageRepository
    outbox: OutboxRepository
    uploads: UploadRepository  # --- uploads ---

    def add_event(self, event: DomainEvent) -> None:
        """Record an event in this transaction (the outbox); it exists only if commit() happens."""
        ...

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...
