"""Media: image decoding, the image repository, CLIP embeddings and the vector index."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from domain.models import Image, ImageStatus, RenderedImage, SearchHit


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
