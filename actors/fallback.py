"""drain_fallback: the scheduler sends it every FALLBACK_POLL_INTERVAL seconds; it moves messages
parked in the circuits' fallback queues back to their queues once the circuit lets traffic through."""

import dramatiq

from actors import settings
from actors.ticks import run_tick
from bootstrap import get_container, queue


# No retries: the next tick drains whatever this one left; a failed tick (Redis down) is logged,
# not dead-lettered (actors/ticks.py). Stale ticks are dropped (AgeLimit).
@dramatiq.actor(queue_name=queue(settings, "fallback"), max_retries=0,
                dead_letter_expired=False,  # a tick that expired is replaced by the next one
                max_age=int(max(10_000, 10_000 * settings.fallback_poll_interval)), time_limit=120_000)
def drain_fallback() -> None:
    run_tick("drain_fallback", lambda: get_container().fallback_drainer.drain())
