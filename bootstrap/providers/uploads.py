"""Chunked uploads: merging and collecting abandoned ones."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from domain.services.uploads import UploadPolicy, UploadService

if TYPE_CHECKING:
    from adapters.metrics import MetricSpec
    from bootstrap.settings import Settings


class UploadProviders:
    settings: Settings
    uow: Any
    store: Any
    metrics_store: Any

    @cached_property
    def uploads(self) -> UploadService:
        from datetime import timedelta

        s = self.settings
        policy = UploadPolicy(url_expiry_s=s.upload_url_expiry_s, retention=timedelta(hours=s.gc_retention_hours),
                              gc_batch_size=s.gc_batch_size)
        return UploadService(self.uow, self.store, policy, metrics=self.metrics_store)

    def capability_metrics(self) -> list[MetricSpec]:
        from adapters.metrics import store_counter
        from domain.services.uploads import COLLECTED_METRIC

        return [store_counter(self.metrics_store, COLLECTED_METRIC,
                              "Abandoned uploads collected (chunks deleted, status FAILED).")]
