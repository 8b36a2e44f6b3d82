"""Periodic ticks: the scheduler sends them again and again, so one that fails is logged and
left to the next tick. Not retried (the next tick is the retry) and not dead-lettered: during an
outage of PostgreSQL or Redis every tick fails, and a dead letter per tick (one every 500 ms for
relay_outbox) would bury the letters that matter, and cannot even be written while the database
of record is down."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_tick(name: str, work: Callable[[], T]) -> T | None:
    try:
        return work()
    except Exception as exc:
        log.error("%s tick failed (%s: %s); the next tick tries again", name, type(exc).__name__, exc,
                  exc_info=True)
        return None
