"""The transactional outbox: the publisher and the relay, with the routing table."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from domain.services.outbox import OutboxRelay

if TYPE_CHECKING:
    from adapters.metrics import MetricSpec
    from bootstrap.settings import Settings


class OutboxProviders:
    settings: Settings
    uow: Any
    redis: Any
    engine: Any

    @cached_property
    def outbox_publisher(self):  # type: ignore[no-untyped-def]
        from adapters.outbox_publisher import DramatiqPublisher, events_channel
        from bootstrap.broker import get_broker
        from bootstrap.tracing import tracer_provider

        s = self.settings
        return DramatiqPublisher(get_broker(), self.redis, channel=events_channel(s.queue_prefix),
                                 dedup_window=s.outbox_dedup_window, tracer_provider=tracer_provider(),
                                 messaging_system=s.broker_kind)

    @cached_property
    def outbox_relay(self) -> OutboxRelay:
        from bootstrap.routing import ANNOUNCED, ROUTES
        from domain.services.outbox import Router

        s = self.settings
        return OutboxRelay(self.uow, self.outbox_publisher, Router(ROUTES, ANNOUNCED), batch_size=s.outbox_batch_size,
                           max_retries=s.outbox_max_retries, backoff_ms=s.outbox_backoff_ms,
                           unrouted_grace_s=s.outbox_unrouted_grace_s)

    def capability_metrics(self) -> list[MetricSpec]:
        from adapters.metrics import MetricSpec
        from adapters.sql.stats import outbox_backlog

        return [
            MetricSpec("atelier_outbox_pending_events", "gauge", "Outbox events not yet published.",
                       lambda: outbox_backlog(self.engine)[0]),
            MetricSpec("atelier_outbox_dead_events", "gauge", "Outbox events given up on.",
                       lambda: outbox_backlog(self.engine)[1]),
        ]
