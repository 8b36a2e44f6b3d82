"""Media use cases: register an original, render and record its thumbnails.

The service owns the status machine PENDING -> PROCESSING -> READY | FAILED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from domain.clock import SystemClock
from domain.errors import InvalidImage, NotFound
from domain.keys import validate_key
from domain.models import DomainEvent, Image, ImageStatus, Thumbnail, new_id
from domain.ports import Clock, ImageProcessor, ObjectStore, UnitOfWork

log = logging.getLogger(__name__)

ORIGINALS_PREFIX = "originals"
THUMBNAILS_PREFIX = "thumbnails"


@dataclass(frozen=True)
class ThumbnailSpec:
    sizes: tuple[int, ...] = (128, 256, 512)
    format: str = "webp"
    quality: int = 80


def original_key(image_id: str) -> str:
    return validate_key(f"{ORIGINALS_PREFIX}/{image_id}")


def thumbnail_key(image_id: str, size: int, fmt: str) -> str:
    """Stable key: the same image, size and format always land on the same object."""
    ext = "jpg" if fmt == "jpeg" else fmt
    return validate_key(f"{THUMBNAILS_PREFIX}/{image_id}/{size}.{ext}")


class MediaService:
    def __init__(
        self,
        uow: Callable[[], UnitOfWork],
        store: ObjectStore,
        imaging: ImageProcessor,
        spec: ThumbnailSpec = ThumbnailSpec(),
        clock: Clock | None = None,
    ) -> None:
        self._uow = uow
        self._store = store
        self._imaging = imaging
        self._spec = spec
        self._clock = clock or SystemClock()

    def register_image(
        self, data: bytes, content_type: str | None = None, owner: str | None = None
    ) -> Image:
        """Store an original and record it PENDING with its ``image.uploaded`` event, in one
        transaction: the outbox routes the event to process_image (bootstrap/routing.py), so
        registering is all a producer does."""
        image_id = new_id()
        key = original_key(image_id)
        self._store.put(key, data, content_type or "application/octet-stream")
        now = self._clock.now()
        image = Image(
            id=image_id, original_key=key, content_type=content_type, owner=owner,
            created_at=now, updated_at=now,
        )
        with self._uow() as uow:
            uow.images.add(image)
            uow.add_event(DomainEvent("image.uploaded", "image", image.id,
                                      {"image_id": image.id, "owner": owner, "content_type": content_type}))
            uow.commit()
        return image

    def get_image(self, image_id: str) -> Image:
        with self._uow() as uow:
            image = uow.images.get(image_id)
        if image is None:
            raise NotFound(f"image {image_id} does not exist")
        return image

    def process_image(self, image_id: str) -> Image:
        """Render and record thumbnails. Safe to run again: a READY image is left as it is."""
        with self._uow() as uow:
            image = uow.images.get_for_update(image_id)
            if image is None:
                raise NotFound(f"image {image_id} does not exist")
            if image.status in (ImageStatus.READY, ImageStatus.FAILED):
                log.info("image already %s, nothing to do", image.status.value)
                return image
            image.start_processing(self._clock.now())
            uow.images.save(image)
            uow.commit()

        try:
            data = self._store.get(image.original_key)
        except NotFound as exc:
            self._fail(image_id, f"original missing: {exc}")
            raise
        try:
            rendered = self._imaging.render(data, self._spec.sizes, self._spec.format, self._spec.quality)
        except InvalidImage as exc:
            self._fail(image_id, str(exc))
            raise

        thumbnails = []
        for thumb in rendered.thumbnails:
            key = thumbnail_key(image_id, thumb.size, thumb.format)
            self._store.put(key, thumb.data, thumb.content_type)
            thumbnails.append(
                Thumbnail(thumb.size, key, thumb.width, thumb.height, thumb.format, len(thumb.data))
            )

        with self._uow() as uow:
            image = uow.images.get_for_update(image_id)
            if image is None:
                raise NotFound(f"image {image_id} vanished while processing")
            if image.status is ImageStatus.READY:
                return image  # a concurrent run finished first; its objects are the same
            image.mark_ready(thumbnails, rendered.metadata, self._clock.now())
            uow.images.save(image)
            uow.add_event(DomainEvent("image.processed", "image", image.id, {
                "image_id": image.id, "status": image.status.value, "owner": image.owner,
                "content_type": image.content_type,
            }))
            uow.commit()
        log.info("image ready", extra={"thumbnails": len(thumbnails)})
        return image

    def _fail(self, image_id: str, reason: str) -> None:
        with self._uow() as uow:
            image = uow.images.get_for_update(image_id)
            if image is None or image.status is ImageStatus.READY:
                return
            image.mark_failed(reason, self._clock.now())
            uow.images.save(image)
            uow.add_event(DomainEvent("image.failed", "image", image.id,
                                      {"image_id": image.id, "reason": image.failure_reason}))
            uow.commit()
