"""The composition root: the one place that knows which adapter serves which port.

Services are built lazily, once per process, on first use; importing this module
connects to nothing.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING

from adapters.health import Check
from bootstrap.settings import Settings, get_settings
from domain.ports import MetricsStore, ObjectStore
from domain.services.embeddings import EmbeddingService
from domain.services.media import MediaService, ThumbnailSpec
from domain.services.messaging import MessagingService
from domain.services.outbox import OutboxRelay
from domain.services.uploads import UploadPolicy, UploadService

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
        from adapters.sql.uow import uow_factory
        from runtime import current_correlation_id

        # Events inherit the running message's correlation id (or the producer's correlation_scope).
        return uow_factory(self.engine, current_correlation_id)

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
        from adapters.metrics import InMemoryMetricsStore, RedisMetricsStore

        return self._shared_state(RedisMetricsStore, InMemoryMetricsStore, "metrics")

    @cached_property
    def metrics(self) -> list[MetricSpec]:
        """Figures /metrics reads at scrape time, besides Dramatiq's counters; add one line each."""
        from adapters.metrics import MetricSpec, store_counter
        from adapters.sql.stats import outbox_backlog, pending_deliveries
        from domain.services.uploads import COLLECTED_METRIC

        return [
            MetricSpec("atelier_outbox_pending_events", "gauge", "Outbox events not yet published.",
                       lambda: outbox_backlog(self.engine)[0]),
            MetricSpec("atelier_outbox_dead_events", "gauge", "Outbox events given up on.",
                       lambda: outbox_backlog(self.engine)[1]),
            # --- uploads ---
            store_counter(self.metrics_store, COLLECTED_METRIC,
                          "Abandoned uploads collected (chunks deleted, status FAILED)."),
            # --- messaging ---
            MetricSpec("atelier_message_deliveries_pending", "gauge", "Chat message deliveries not sent yet.",
                       lambda: pending_deliveries(self.engine), ("channel",)),
            # --- middleware ---
            *self.middleware_metrics(),
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
        from adapters.outbox_publisher import DramatiqPublisher, events_channel
        from bootstrap.broker import get_broker

        s = self.settings
        return DramatiqPublisher(get_broker(), self.redis, channel=events_channel(s.queue_prefix),
                                 dedup_window=s.outbox_dedup_window)

    @cached_property
    def outbox_relay(self) -> OutboxRelay:
        from bootstrap.routing import ROUTES

        s = self.settings
        return OutboxRelay(self.uow, self.outbox_publisher, ROUTES, batch_size=s.outbox_batch_size,
                           max_retries=s.outbox_max_retries, backoff_ms=s.outbox_backoff_ms)

    # --- uploads ---
    @cached_property
    def uploads(self) -> UploadService:
        from datetime import timedelta

        s = self.settings
        policy = UploadPolicy(url_expiry_s=s.upload_url_expiry_s, retention=timedelta(hours=s.gc_retention_hours),
                              gc_batch_size=s.gc_batch_size)
        return UploadService(self.uow, self.store, policy, metrics=self.metrics_store)
    # --- messaging ---
    @cached_property
    def channel_gateways(self):  # type: ignore[no-untyped-def]
        """One ChannelGateway per concrete channel (HTTP to WhatsApp Cloud API and Instagram)."""
        from adapters.channels.http import InstagramGateway, WhatsAppGateway
        from domain.models import MessageChannel

        s = self.settings
        return {
            MessageChannel.WHATSAPP: WhatsAppGateway(s.whatsapp_base_url, s.whatsapp_token, s.whatsapp_phone_number_id,
                                                     timeout=s.channel_timeout_s),
            MessageChannel.INSTAGRAM: InstagramGateway(s.instagram_base_url, s.instagram_token,
                                                       timeout=s.channel_timeout_s),
        }

    @cached_property
    def messaging(self) -> MessagingService:
        return MessagingService(self.uow, self.channel_gateways, lease_seconds=self.settings.message_send_lease_s)

    # --- middleware ---
    def _shared_state(self, redis_cls, memory_cls, name: str):  # type: ignore[no-untyped-def]
        """Redis when there is one (shared by every worker, keys under atelier:<QUEUE_PREFIX><name>:),
        else this process's memory."""
        if self.redis is not None:
            return redis_cls(self.redis, f"atelier:{self.settings.queue_prefix}{name}:")
        return memory_cls()

    @cached_property
    def dedup_store(self):  # type: ignore[no-untyped-def]
        from adapters.state.memory import InMemoryDedupStore
        from adapters.state.redis import RedisDedupStore

        return self._shared_state(RedisDedupStore, InMemoryDedupStore, "dedup")

    @cached_property
    def breaker_store(self):  # type: ignore[no-untyped-def]
        from adapters.state.memory import InMemoryBreakerStore
        from adapters.state.redis import RedisBreakerStore

        return self._shared_state(RedisBreakerStore, InMemoryBreakerStore, "circuit")

    @cached_property
    def fallback_queue(self):  # type: ignore[no-untyped-def]
        from adapters.state.memory import InMemoryFallbackQueue
        from adapters.state.redis import RedisFallbackQueue

        return self._shared_state(RedisFallbackQueue, InMemoryFallbackQueue, "fallback")

    @cached_property
    def dead_letter_store(self):  # type: ignore[no-untyped-def]
        from adapters.sql.deadletters import SqlDeadLetterStore

        return SqlDeadLetterStore(self.engine)

    @cached_property
    def message_sender(self):  # type: ignore[no-untyped-def]
        from adapters.sender import BrokerSender
        from bootstrap.broker import get_broker

        return BrokerSender(get_broker())

    @cached_property
    def dead_letters(self):  # type: ignore[no-untyped-def]
        from domain.clock import SystemClock
        from domain.services.deadletters import DeadLetterService

        return DeadLetterService(self.dead_letter_store, self.message_sender, SystemClock(),
                                 replay_dedup_window=self.settings.dlq_replay_dedup_window)

    @cached_property
    def fallback_drainer(self):  # type: ignore[no-untyped-def]
        from domain.services.fallback import FallbackDrainer

        s = self.settings
        return FallbackDrainer(self.fallback_queue, self.breaker_store, self.message_sender,
                               policy=s.breaker_policy, batch_size=s.fallback_batch_size)

    def middleware_metrics(self) -> list[MetricSpec]:
        """Dead letters, dedup skips, breaker states and fallback queue lengths for /metrics."""
        from adapters.metrics import MetricSpec, store_counter
        from middleware.circuit import CIRCUIT_PARKED, CIRCUIT_TRANSITIONS
        from middleware.deadletters import DEAD_LETTER_WRITE_FAILURES, DEAD_LETTERS
        from middleware.dedup import DEDUP_SKIPS

        store = self.metrics_store
        return [
            store_counter(store, DEAD_LETTERS, "Messages written to the dead-letter store.",
                          ("queue_name", "actor_name", "reason")),
            store_counter(store, DEAD_LETTER_WRITE_FAILURES,
                          "Dead-letter writes that failed; the message was put back to try again.",
                          ("queue_name", "actor_name")),
            MetricSpec("atelier_dead_letters", "gauge", "Dead letters stored and not replayed.",
                       lambda: self.dead_letter_store.count(replayed=False)),
            store_counter(store, DEDUP_SKIPS, "Messages skipped as duplicates (done within the window, or busy).",
                          ("queue_name", "actor_name", "reason")),
            MetricSpec("atelier_circuit_state", "gauge", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                       lambda: {(name, ): state.gauge for name, state in self.breaker_store.states().items()},
                       ("circuit",)),
            store_counter(store, CIRCUIT_TRANSITIONS, "Circuit breaker state changes, by state entered.",
                          ("circuit", "state")),
            store_counter(store, CIRCUIT_PARKED, "Messages parked while their circuit was open.", ("circuit", "how")),
            MetricSpec("atelier_fallback_queue_length", "gauge", "Messages parked in each circuit's fallback queue.",
                       lambda: {(name, ): n for name, n in self.fallback_queue.lengths().items()}, ("circuit",)),
        ]
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
        for gateway in (self.__dict__.get("channel_gateways") or {}).values():  # --- messaging ---
            gateway.close()


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
