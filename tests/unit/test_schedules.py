"""The scheduler's job table, slots and tick guard, on Dramatiq's StubBroker."""

import subprocess
import sys
from datetime import UTC, datetime

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from bootstrap.settings import ConfigError, load_settings
from schedules.jobs import Job, LocalTickGuard, build_jobs, fire
from tests import services


@pytest.fixture
def broker():
    broker = StubBroker()
    broker.emit_after("process_boot")
    dramatiq.actor(lambda: None, broker=broker, actor_name="tick", queue_name="ticks")
    yield broker
    broker.close()


def test_jobs_come_from_settings():
    s = load_settings(outbox_poll_interval_ms=250, gc_cron="30 3 * * *", fallback_poll_interval=7)
    jobs = {j.name: j for j in build_jobs(s)}
    assert jobs["relay_outbox"] == Job("relay_outbox", "relay_outbox", interval=0.25)
    assert jobs["collect_abandoned_uploads"].cron == "30 3 * * *"
    assert jobs["drain_fallback"].interval == 7


def test_interval_slots_are_the_tick_a_firing_stands_for():
    job = Job("j", "tick", interval=0.5)
    assert job.slot(1000.0) == job.slot(1000.2) == "2000"  # a late firing counts for its own tick
    assert job.slot(1000.5) == "2001"
    cron = Job("c", "tick", cron="0 2 * * *")
    assert cron.slot(datetime(2026, 1, 2, 2, 0, 7, tzinfo=UTC).timestamp()) == "20260102T0200"


def test_replicas_started_apart_fire_at_the_same_instants():
    now = datetime(2026, 1, 1, 0, 0, 0, 130_000, tzinfo=UTC)
    later = datetime(2026, 1, 1, 0, 0, 0, 410_000, tzinfo=UTC)
    job = Job("j", "tick", interval=0.25)
    a = job.trigger().get_next_fire_time(None, now)
    b = job.trigger().get_next_fire_time(None, later)
    assert (a.microsecond, b.microsecond) == (250_000, 500_000)  # on the epoch-anchored grid
    assert int(job.slot(b.timestamp())) - int(job.slot(a.timestamp())) == 1


def test_a_slot_is_sent_once_with_its_dedup_key(broker):
    job, guard = Job("j", "tick", interval=1), LocalTickGuard()
    assert fire(job, broker, guard, now=100.0)
    assert not fire(job, broker, guard, now=100.1)  # another firing for the same tick
    assert fire(job, broker, guard, now=101.0)
    queued = list(broker.queues["ticks"].queue)
    assert len(queued) == 2
    keys = [dramatiq.Message.decode(m).options["dedup_key"] for m in queued]
    assert keys == ["schedule:j:100", "schedule:j:101"]


def test_a_failed_send_gives_the_slot_back(broker):
    job, guard = Job("j", "missing_actor", interval=1), LocalTickGuard()
    assert not fire(job, broker, guard, now=100.0)
    assert guard.claim("schedule:j:100", 1000)  # free for another replica to send


@pytest.mark.parametrize("var,value", [("GC_CRON", "every night"), ("OUTBOX_BATCH_SIZE", "0"),
                                       ("OUTBOX_POLL_INTERVAL_MS", "fast"), ("FALLBACK_POLL_INTERVAL", "-1")])
def test_bad_schedule_settings_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith(f"configuration error: {var}:")


def test_scheduler_start_up_stops_with_one_line(tmp_path):
    env = services.subprocess_env(GC_CRON="61 * * * *")
    result = subprocess.run([sys.executable, "-m", "schedules"], env=env, capture_output=True, text=True,
                            cwd=services.ROOT, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: GC_CRON:"), result.stderr
