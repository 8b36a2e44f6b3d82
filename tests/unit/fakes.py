"""In-memory fakes of the domain's ports, for unit tests of the domain only."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from datetime import datetime

from domain.errors import InvalidImage, NotFound, TransientError
from domain.keys import validate_key
from domain.models import Delivery, DomainEvent, Image, OutboxEvent, RenderedImage, RenderedThumbnail


class InMemoryObjectStore:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.puts = 0

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.objects[validate_key(key)] = (data, content_type)
        self.puts += 1

    def get(self, key: str) -> bytes:
        try:
            return self.objects[validate_key(key)][0]
        except KeyError:
            raise NotFound(key) from None

    def exists(self, key: str) -> bool:
        return key in self.objects

    def size(self, key: str) -> int:
        return len(self.get(key))

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self.objects if k.startswith(prefix)))

    def url(self, key: str, expires_seconds: int = 3600) -> str:
        return f"memory://{key}"

    def ping(self) -> None:
        pass


class FakeImageProcessor:
    """Renders 'thumbnails' as text; b'bad' is refused like an undecodable file."""

    def __init__(self) -> None:
        self.calls = 0

    def render(self, data: bytes, sizes: Sequence[int], fmt: str, quality: int) -> RenderedImage:
        self.calls += 1
        if data == b"bad":
            raise InvalidImage("not an image")
        thumbs = [RenderedThumbnail(s, f"{s}:{data!r}".encode(), s, s // 2, fmt) for s in sizes]
        return RenderedImage(thumbs, {"format": "FAKE", "width": 1000, "height": 500})


class FakeImageRepository:
    def __init__(self, rows: dict[str, Image]) -> None:
        self.rows = rows

    def add(self, image: Image) -> None:
        self.rows[image.id] = copy.deepcopy(image)

    def get(self, image_id: str) -> Image | None:
        row = self.rows.get(image_id)
        return copy.deepcopy(row) if row else None

    get_for_update = get

    def save(self, image: Image) -> None:
        self.rows[image.id] = copy.deepcopy(image)

    def list_ids(self, status=None, limit=None, *, owner=None, created_from=None, created_to=None) -> list[str]:
        rows = sorted(self.rows.values(), key=lambda i: (i.created_at, i.id))
        ids = [i.id for i in rows if (status is None or i.status is status) and (owner is None or i.owner == owner)
               and (created_from is None or i.created_at >= created_from)
               and (created_to is None or i.created_at < created_to)]
        return ids[:limit] if limit is not None else ids


class FakeUnitOfWork:
    """Writes land in `committed` only on commit(), like a real transaction."""

    def __init__(self, committed: dict[str, Image], events: list[DomainEvent] | None = None) -> None:
        self.committed = committed
        self.events = events if events is not None else []
        self.commits = 0

    def __enter__(self) -> FakeUnitOfWork:
        self._staged = copy.deepcopy(self.committed)
        self._staged_events: list[DomainEvent] = []
        self.images = FakeImageRepository(self._staged)
        return self

    def add_event(self, event: DomainEvent) -> None:
        self._staged_events.append(event)

    def __exit__(self, *exc: object) -> None:
        pass

    def commit(self) -> None:
        self.committed.clear()
        self.committed.update(copy.deepcopy(self._staged))
        self.events.extend(self._staged_events)
        self._staged_events = []
        self.commits += 1

    def rollback(self) -> None:
        self._staged = copy.deepcopy(self.committed)
        self._staged_events = []


class FakeOutboxRepository:
    """The outbox over a dict of rows; claims lock rows until the owning transaction ends."""

    def __init__(self, rows: dict[str, OutboxEvent], locked: set[str]) -> None:
        self.rows = rows
        self.locked = locked
        self.claimed: list[str] = []

    def claim_due(self, now: datetime, limit: int) -> list[OutboxEvent]:
        due = sorted((e for e in self.rows.values()
                      if e.published_at is None and not e.dead and e.next_attempt_at <= now
                      and e.id not in self.locked), key=lambda e: (e.next_attempt_at, e.id))[:limit]
        self.claimed = [e.id for e in due]
        self.locked.update(self.claimed)
        return [copy.deepcopy(e) for e in due]

    def mark_published(self, event_ids, now: datetime) -> None:
        for event_id in event_ids:
            self.rows[event_id].published_at = now

    def mark_failed(self, event_id: str, *, attempts: int, error: str, next_attempt_at: datetime,
                    dead: bool) -> None:
        row = self.rows[event_id]
        row.attempts, row.last_error, row.next_attempt_at, row.dead = attempts, error, next_attempt_at, dead

    def get(self, event_id: str) -> OutboxEvent | None:
        row = self.rows.get(event_id)
        return copy.deepcopy(row) if row else None

    def list(self, *, dead=None, published=None, limit: int = 100) -> list[OutboxEvent]:
        rows = [e for e in self.rows.values()
                if (dead is None or e.dead == dead)
                and (published is None or (e.published_at is not None) == published)]
        return [copy.deepcopy(e) for e in sorted(rows, key=lambda e: e.created_at, reverse=True)[:limit]]

    def revive(self, event_id: str, now: datetime) -> bool:
        row = self.rows.get(event_id)
        if row is None:
            return False
        row.attempts, row.dead, row.last_error, row.next_attempt_at = 0, False, None, now
        return True


class FakeOutboxUnitOfWork:
    """A unit of work over an in-memory outbox: changes land only on commit(); row locks are
    shared between units of work made from the same store, like concurrent transactions."""

    def __init__(self, store: dict[str, OutboxEvent], locked: set[str]) -> None:
        self.store = store
        self.locked = locked

    def __enter__(self) -> FakeOutboxUnitOfWork:
        self._staged = copy.deepcopy(self.store)
        self.outbox = FakeOutboxRepository(self._staged, self.locked)
        return self

    def __exit__(self, *exc: object) -> None:
        self.locked.difference_update(self.outbox.claimed)

    def commit(self) -> None:
        self.store.clear()
        self.store.update(copy.deepcopy(self._staged))

    def rollback(self) -> None:
        self._staged = copy.deepcopy(self.store)


class FakePublisher:
    """Records deliveries; `down` makes it raise like an unreachable broker, `refuse` names actors
    whose deliveries fail on their own."""

    def __init__(self) -> None:
        self.sent: list[Delivery] = []
        self.notified: list[str] = []
        self.down = False
        self.refuse: set[str] = set()
        self.on_enqueue = None  # called after enqueueing, e.g. to simulate a crash before commit

    def enqueue(self, deliveries) -> dict[str, str]:
        if self.down:
            raise TransientError("connection refused")
        failures = {}
        for d in deliveries:
            if d.actor in self.refuse:
                failures[d.event.id] = f"no actor named {d.actor!r}"
            else:
                self.sent.append(d)
        if self.on_enqueue:
            self.on_enqueue()
        return failures

    def notify(self, events) -> None:
        self.notified.extend(e.id for e in events)


# --- uploads ---
class InMemoryUploadStore(InMemoryObjectStore):
    """The in-memory store with the merge operations; counts what passed through 'the worker'."""

    def __init__(self) -> None:
        super().__init__()
        self.composed: list[tuple[str, list[str]]] = []
        self.streamed: list[str] = []

    def compose(self, key: str, sources, content_type: str = "application/octet-stream") -> None:
        data = b"".join(self.get(s) for s in sources)  # NotFound for a missing source, like S3
        self.objects[validate_key(key)] = (data, content_type)
        self.composed.append((key, list(sources)))

    def read_stream(self, key: str, chunk_size: int = 1 << 20):
        data = self.get(key)
        for i in range(0, len(data), chunk_size):
            yield data[i:i + chunk_size]

    def put_stream(self, key: str, chunks, content_type: str = "application/octet-stream") -> int:
        data = b"".join(chunks)  # an exception from chunks leaves the key as it was
        self.objects[validate_key(key)] = (data, content_type)
        self.streamed.append(key)
        return len(data)


class FakeUploadRepository:
    def __init__(self, rows: dict, chunks: dict) -> None:
        self.rows, self._chunks = rows, chunks

    def add(self, upload) -> None:
        self.rows[upload.id] = copy.deepcopy(upload)

    def get(self, upload_id: str):
        row = self.rows.get(upload_id)
        return copy.deepcopy(row) if row else None

    get_for_update = get

    def save(self, upload) -> None:
        self.rows[upload.id] = copy.deepcopy(upload)

    def chunks(self, upload_id: str) -> list:
        return sorted((c for (u, _), c in self._chunks.items() if u == upload_id), key=lambda c: c.index)

    def put_chunk(self, chunk) -> None:
        self._chunks[(chunk.upload_id, chunk.index)] = chunk

    def delete_chunks(self, upload_id: str) -> int:
        keys = [k for k in self._chunks if k[0] == upload_id]
        for k in keys:
            del self._chunks[k]
        return len(keys)

    def claim_abandoned(self, before, limit: int) -> list:
        rows = sorted((u for u in self.rows.values() if u.status.value == "UPLOADING" and u.updated_at < before),
                      key=lambda u: (u.updated_at, u.id))
        return [copy.deepcopy(u) for u in rows[:limit]]


class UploadState:
    """What is committed: images, uploads, chunks, events. Calling it opens a unit of work."""

    def __init__(self) -> None:
        self.images: dict = {}
        self.uploads: dict = {}
        self.chunks: dict = {}
        self.events: list[DomainEvent] = []
        self.commits = 0

    def __call__(self) -> FakeUploadUnitOfWork:
        return FakeUploadUnitOfWork(self)


class FakeUploadUnitOfWork:
    """Writes land in the UploadState only on commit(), like a real transaction."""

    def __init__(self, state: UploadState) -> None:
        self.state = state

    def __enter__(self) -> FakeUploadUnitOfWork:
        self.rollback()
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def add_event(self, event: DomainEvent) -> None:
        self._events.append(event)

    def commit(self) -> None:
        st = self.state
        st.images, st.uploads, st.chunks = (copy.deepcopy(self._images), copy.deepcopy(self._uploads),
                                            dict(self._chunks))
        st.events.extend(self._events)
        st.commits += 1
        self._events = []

    def rollback(self) -> None:
        st = self.state
        self._images, self._uploads, self._chunks = (copy.deepcopy(st.images), copy.deepcopy(st.uploads),
                                                     dict(st.chunks))
        self._events: list[DomainEvent] = []
        self.images = FakeImageRepository(self._images)
        self.uploads = FakeUploadRepository(self._uploads, self._chunks)


# --- messaging ---
import threading  # noqa: E402

from domain.models import MessageStatus, OutboundMessage, SendReceipt  # noqa: E402


class FakeMessageRepository:
    def __init__(self, rows: dict[str, OutboundMessage]) -> None:
        self.rows = rows

    def add(self, message: OutboundMessage) -> bool:
        if message.id in self.rows:
            return False
        self.rows[message.id] = copy.deepcopy(message)
        return True

    def get(self, message_id: str) -> OutboundMessage | None:
        row = self.rows.get(message_id)
        return copy.deepcopy(row) if row else None

    get_for_update = get

    def save(self, message: OutboundMessage) -> None:
        self.rows[message.id] = copy.deepcopy(message)

    def find_by_provider_id(self, channel: str, provider_message_id: str) -> str | None:
        return next((m.id for m in self.rows.values() for d in m.deliveries
                     if d.channel.value == channel and d.provider_message_id == provider_message_id), None)

    def stale_deliveries(self, *, now, idle_before, unknown_before, limit: int) -> list:  # type: ignore[no-untyped-def]
        found = [d for m in self.rows.values() for d in m.deliveries
                 if d.status is MessageStatus.PENDING
                 and ((d.sending_until is None and d.updated_at < idle_before)
                      or (d.sending_until is not None and d.sending_until <= now and d.updated_at < unknown_before))]
        return [(d.message_id, d.channel) for d in sorted(found, key=lambda d: d.updated_at)[:limit]]

    def touch_deliveries(self, keys, now) -> None:  # type: ignore[no-untyped-def]
        for message_id, channel in keys:
            self.rows[message_id].delivery(channel).updated_at = now


class FakeMessagingUnitOfWork:
    """Messages and events land in the shared dicts only on commit(), like a real transaction.
    Transactions on one store run one at a time (as SQLite's BEGIN IMMEDIATE does), so units of
    work used from several threads never lose each other's updates."""

    _locks: dict[int, threading.RLock] = {}

    def __init__(self, committed: dict[str, OutboundMessage], events: list[DomainEvent]) -> None:
        self.committed = committed
        self.events = events
        self._lock = self._locks.setdefault(id(committed), threading.RLock())

    def __enter__(self) -> FakeMessagingUnitOfWork:
        self._lock.acquire()
        self._staged = copy.deepcopy(self.committed)
        self._staged_events: list[DomainEvent] = []
        self.messages = FakeMessageRepository(self._staged)
        return self

    def add_event(self, event: DomainEvent) -> None:
        self._staged_events.append(event)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def commit(self) -> None:
        self.committed.clear()
        self.committed.update(copy.deepcopy(self._staged))
        self.events.extend(self._staged_events)
        self._staged_events = []

    def rollback(self) -> None:
        self._staged = copy.deepcopy(self.committed)
        self._staged_events = []


class FakeChannelGateway:
    """Records sends; ``fail_with`` is raised by the next sends (an exception or a list of them)."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.sent: list[tuple[str, str]] = []  # (message id, idempotency key)
        self.fail_with: list[Exception] = []
        self.during_send = None  # called inside send(), e.g. to run a competing delivery

    def send(self, message: OutboundMessage, idempotency_key: str) -> SendReceipt:
        if self.during_send is not None:
            hook, self.during_send = self.during_send, None
            hook()
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.sent.append((message.id, idempotency_key))
        return SendReceipt(f"{self.name}-{len(self.sent)}")


# --- middleware ---
class FakeDeadLetterStore:
    """DeadLetterStore in a dict; ``down`` makes every write fail like an unreachable database."""

    def __init__(self) -> None:
        from domain.resilience import DeadLetter

        self.letters: dict[str, DeadLetter] = {}
        self.down = False
        self.failed_writes = 0

    def add(self, letter) -> bool:  # type: ignore[no-untyped-def]
        if self.down:
            self.failed_writes += 1
            raise ConnectionError("database unreachable")
        if any(x.message_id == letter.message_id and x.attempts == letter.attempts for x in self.letters.values()):
            return False
        self.letters[letter.id] = copy.deepcopy(letter)
        return True

    def get(self, letter_id: str):  # type: ignore[no-untyped-def]
        return copy.deepcopy(self.letters.get(letter_id))

    def list(self, *, actor=None, older_than=None, newer_than=None, replayed=None, limit=100):  # type: ignore[no-untyped-def]
        out = [x for x in self.letters.values()
               if (actor is None or x.actor == actor) and (older_than is None or x.failed_at < older_than)
               and (newer_than is None or x.failed_at >= newer_than)
               and (replayed is None or (x.replayed_at is not None) == replayed)]
        return sorted(out, key=lambda x: x.failed_at, reverse=True)[:limit]

    def mark_replayed(self, letter_id: str, at: datetime, message_id: str) -> None:
        self.letters[letter_id].replayed_at = at
        self.letters[letter_id].replay_message_id = message_id

    def delete(self, letter_ids: Sequence[str]) -> int:
        return sum(self.letters.pop(i, None) is not None for i in letter_ids)

    def count(self, *, replayed=None) -> int:  # type: ignore[no-untyped-def]
        return len(self.list(replayed=replayed, limit=10**9))
# --- media: embeddings and search ---
class FakeEmbedder:
    """Deterministic unit vectors from the bytes' hash; b'bad' is refused like an undecodable file.
    Texts embed like the bytes of the same string, so search_text('x') finds an image made of b'x'."""

    model_id = "fake-clip"

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.images: list[bytes] = []
        self.down = False

    def _vector(self, data: bytes) -> list[float]:
        import hashlib
        import math

        digest = hashlib.sha256(data).digest()
        raw = [b - 127.5 for b in digest[: self.dim]]
        norm = math.sqrt(sum(v * v for v in raw))
        return [v / norm for v in raw]

    def embed_image(self, data: bytes) -> list[float]:
        from domain.errors import ModelUnavailable

        if self.down:
            raise ModelUnavailable("no weights")
        if data == b"bad":
            raise InvalidImage("not an image")
        self.images.append(data)
        return self._vector(data)

    def embed_text(self, text: str) -> list[float]:
        return self._vector(text.encode())


class InMemoryVectorIndex:
    """Cosine search over a dict of points (vectors are unit length, so a dot product)."""

    def __init__(self) -> None:
        self.points: dict[str, tuple[list[float], dict]] = {}
        self.upserts = 0

    def upsert(self, point_id: str, vector, payload: dict) -> None:
        self.points[point_id] = (list(vector), dict(payload))
        self.upserts += 1

    def search(self, vector, limit: int, *, owner=None):
        from domain.models import SearchHit

        hits = [SearchHit(p["image_id"], sum(a * b for a, b in zip(v, vector, strict=True)), p)
                for v, p in self.points.values() if owner is None or p.get("owner") == owner]
        return sorted(hits, key=lambda h: h.score, reverse=True)[:limit]

    def get_vector(self, point_id: str):
        point = self.points.get(point_id)
        return list(point[0]) if point else None

    def ping(self) -> None:
        pass
