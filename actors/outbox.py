"""The outbox relay actor: the scheduler sends it every OUTBOX_POLL_INTERVAL_MS."""

import dramatiq

from actors import settings
from actors.ticks import run_tick
from bootstrap import get_container, queue


# No retries: the next tick relays whatever this run left; a failed tick (the database down) is
# logged, not dead-lettered (actors/ticks.py). A tick older than a few intervals is dropped unrun
# (AgeLimit) so a backlog of ticks never piles up behind a busy queue.
@dramatiq.actor(queue_name=queue(settings, "outbox"), max_retries=0,
                dead_letter_expired=False,  # a tick that expired is replaced by the next one
                max_age=max(10_000, 10 * settings.outbox_poll_interval_ms),
                time_limit=settings.outbox_relay_budget_ms + 60_000)
def relay_outbox() -> None:
    run_tick("relay_outbox", lambda: get_container().outbox_relay.relay(settings.outbox_relay_budget_ms / 1000))
