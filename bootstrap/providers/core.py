"""What every capability uses: the database of record, the object store, Redis."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from bootstrap.providers import built
from domain.ports import ObjectStore

if TYPE_CHECKING:
    from adapters.health import Check
    from bootstrap.settings import Settings


class CoreProviders:
    settings: Settings

    @cached_property
    def engine(self):  # type: ignore[no-untyped-def]
        from adapters.sql.engine import make_engine

        return make_engine(self.settings.database_url)

    @cached_property
    def uow(self):  # type: ignore[no-untyped-def]
        from adapters.sql.uow import uow_factory
        from bootstrap.tracing import current_trace_context
        from runtime import current_correlation_id

        # Events inherit the running message's correlation id (or the producer's correlation_scope),
        # and the trace context of the current span, with which the relay sends them.
        return uow_factory(self.engine, current_correlation_id, current_trace_context)

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
    def redis(self):  # type: ignore[no-untyped-def]
        """Redis for shared state and pub/sub (REDIS_URL, or the broker's Redis); None without one."""
        if not self.settings.redis_url:
            return None
        import redis

        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)

    def _shared_state(self, redis_cls: Any, memory_cls: Any, name: str) -> Any:
        """Redis when there is one (shared by every worker, keys under atelier:<QUEUE_PREFIX><name>:),
        else this process's memory."""
        if self.redis is not None:
            return redis_cls(self.redis, f"atelier:{self.settings.queue_prefix}{name}:")
        return memory_cls()

    def capability_checks(self) -> list[Check]:
        from adapters.health import Check, broker_check, redis_check, sql_check

        s = self.settings
        timeout = s.ops_check_timeout_s
        checks = [broker_check(s.broker_url, timeout), sql_check(self.engine)]
        if s.redis_url:
            checks.append(redis_check("redis", s.redis_url, timeout))
        checks.append(Check("object_store", self.store.ping))
        return checks

    def capability_close(self) -> None:
        if built(self, "engine") is not None:
            self.engine.dispose()
        if built(self, "redis") is not None:
            self.redis.close()
