"""`python -m schedules` as a real process on Redis and PostgreSQL: ticks, replicas, SIGTERM,
and the relay loop's LISTEN/NOTIFY wake-up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from dramatiq import Message

from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import DomainEvent, new_id
from tests import services

pytestmark = pytest.mark.e2e


class SchedulerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path

    def __enter__(self) -> SchedulerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "schedules"], env=self.env, cwd=services.ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        services.wait_for(lambda: "scheduler started" in self.output() or self.proc.poll() is not None,
                          timeout=60, message="scheduler start")
        assert self.proc.poll() is None, self.output()
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"scheduler ignored SIGTERM:\n{self.output()}") from None
        self._log.close()
        return self.proc.returncode

    def __exit__(self, *exc: object) -> None:
        self.terminate()


@pytest.fixture
def env(base_env, pg_test_url):
    env = dict(base_env)
    env.update({"BROKER_URL": services.REDIS_URL, "DATABASE_URL": pg_test_url})
    yield env
    services.purge_queues(services.REDIS_URL, env["QUEUE_PREFIX"], ())
    client = redis.Redis.from_url(services.REDIS_URL)
    keys = list(client.scan_iter(f"{env['QUEUE_PREFIX']}atelier:*"))
    if keys:
        client.delete(*keys)
    client.close()


def _queued(env: dict[str, str], queue: str) -> list[Message]:
    client = redis.Redis.from_url(services.REDIS_URL)
    try:
        return [Message.decode(v) for v in client.hvals(f"dramatiq:{env['QUEUE_PREFIX']}{queue}.msgs")]
    finally:
        client.close()


def _record_event(database_url: str) -> str:
    engine = make_engine(database_url)
    uow = uow_factory(engine)
    event = DomainEvent("message.status", "test", new_id(), {"n": 1})  # announced only: no subscriber runs
    with uow() as u:
        u.add_event(event)
        u.commit()
    engine.dispose()
    return event.id


def _published(database_url: str, event_id: str) -> bool:
    engine = make_engine(database_url)
    with uow_factory(engine)() as u:
        event = u.outbox.get(event_id)
    engine.dispose()
    return event.published_at is not None


def test_scheduler_ticks_reach_a_worker_that_relays_the_outbox(env, tmp_path):
    env.update(OUTBOX_POLL_INTERVAL_MS="200", OUTBOX_RELAY_LOOP="false")
    with services.WorkerProcess(env, tmp_path / "worker.log", threads=2) as worker, \
            SchedulerProcess(env, tmp_path / "scheduler.log") as scheduler:
        event_id = _record_event(env["DATABASE_URL"])
        services.wait_for(lambda: _published(env["DATABASE_URL"], event_id), timeout=60,
                          message="event published by relay_outbox in the worker")
        assert scheduler.terminate() == 0
        records = scheduler.records()
        worker_log = worker.output()
    sent = [r for r in records if r["event"] == "schedule sent"]
    # drain_fallback (every 10 s) may tick too when the run is slow; each send names its slot.
    assert any(r["job"] == "relay_outbox" for r in sent)
    assert all(r["dedup_key"] == f"schedule:{r['job']}:{r['slot']}" for r in sent)
    # Jobs whose actors live in other capabilities are skipped until those actors exist.
    skipped = {r["job"] for r in records if r["event"] == "schedule job skipped: actor not declared"}
    assert skipped == set()  # every periodic job's actor is declared now
    assert records[-1]["event"] == "scheduler stopped"
    assert "relay_outbox" in worker_log


def test_two_replicas_never_send_the_same_tick_and_stop_on_sigterm(env, tmp_path):
    env.update(OUTBOX_POLL_INTERVAL_MS="100", OUTBOX_RELAY_LOOP="false")
    with SchedulerProcess(env, tmp_path / "a.log") as a, SchedulerProcess(env, tmp_path / "b.log") as b:
        services.wait_for(lambda: len(_queued(env, "outbox")) >= 30, timeout=60, message="30 ticks")
        codes = (a.terminate(), b.terminate())
    assert codes == (0, 0)
    sends = [r for p in (a, b) for r in p.records() if r["event"] == "schedule sent" and r["job"] == "relay_outbox"]
    messages = _queued(env, "outbox")
    keys = [m.options["dedup_key"] for m in messages]
    assert len(keys) == len(set(keys)) == len(sends), "a tick was sent twice"
    assert sorted(keys) == sorted(r["dedup_key"] for r in sends)
    assert all(m.actor_name == "relay_outbox" for m in messages)
    assert all(p.records()[-1]["event"] == "scheduler stopped" for p in (a, b))


def test_relay_loop_wakes_on_commit_without_waiting_for_the_poll(env, tmp_path):
    # Poll and ticks an hour apart: only the NOTIFY from the commit can get the event relayed.
    env.update(OUTBOX_POLL_INTERVAL_MS="3600000")
    with SchedulerProcess(env, tmp_path / "scheduler.log") as scheduler:
        services.wait_for(lambda: "outbox relay loop listening" in scheduler.output(), timeout=30,
                          message="LISTEN")
        # The first event may be caught by the loop's start-up run; the second commits while the
        # loop waits for a notification (it LISTENs before its first run, so none is missed).
        for _ in range(2):
            event_id = _record_event(env["DATABASE_URL"])
            services.wait_for(lambda: _published(env["DATABASE_URL"], event_id), timeout=20,  # noqa: B023
                              message="event published by the relay loop")
