"""Media: thumbnails and metadata, CLIP embeddings, the vector index and search."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from bootstrap.providers import built
from domain.services.embeddings import EmbeddingService
from domain.services.media import MediaService, ThumbnailSpec

if TYPE_CHECKING:
    from adapters.health import Check
    from bootstrap.settings import Settings


class MediaProviders:
    settings: Settings
    uow: Any
    store: Any

    @cached_property
    def imaging(self):  # type: ignore[no-untyped-def]
        from adapters.imaging import PillowImageProcessor

        return PillowImageProcessor(self.settings.max_image_pixels, include_gps=self.settings.metadata_include_gps)

    @cached_property
    def media(self) -> MediaService:
        s = self.settings
        spec = ThumbnailSpec(s.thumbnail_sizes, s.thumbnail_format, s.thumbnail_quality)
        return MediaService(self.uow, self.store, self.imaging, spec)

    @cached_property
    def vector_index(self):  # type: ignore[no-untyped-def]
        from adapters.vector_index import QdrantIndex

        s = self.settings
        if s.qdrant_url:
            return QdrantIndex(s.qdrant_collection, url=s.qdrant_url, api_key=s.qdrant_api_key,
                               timeout=s.qdrant_timeout_s)
        return QdrantIndex(s.qdrant_collection, path=s.qdrant_path, timeout=s.qdrant_timeout_s)

    @cached_property
    def embedder(self):  # type: ignore[no-untyped-def]
        """The CLIP embedder; building it loads nothing (the model loads on the first embedding)."""
        from adapters.clip import ClipEmbedder, load_clip

        s = self.settings

        def loader():  # type: ignore[no-untyped-def]
            return load_clip(s.clip_model, s.clip_pretrained, pretrained_tag=s.clip_pretrained_tag,
                             device=s.clip_device, model_config=s.clip_model_config,
                             torch_threads=s.clip_torch_threads)

        imaging = self.imaging
        weights = s.clip_pretrained_tag or s.clip_pretrained.replace("\\", "/").rsplit("/", 1)[-1]
        return ClipEmbedder(loader, lambda data, side: imaging.decode(data, longest_side=side)[0],
                            model_id=f"{s.clip_model}/{weights}",
                            max_batch_size=s.embed_batch_max_size, max_wait=s.embed_batch_max_wait_ms / 1000)

    @cached_property
    def embeddings(self) -> EmbeddingService:
        return EmbeddingService(self.uow, self.store, self.embedder, self.vector_index)

    def capability_checks(self) -> list[Check]:
        from adapters.health import Check

        return [Check("vector_index", self.vector_index.ping)]

    def capability_close(self) -> None:
        if built(self, "vector_index") is not None:
            self.vector_index.close()
