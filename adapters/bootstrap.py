"""The composition root: the one place that knows which adapter serves which port.

Services are built lazily, once per process, on first use; importing this module
connects to nothing.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING

from adapters.health import Check
from adapters.settings import Settings, get_settings
from domain.ports import MetricsStore, ObjectStore
from domain.services.embeddings import EmbeddingService
from domain.services.media import MediaService, ThumbnailSpec
from domain.services.outbox import OutboxRelay

if TYPE_CHECKING:
    from adapters.metrics import MetricSpec


class Container:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def engine(self):  # type: ignore[no-untyped-def]
        from adapters.sql.engine import make_engine

        return make_engine(self.settings.database_url)

    @cached_property
    def uow(self):  # type: ignore[no-untyped-def]
        import structlog

        from adapters.sql.uow import uow_factory

        # Events inherit the correlation id the middleware bound for the running message.
        return uow_factory(self.engine, lambda: structlog.contextvars.get_contextvars().get("correlation_id"))

    @cached_property
    def store(self) -> ObjectStore:
        s = self.settings
        if s.minio_endpoint:
            from adapters.objectstore.minio import MinioObjectStore, make_client

            client = make_client(s.minio_endpoint, s.minio_access_key, s.minio_secret_key,
                                 secure=s.minio_secure, region=s.minio_region)
            return MinioObjectStore(client, s.minio_bucket)
        from adapters.objectstore.local import LocalObjectStore

        return LocalObjectStore(s.local_store_dir)

    @cached_property
    def imaging(self):  # type: ignore[no-untyped-def]
        from adapters.imaging import PillowImageProcessor

        return PillowImageProcessor(self.settings.max_image_pixels, include_gps=self.settings.metadata_include_gps)

    @cached_property
    def media(self) -> MediaService:
        s = self.settings
        spec = ThumbnailSpec(s.thumbnail_sizes, s.thumbnail_format, s.thumbnail_quality)
        return MediaService(self.uow, self.store, self.imaging, spec)

    # --- operations ---
    @cached_property
    def metrics_store(self) -> MetricsStore:
        """Shared counters: Redis when there is one (figures add up across processes), else memory."""
        if self.redis is not None:
            from adapters.metrics import RedisMetricsStore

            return RedisMetricsStore(self.redis, f"atelier:{self.settings.queue_prefix}metrics:")
        from adapters.metrics import InMemoryMetricsStore

        return InMemoryMetricsStore()

    @cached_property
    def metrics(self) -> list[MetricSpec]:
        """Figures /metrics reads at scrape time, besides Dramatiq's counters; add one line each."""
        from adapters.metrics import MetricSpec
        from adapters.sql.stats import outbox_backlog

        return [
            MetricSpec("atelier_outbox_pending_events", "gauge", "Outbox events not yet published.",
                       lambda: outbox_backlog(self.engine)[0]),
            MetricSpec("atelier_outbox_dead_events", "gauge", "Outbox events given up on.",
                       lambda: outbox_backlog(self.engine)[1]),
        ]

    @cached_property
    def readiness_checks(self) -> list[Check]:
        """Dependencies /readyz checks, each within OPS_CHECK_TIMEOUT_S; add one line each."""
        from adapters.health import broker_check, redis_check, sql_check

        s = self.settings
        timeout = s.ops_check_timeout_s
        checks = [broker_check(s.broker_url, timeout), sql_check(self.engine)]
        if s.redis_url:
            checks.append(redis_check("redis", s.redis_url, timeout))
        checks.append(Check("object_store", self.store.ping))
        checks.append(Check("vector_index", self.vector_index.ping))
        return checks

    @cached_property
    def redis(self):  # type: ignore[no-untyped-def]
        """Redis for shared state and pub/sub (REDIS_URL, or the broker's Redis); None without one."""
        if not self.settings.redis_url:
            return None
        import redis

        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)

    @cached_property
    def outbox_publisher(self):  # type: ignore[no-untyped-def]
        import actors
        from adapters.outbox_publisher import DramatiqPublisher, events_channel

        s = self.settings
        return DramatiqPublisher(actors.broker, self.redis, channel=events_channel(s.queue_prefix),
                                 dedup_window=s.outbox_dedup_window)

    @cached_property
    def outbox_relay(self) -> OutboxRelay:
        from actors.routing import ROUTES

        s = self.settings
        return OutboxRelay(self.uow, self.outbox_publisher, ROUTES, batch_size=s.outbox_batch_size,
                           max_retries=s.outbox_max_retries, backoff_ms=s.outbox_backoff_ms)

    # --- media: embeddings and search ---
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

    def close(self) -> None:
        if "vector_index" in self.__dict__:
            self.vector_index.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
        if self.__dict__.get("redis") is not None:
            self.redis.close()


_lock = threading.Lock()
_container: Container | None = None


def get_container() -> Container:
    global _container
    if _container is None:
        with _lock:
            if _container is None:
                _container = Container(get_settings())
    return _container


def set_container(container: Container | None) -> None:
    """Swap the process-wide container (tests, the embedded demo)."""
    global _container
    with _lock:
        _container = container
