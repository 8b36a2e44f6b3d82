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


# --- messaging ---
def pending_deliveries(engine: Engine) -> dict[tuple[str, ...], float]:
    """{(channel,): deliveries not sent yet}, every channel present (0 when none)."""
    from adapters.sql.tables import message_deliveries as d
    from domain.models import CONCRETE_CHANNELS

    query = select(d.c.channel, func.count()).where(d.c.status == "PENDING").group_by(d.c.channel)
    counts: dict[tuple[str, ...], float] = {(c.value,): 0 for c in CONCRETE_CHANNELS}
    with engine.connect() as conn:
        counts.update({(channel,): n for channel, n in conn.execute(query)})
    return counts
