"""The periodic jobs: which actor, on what interval or cron, all from settings.

The table is data: a job runs only if its actor is declared on the broker, so capabilities that
live in other modules join by declaring their actor. Each tick belongs to a slot (the interval
number since the epoch, or the cron minute); before sending, a replica claims
"schedule:<job>:<slot>" with Redis SET NX, and the message carries the same string as its
dedup_key, so several scheduler replicas never send the same tick twice.

With tracing on, each tick sent starts a trace of its own (a root span ``schedule <job>``), so a
tick's run is never filed under whatever else the scheduler process was doing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bootstrap.settings import Settings
from bootstrap.tracing import tracer_provider

log = structlog.get_logger("schedules")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Job:
    name: str
    actor: str
    interval: float | None = None  # seconds
    cron: str | None = None  # crontab syntax, UTC

    def trigger(self) -> BaseTrigger:
        if self.cron is not None:
            return CronTrigger.from_crontab(self.cron, timezone=UTC)
        assert self.interval is not None
        # Anchored at the epoch: every replica fires at the same instants, one per slot.
        return IntervalTrigger(seconds=self.interval, start_date=EPOCH, timezone=UTC)

    def slot(self, now: float) -> str:
        """The tick a firing at ``now`` (epoch seconds) stands for."""
        if self.cron is not None:
            return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M")
        assert self.interval is not None
        # Rounded, not floored: a firing a little late still counts for the tick it was due at.
        return str(math.floor(now / self.interval + 0.5))

    @property
    def ttl_ms(self) -> int:
        """How long a slot's claim and dedup key live: well past the slot itself."""
        period = self.interval if self.interval is not None else 60.0
        return int(max(period * 10, 60.0) * 1000)


def build_jobs(settings: Settings) -> list[Job]:
    return [
        Job("relay_outbox", "relay_outbox", interval=settings.outbox_poll_interval_ms / 1000),
        Job("collect_abandoned_uploads", "collect_abandoned_uploads", cron=settings.gc_cron),
        Job("drain_fallback", "drain_fallback", interval=settings.fallback_poll_interval),
        Job("sweep_deliveries", "sweep_deliveries", interval=settings.message_sweep_interval_s),
    ]


class RedisTickGuard:
    """The first replica to SET NX a slot's key sends the tick."""

    def __init__(self, client: Any, namespace: str = "") -> None:
        self.client = client
        self.namespace = namespace

    def claim(self, key: str, ttl_ms: int) -> bool:
        return bool(self.client.set(f"{self.namespace}atelier:{key}", b"1", nx=True, px=ttl_ms))

    def release(self, key: str) -> None:
        self.client.delete(f"{self.namespace}atelier:{key}")


class LocalTickGuard:
    """Without Redis (stub broker): one process, so remembering the keys it sent is enough."""

    def __init__(self) -> None:
        self._sent: dict[str, float] = {}
        self._lock = threading.Lock()

    def claim(self, key: str, ttl_ms: int) -> bool:
        now = time.monotonic()
        with self._lock:
            self._sent = {k: exp for k, exp in self._sent.items() if exp > now}
            if key in self._sent:
                return False
            self._sent[key] = now + ttl_ms / 1000
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._sent.pop(key, None)


def fire(job: Job, broker: Any, guard: RedisTickGuard | LocalTickGuard, now: float | None = None) -> bool:
    """Send one tick of ``job`` unless another replica already sent this slot. Never raises: a
    failed send is logged and the next tick tries again."""
    now = time.time() if now is None else now
    slot = job.slot(now)
    key = f"schedule:{job.name}:{slot}"
    try:
        if not guard.claim(key, job.ttl_ms):
            log.debug("schedule tick taken by another replica", job=job.name, slot=slot)
            return False
        with _tick_trace(job, slot):
            message = broker.get_actor(job.actor).send_with_options(
                dedup_key=key, dedup_window=max(job.ttl_ms // 1000, 1))
            log.info("schedule sent", job=job.name, actor=job.actor, slot=slot, dedup_key=key,
                     message_id=message.message_id)
    except Exception as exc:
        log.error("schedule send failed", job=job.name, actor=job.actor, slot=slot, error=str(exc))
        try:
            guard.release(key)  # another replica may still send this slot
        except Exception:  # Redis down too: the key expires by itself
            pass
        return False
    return True


@contextmanager
def _tick_trace(job: Job, slot: str) -> Iterator[None]:
    """A new trace for the tick while tracing is on: its send span and its run are children."""
    provider = tracer_provider()
    if provider is None:
        yield
        return
    from opentelemetry import context, trace

    tracer = trace.get_tracer("atelier.schedules", tracer_provider=provider)
    with tracer.start_as_current_span(f"schedule {job.name}", context=context.Context(),
                                      attributes={"atelier.schedule.job": job.name, "atelier.schedule.slot": slot,
                                                  "dramatiq.actor": job.actor}):
        yield
