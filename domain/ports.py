"""Ports: what the domain needs from the outside world, as typing.Protocol."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol

from domain.models import (
    Chunk,
    Delivery,
    DomainEvent,
    Image,
    ImageStatus,
    OutboundMessage,
    OutboxEvent,
    RenderedImage,
    SearchHit,
    SendReceipt,
    Upload,
)
from domain.resilience import BreakerDecision, BreakerPolicy, CircuitState, DeadLetter, DedupOutcome


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
    uploads: UploadRepository  # --- uploads ---

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


# --- uploads ---
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


# --- messaging ---
class MessageRepository(Protocol):
    """Outbound messages with their per-channel deliveries, inside a unit of work."""

    def add(self, message: OutboundMessage) -> bool:
        """Insert the message (deliveries included); False, changing nothing, if its id exists."""
        ...

    def get(self, message_id: str) -> OutboundMessage | None: ...

    def get_for_update(self, message_id: str) -> OutboundMessage | None:
        """Load and lock the message row until the transaction ends (deliveries of one message
        are then updated one transaction at a time)."""
        ...

    def save(self, message: OutboundMessage) -> None:
        """Store the message's status and every delivery (inserting new ones)."""
        ...

    def find_by_provider_id(self, channel: str, provider_message_id: str) -> str | None:
        """The id of the message whose delivery on ``channel`` the channel calls this."""
        ...


class MessagingUnitOfWork(UnitOfWork, Protocol):
    messages: MessageRepository


class ChannelGateway(Protocol):
    """Sends one message on one chat channel.

    Raises TransientError when retrying may help (5xx, timeout, connection error; 429 with
    ``retry_after``), PermanentError when it cannot (other 4xx, a message the channel refuses).
    ``idempotency_key`` is the same for every attempt of one delivery, for channels that dedup.
    """

    def send(self, message: OutboundMessage, idempotency_key: str) -> SendReceipt: ...
# --- middleware state ---


class DedupStore(Protocol):
    """Dedup keys shared by every worker. A key is held ("running") by one message while it runs,
    with a lease; "done" for the window once it completed. All operations are atomic."""

    def acquire(self, key: str, token: str, lease_ms: int) -> DedupOutcome:
        """ACQUIRED if the key was free (or already held by ``token``: a redelivery of the same
        message), DONE if it completed within its window, BUSY if another token holds it."""
        ...

    def take_free(self, items: Sequence[tuple[str, str, int]]) -> list[DedupOutcome]:
        """For each (key, token, lease_ms), in one round trip where the store can: take the key if
        it is free (ACQUIRED); else DONE, or BUSY whoever holds it, ``token`` included (unlike
        acquire, a lease of the same token is neither extended nor reported as ACQUIRED: a
        redelivery is decided when it is about to run, against what runs then)."""
        ...

    def complete(self, key: str, token: str, window_ms: int) -> None: ...

    def complete_many(self, items: Sequence[tuple[str, str, int]]) -> None:
        """complete() for each (key, token, window_ms), in one round trip where the store can."""
        ...

    def release(self, key: str, token: str) -> None:
        """Free the key if ``token`` still holds it (a failed attempt: its retry may run)."""
        ...


class BreakerStore(Protocol):
    """Circuit-breaker state per circuit, shared by every worker; transitions are atomic."""

    def allow(self, circuit: str, now_ms: int, policy: BreakerPolicy) -> BreakerDecision: ...

    def record_failure(self, circuit: str, now_ms: int, policy: BreakerPolicy,
                       ) -> tuple[CircuitState, CircuitState] | None:
        """Count a dependency failure; returns (from, to) when it opened the circuit."""
        ...

    def record_success(self, circuit: str, trial: bool) -> tuple[CircuitState, CircuitState] | None:
        """A successful half-open trial closes the circuit; returns (from, to) then."""
        ...

    def release_trial(self, circuit: str) -> None:
        """A trial ended without telling anything about the dependency (bad input)."""
        ...

    def peek(self, circuit: str, now_ms: int, policy: BreakerPolicy) -> tuple[CircuitState, bool]:
        """(state, whether traffic may go through now), without changing anything. An open circuit
        is judged by the reset timeout it was opened with (an actor's own), else ``policy``'s."""
        ...

    def states(self) -> dict[str, CircuitState]:
        """Every circuit that has ever counted a failure."""
        ...


class FallbackQueue(Protocol):
    """Messages parked per circuit (opaque bytes) until the circuit lets traffic through. A claim
    moves items to a processing list; ack removes them; recover moves unacked ones back."""

    def push(self, circuit: str, item: bytes) -> None: ...

    def circuits(self) -> list[str]: ...

    def lengths(self) -> dict[str, int]: ...

    def lock(self, circuit: str, token: str, ttl_ms: int) -> bool: ...

    def unlock(self, circuit: str, token: str) -> None: ...

    def claim(self, circuit: str, limit: int) -> list[bytes]: ...

    def ack(self, circuit: str, item: bytes) -> None: ...

    def recover(self, circuit: str) -> int:
        """Move claimed but unacknowledged items back to the head of the queue; returns how many."""
        ...


class DeadLetterStore(Protocol):
    """Durable, queryable store of messages that failed for good."""

    def add(self, letter: DeadLetter) -> bool:
        """Store it; False (and nothing changes) if this message and attempt are already stored."""
        ...

    def get(self, letter_id: str) -> DeadLetter | None: ...

    def list(self, *, actor: str | None = None, older_than: datetime | None = None,
             newer_than: datetime | None = None, replayed: bool | None = None,
             limit: int = 100) -> list[DeadLetter]: ...

    def mark_replayed(self, letter_id: str, at: datetime, message_id: str) -> None: ...

    def delete(self, letter_ids: Sequence[str]) -> int: ...

    def count(self, *, replayed: bool | None = None) -> int: ...


class MessageSender(Protocol):
    """Puts messages back on the broker: parked ones (opaque bytes) and replayed dead letters."""

    def requeue(self, item: bytes) -> None: ...

    def send(self, actor: str, queue: str, args: Sequence[Any], kwargs: dict[str, Any],
             options: dict[str, Any]) -> str:
        """Enqueue a new message; returns its message id."""
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
