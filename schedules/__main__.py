"""`python -m schedules`: APScheduler sends each periodic actor on its interval or cron.

Why both a relay_outbox tick and a relay loop: the tick (every OUTBOX_POLL_INTERVAL_MS, through
the broker to the workers) relays with nothing else running, and retries events whose backoff
has passed; the loop in this process (OUTBOX_RELAY_LOOP) relays the moment an event commits
(PostgreSQL LISTEN/NOTIFY), without the hop through a queue and a polling worker. Both may run
in every replica: claims skip events another relay holds.

SIGTERM or SIGINT stops it: no new ticks, the relay loop finishes its run, exit status 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from bootstrap.logging import configure_logging
from bootstrap.settings import ConfigError, get_settings
from schedules.jobs import LocalTickGuard, RedisTickGuard, build_jobs, fire

log = structlog.get_logger("schedules")


def main() -> int:
    try:
        settings = get_settings()
    except ConfigError as exc:
        return exc.code if isinstance(exc.code, int) else 2
    configure_logging(settings)
    # APScheduler logs every run at INFO; our own "schedule sent" line says what matters.
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)

    import actors
    from bootstrap import get_container

    container = get_container()
    broker = actors.broker
    declared = broker.get_declared_actors()
    guard: RedisTickGuard | LocalTickGuard
    if container.redis is not None:
        guard = RedisTickGuard(container.redis, settings.queue_prefix)
    else:
        log.warning("no REDIS_URL: ticks are deduplicated within this process only; run one replica")
        guard = LocalTickGuard()

    scheduler = BackgroundScheduler(timezone="UTC")
    for job in build_jobs(settings):
        if job.actor not in declared:
            log.info("schedule job skipped: actor not declared", job=job.name, actor=job.actor)
            continue
        scheduler.add_job(fire, job.trigger(), args=(job, broker, guard), id=job.name, name=job.name,
                          max_instances=1, coalesce=True, misfire_grace_time=max(1, int(job.ttl_ms / 10_000)))
        log.info("schedule job added", job=job.name, actor=job.actor, interval=job.interval, cron=job.cron)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("scheduler stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    loop_thread = None
    if settings.outbox_relay_loop:
        from entrypoints.relay_loop import RelayLoop

        loop = RelayLoop(container.outbox_relay, settings.database_url,
                         poll_interval=settings.outbox_poll_interval_ms / 1000,
                         budget=settings.outbox_relay_budget_ms / 1000)
        loop_thread = threading.Thread(target=loop.run, args=(stop,), name="outbox-relay-loop", daemon=True)
        loop_thread.start()

    scheduler.start()
    log.info("scheduler started", jobs=[j.id for j in scheduler.get_jobs()])
    while not stop.wait(1.0):
        pass
    scheduler.shutdown(wait=True)
    if loop_thread is not None:
        loop_thread.join(timeout=settings.outbox_relay_budget_ms / 1000 + 10)
    broker.close()
    container.close()
    log.info("scheduler stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
