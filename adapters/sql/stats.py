"""Counts the ops server reads at scrape time."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from adapters.sql.tables import outbox_events


def outbox_backlog(engine: Engine) -> tuple[int, int]:
    """(pending, dead): outbox events not published yet, split by whether the relay gave up."""
    query = (select(outbox_events.c.dead, func.count())
             .where(outbox_events.c.published_at.is_(None))
             .group_by(outbox_events.c.dead))
    with engine.connect() as conn:
        counts = {bool(dead): n for dead, n in conn.execute(query)}
    return counts.get(False, 0), counts.get(True, 0)
