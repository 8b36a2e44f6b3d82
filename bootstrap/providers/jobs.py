"""Job records and worker heartbeats (the Jobs middleware's store), and the service over them."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bootstrap.settings import Settings


class JobsProviders:
    settings: Settings
    redis: Any

    @cached_property
    def job_store(self):  # type: ignore[no-untyped-def]
        """Redis when there is one (every process sees the records), else this process's memory."""
        from adapters.state.jobs import InMemoryJobStore, RedisJobStore

        retention = self.settings.jobs_retention_s
        if self.redis is not None:
            return RedisJobStore(self.redis, f"atelier:{self.settings.queue_prefix}jobs:", retention_s=retention)
        return InMemoryJobStore(retention_s=retention)

    @cached_property
    def jobs(self):  # type: ignore[no-untyped-def]
        from domain.services.jobs import JobService

        return JobService(self.job_store, heartbeat_s=self.settings.jobs_heartbeat_s)
