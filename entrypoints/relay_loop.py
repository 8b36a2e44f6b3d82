"""The low-latency outbox relay loop.

It relays whenever an event commits and at least every poll interval. On PostgreSQL the wake-up
is LISTEN/NOTIFY: the outbox_events insert trigger (migration obx1) notifies in the inserting
transaction, and PostgreSQL delivers that only when the transaction commits, so the loop never
wakes for an event it cannot see yet. Elsewhere (SQLite) it polls.

Several loops (and relay_outbox actors) may run at once: claims skip rows another relay holds.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.engine import make_url

from domain.services.outbox import OutboxRelay, RelayStats

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "atelier_outbox"  # the channel of migration obx1's trigger


def libpq_url(database_url: str) -> str | None:
    """The psycopg connection string of a PostgreSQL SQLAlchemy URL; None for other databases."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class RelayLoop:
    """Parameters: relay; database_url (LISTEN when it is PostgreSQL); poll_interval and budget in
    seconds (budget bounds one relay run, so a stop request is honoured between runs)."""

    def __init__(self, relay: OutboxRelay, database_url: str, *, poll_interval: float = 0.5,
                 budget: float = 5.0) -> None:
        self.relay = relay
        self.dsn = libpq_url(database_url)
        self.poll_interval = poll_interval
        self.budget = budget
        self.runs = 0
        self.wakeups = 0
        self._conn = None

    def _listen(self) -> None:
        if self.dsn is None or self._conn is not None:
            return
        import psycopg

        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._conn = conn
            log.info("outbox relay loop listening on %s", NOTIFY_CHANNEL)
        except Exception as exc:  # the loop still polls; it retries the LISTEN next round
            log.warning("outbox relay loop cannot LISTEN (polling instead): %s", exc)

    def _wait(self, stop: threading.Event) -> None:
        """Until a commit notifies, the poll interval passes, or stop is set."""
        if self._conn is None:
            stop.wait(self.poll_interval)
            return
        deadline = time.monotonic() + self.poll_interval
        try:
            # In short slices, so a stop request is seen within half a second.
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                # Closed before anything else uses the connection: the generator holds its lock.
                gen = self._conn.notifies(timeout=min(left, 0.5), stop_after=1)
                try:
                    woken = next(gen, None) is not None
                finally:
                    gen.close()
                if woken:
                    self.wakeups += 1
                    # Several commits may have notified meanwhile: one relay run serves them all.
                    for _ in self._conn.notifies(timeout=0):
                        pass
                    return
        except Exception as exc:
            log.warning("outbox relay loop lost its LISTEN connection: %s", exc)
            self.close()
            stop.wait(self.poll_interval)

    def run_once(self) -> RelayStats:
        self.runs += 1
        return self.relay.relay(self.budget)

    def run(self, stop: threading.Event) -> None:
        log.info("outbox relay loop started (poll every %.3fs)", self.poll_interval)
        try:
            while not stop.is_set():
                self._listen()  # before relaying, so no commit falls between a run and the LISTEN
                try:
                    stats = self.run_once()
                except Exception:
                    log.exception("outbox relay run failed")
                    stop.wait(self.poll_interval)
                    continue
                if stats.more_due:
                    continue  # the budget ran out with more due: go on at once
                self._wait(stop)
        finally:
            self.close()
            log.info("outbox relay loop stopped")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
