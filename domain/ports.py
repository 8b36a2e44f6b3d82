"""Ports: what the domain needs from the outside world, as typing.Protocol."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol

from domain.models import Delivery, DomainEvent, Image, ImageStatus, OutboxEvent, RenderedImage, SearchHit


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

    def list_ids(self, status: ImageStatus | None = None, limit: int | None = None, *,
                 owner: str | None = None, created_from: datetime | None = None,
                 created_to: datetime | None = None) -> list[str]:
        """Ids in creation order, filtered (created_from inclusive, created_to exclusive)."""
        ...


class OutboxRepository(Protocol):
    """The outbox inside the current unit of work's transaction.

    claim_due locks the rows it returns until the transaction ends, and skips rows another
    transaction holds, so relays running in parallel never claim the same event.
    """

    def claim_due(self, now: datetime, limit: int) -> list[OutboxEvent]: ...

    def mark_published(self, event_ids: Sequence[str], now: datetime) -> None: ...

    def mark_failed(self, event_id: str, *, attempts: int, error: str, next_attempt_at: datetime,
                    dead: bool) -> None: ...

    def get(self, event_id: str) -> OutboxEvent | None: ...

    def list(self, *, dead: bool | None = None, published: bool | None = None,
             limit: int = 100) -> list[OutboxEvent]: ...

    def revive(self, event_id: str, now: datetime) -> bool:
        """Make a dead (or failing) event due again with its attempts reset; False if unknown."""
        ...


class UnitOfWork(Protocol):
    """One transaction. ``with uow:`` opens it; leaving without commit() rolls back."""

    images: ImageRepository
    outbox: OutboxRepository

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

class EventPublisher(Protocol):
    """Hands outbox events to the broker and announces them (the outbox relay's way out)."""

    def enqueue(self, deliveries: Sequence[Delivery]) -> dict[str, str]:
        """Enqueue every delivery. Returns {event id: error} for deliveries that failed on their
        own (the others went out); raises TransientError when the broker cannot be reached."""
        ...

    def notify(self, events: Sequence[OutboxEvent]) -> None:
        """Announce published events (pub/sub: fire and forget)."""
        ...


# --- media: embeddings and search ---
class ImageEmbedder(Protocol):
    """A CLIP-style model mapping images and texts into one space; vectors are L2-normalised.

    Raises ModelUnavailable (transient) when the model cannot be loaded and InvalidImage when
    the bytes are not an image it can decode. Safe to call from several threads at once.
    """

    @property
    def model_id(self) -> str: ...

    def embed_image(self, data: bytes) -> list[float]: ...

    def embed_text(self, text: str) -> list[float]: ...


class VectorIndex(Protocol):
    """Points (id, vector, payload) searched by cosine similarity. Outages raise TransientError."""

    def upsert(self, point_id: str, vector: Sequence[float], payload: dict[str, Any]) -> None:
        """Insert or replace: the same id twice leaves one point (idempotent)."""
        ...

    def search(self, vector: Sequence[float], limit: int, *, owner: str | None = None) -> list[SearchHit]: ...

    def get_vector(self, point_id: str) -> list[float] | None: ...

    def ping(self) -> None: ...
