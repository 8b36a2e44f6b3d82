"""The transactional outbox and its relay."""

from __future__ import annotations

from pydantic import Field

from bootstrap.settings.base import Group


class OutboxSettings(Group):
    outbox_batch_size: int = Field(100, ge=1, le=10_000, description="Events claimed per relay transaction.")
    outbox_max_retries: int = Field(3, ge=0, description="Failed relays of one event before it is marked dead.")
    outbox_backoff_ms: int = Field(1000, ge=1, description="First relay retry delay; doubles per attempt.")
    outbox_poll_interval_ms: int = Field(500, ge=10, description="relay_outbox tick and the relay loop's poll.")
    outbox_relay_budget_ms: int = Field(5000, ge=10, description="One relay run stops claiming after this.")
    outbox_dedup_window: int = Field(86_400, ge=1, description="Seconds a subscriber's dedup key is remembered.")
    outbox_unrouted_grace_s: float = Field(
        3600, gt=0, description="An event whose type this relay's routing table does not know (recorded by a newer "
                                "version during a rolling deploy) stays due this long for a relay that knows it, "
                                "then is marked dead with the reason.")
    outbox_relay_loop: bool = Field(True, description="`python -m schedules` also runs the low-latency relay loop.")
