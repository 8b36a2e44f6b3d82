"""Embedding and search use cases: CLIP vectors of READY images in a vector index, searched
by text or by example image.

An image is embedded from its largest thumbnail (never from the original: decoding a
12-megapixel JPEG costs more than the model), so an image that failed processing never
reaches the embedder. The point id is derived from the image id and upserted: embedding an
image again replaces its point, it never adds a second one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from domain.errors import InvalidPayload, NotFound, PermanentError, TransientError
from domain.models import Image, ImageStatus, SearchHit
from domain.ports import ImageEmbedder, ObjectStore, UnitOfWork, VectorIndex

log = logging.getLogger(__name__)

# Fixed namespace: the same image id gives the same point id in every process and release.
POINT_NAMESPACE = uuid.UUID("6f6c1a52-7b1e-4d3c-9a39-5d0f2f0e8a11")
MAX_LIMIT = 1000
MAX_QUERY_CHARS = 1000


def point_id(image_id: str) -> str:
    """The vector index's id for an image: uuid5 of the image id."""
    return str(uuid.uuid5(POINT_NAMESPACE, image_id))


class NotEmbeddable(PermanentError):
    """The image cannot be embedded and waiting will not change that (it failed processing)."""


class NotReadyYet(TransientError):
    """The image's thumbnails are not rendered yet; retrying later succeeds."""


class EmbeddingService:
    def __init__(self, uow: Callable[[], UnitOfWork], store: ObjectStore, embedder: ImageEmbedder,
                 index: VectorIndex) -> None:
        self._uow = uow
        self._store = store
        self._embedder = embedder
        self._index = index

    def embed_image(self, image_id: str) -> str:
        """Embed a READY image from its largest thumbnail and upsert it; returns the point id."""
        with self._uow() as uow:
            image = uow.images.get(image_id)
        if image is None:
            raise NotFound(f"image {image_id} does not exist")
        if image.status is ImageStatus.FAILED:
            raise NotEmbeddable(f"image {image_id} failed processing, nothing to embed: {image.failure_reason}")
        if image.status is not ImageStatus.READY:
            raise NotReadyYet(f"image {image_id} is {image.status.value}: thumbnails come first")
        if not image.thumbnails:
            raise NotEmbeddable(f"image {image_id} is READY without thumbnails")
        source = max(image.thumbnails, key=lambda t: t.size)
        vector = self._embedder.embed_image(self._store.get(source.key))
        pid = point_id(image.id)
        self._index.upsert(pid, vector, self._payload(image))
        log.info("image embedded", extra={"point_id": pid, "from": source.key})
        return pid

    def _payload(self, image: Image) -> dict[str, object]:
        return {
            "image_id": image.id,
            "owner": image.owner,
            "content_type": image.content_type,
            "created_at": image.created_at.isoformat(),
            "model": self._embedder.model_id,
        }

    def search_text(self, query: str, limit: int = 10, *, owner: str | None = None) -> list[SearchHit]:
        """Images closest to a text, best first."""
        query = query.strip()
        if not query:
            raise InvalidPayload("the search text is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidPayload(f"the search text is longer than {MAX_QUERY_CHARS} characters")
        return self._index.search(self._embedder.embed_text(query), _limit(limit), owner=owner)

    def search_image(self, data: bytes, limit: int = 10, *, owner: str | None = None) -> list[SearchHit]:
        """Images closest to an example image given as bytes (decoded at reduced scale)."""
        return self._index.search(self._embedder.embed_image(data), _limit(limit), owner=owner)

    def search_similar(self, image_id: str, limit: int = 10, *, owner: str | None = None) -> list[SearchHit]:
        """Images closest to an already embedded image (itself first), from its stored vector."""
        vector = self._index.get_vector(point_id(image_id))
        if vector is None:
            raise NotFound(f"image {image_id} has no embedding (not READY, or not embedded yet)")
        return self._index.search(vector, _limit(limit), owner=owner)

    def reindex_candidates(self, *, owner: str | None = None, created_from: datetime | None = None,
                           created_to: datetime | None = None, limit: int | None = None) -> list[str]:
        """Ids of the READY images to embed again, oldest first, optionally filtered."""
        with self._uow() as uow:
            return uow.images.list_ids(ImageStatus.READY, limit, owner=owner, created_from=created_from,
                                       created_to=created_to)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidPayload(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit
