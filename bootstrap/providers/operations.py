"""Operations: the shared metrics store, and what /metrics and /readyz collect from every capability."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from domain.ports import MetricsStore

if TYPE_CHECKING:
    from adapters.health import Check
    from adapters.metrics import MetricSpec


class OperationsProviders:
    _shared_state: Any

    @cached_property
    def metrics_store(self) -> MetricsStore:
        """Shared counters: Redis when there is one (figures add up across processes), else memory."""
        from adapters.metrics import InMemoryMetricsStore, RedisMetricsStore

        return self._shared_state(RedisMetricsStore, InMemoryMetricsStore, "metrics")

    def _collect(self, hook: str) -> list[Any]:
        found: list[Any] = []
        for cls in type(self).__mro__:
            method = cls.__dict__.get(hook)
            if method is not None:
                found.extend(method(self))
        return found

    @cached_property
    def metrics(self) -> list[MetricSpec]:
        """Figures /metrics reads at scrape time, besides Dramatiq's counters: every capability's."""
        return self._collect("capability_metrics")

    @cached_property
    def readiness_checks(self) -> list[Check]:
        """Dependencies /readyz checks, each within OPS_CHECK_TIMEOUT_S: every capability's."""
        return self._collect("capability_checks")

    def close(self) -> None:
        for cls in type(self).__mro__:
            method = cls.__dict__.get("capability_close")
            if method is not None:
                method(self)
