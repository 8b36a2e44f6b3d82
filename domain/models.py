"""Entities and value objects."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from domain.errors import InvalidPayload


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def parse_id(value: Any, what: str = "id") -> str:
    """Validate an entity id taken from a message; a bad one is a permanent error."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise InvalidPayload(f"{what} must be a UUID, got {value!r}") from None


class ImageStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    READY = "READY"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Thumbnail:
    size: int  # the longest side asked for
    key: str
    width: int
    height: int
    format: str
    byte_size: int


@dataclass
class Image:
    id: str
    original_key: str
    content_type: str | None = None
    owner: str | None = None
    status: ImageStatus = ImageStatus.PENDING
    failure_reason: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    thumbnails: list[Thumbnail] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def start_processing(self, now: datetime) -> None:
        self.status = ImageStatus.PROCESSING
        self.failure_reason = None
        self.updated_at = now

    def mark_ready(self, thumbnails: list[Thumbnail], metadata: dict[str, Any], now: datetime) -> None:
        self.thumbnails = sorted(thumbnails, key=lambda t: t.size)
        self.metadata = metadata
        self.status = ImageStatus.READY
        self.failure_reason = None
        self.updated_at = now

    def mark_failed(self, reason: str, now: datetime) -> None:
        self.status = ImageStatus.FAILED
        self.failure_reason = reason[:2000]
        self.updated_at = now


@dataclass(frozen=True)
class RenderedThumbnail:
    size: int
    data: bytes
    width: int
    height: int
    format: str  # "webp" or "jpeg"

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"


@dataclass(frozen=True)
class RenderedImage:
    """What the imaging port makes of an original: thumbnails and metadata."""

    thumbnails: list[RenderedThumbnail]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class DomainEvent:
    """A fact a service records in the same transaction as the state change that caused it.

    The outbox relay later sends it to the actors subscribed to its type.
    """

    type: str  # e.g. "image.processed"
    aggregate_type: str  # e.g. "image"
    aggregate_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    occurred_at: datetime = field(default_factory=utcnow)


@dataclass
class OutboxEvent:
    """A recorded DomainEvent as the outbox holds it, with its delivery state."""

    id: str
    type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]
    correlation_id: str | None
    created_at: datetime
    attempts: int = 0
    next_attempt_at: datetime | None = None
    published_at: datetime | None = None
    last_error: str | None = None
    dead: bool = False

    def message(self) -> dict[str, Any]:
        """What subscribers receive: the event as plain JSON-able data."""
        return {
            "id": self.id,
            "type": self.type,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "payload": self.payload,
            "correlation_id": self.correlation_id,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Delivery:
    """One outbox event bound for one subscriber actor.

    dedup_key is the same every time the pair is sent, so a resend after a crash between
    enqueue and commit is recognised by the dedup middleware and not run twice.
    """

    event: OutboxEvent
    actor: str
    args: tuple[Any, ...]

    @property
    def dedup_key(self) -> str:
        return f"{self.event.id}:{self.actor}"


# --- media: embeddings and search ---
@dataclass(frozen=True)
class SearchHit:
    """One search result: an image id and its cosine similarity to the query (higher is closer)."""

    image_id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
