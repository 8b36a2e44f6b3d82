"""Ports: what the domain needs from the outside world, as typing.Protocol."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

from domain.models import DomainEvent, Image, RenderedImage


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


class ImageProcessor(Protocol):
    """Decode an original and render its thumbnails. Bad input raises InvalidImage."""

    def render(self, data: bytes, sizes: Sequence[int], fmt: str, quality: int) -> RenderedImage: ...


class ImageRepository(Protocol):
    def add(self, image: Image) -> None: ...

    def get(self, image_id: str) -> Image | None: ...

    def get_for_update(self, image_id: str) -> Image | None: ...

    def save(self, image: Image) -> None: ...


class UnitOfWork(Protocol):
    """One transaction. ``with uow:`` opens it; leaving without commit() rolls back."""

    images: ImageRepository

    def add_event(self, event: DomainEvent) -> None:
        """Record an event in this transaction (the outbox); it exists only if commit() happens."""
        ...

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class MetricsStore(Protocol):
    """Counters that every process adds to and the ops server reads at scrape time, so figures
    from several workers add up. A sample is (metric name, label values, amount)."""

    def add(self, samples: Iterable[tuple[str, tuple[str, ...], float]]) -> None: ...

    def read(self, name: str) -> dict[tuple[str, ...], float]: ...
