"""In-memory fakes of the domain's ports, for unit tests of the domain only."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

from domain.errors import InvalidImage, NotFound
from domain.keys import validate_key
from domain.models import DomainEvent, Image, RenderedImage, RenderedThumbnail


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
