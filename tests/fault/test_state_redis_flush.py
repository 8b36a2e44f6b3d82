"""Scenario 3: the state Redis (dedup windows, circuit breakers, fallback lists) crashes mid-load and
comes back empty, with RabbitMQ as the broker.

Two loads run through the crash:

- 2,000 ``effect`` messages, every fifth key sent twice (a duplicate the dedup key absorbs), and
  after the restart the first 200 keys sent again. While Redis is down, Dedup cannot decide and
  puts messages back for 5 s rather than risk a second run; when it is back, empty, the windows of
  keys that completed before the crash are forgotten, so those 200 run again. Promise: nothing
  lost; a key runs twice only if its first run completed before the crash (the window forgotten;
  the handler's idempotency absorbs it), never two runs after it.
- 60 chat messages to a WhatsApp that fails: its circuit opens and the deliveries are parked on the
  circuit's fallback list in Redis, which the crash wipes (issue 16, hole 2: the list was their only
  copy). The channel recovers. Promise: every message sent, exactly once, from the database of record
  (a sweep routes again deliveries left PENDING with nothing sending them: MESSAGE_SWEEP_AFTER_S).
"""

from __future__ import annotations

import time

import pytest
import redis

from tests import services
from tests.fault import harness
from tests.fault.backlog import wait_empty
from tests.fault.servers import PrivateRedis

pytestmark = pytest.mark.fault

MESSAGES = 2000
DUPLICATE_EVERY = 5
RATE = 400
WORK_MS = 10
THREADS = 8
CHATS = 60
RESENT = 200  # keys sent again after the flush (their first run was before it)
DOWN_S = 3.0
RECOVERY_BOUND_S = 45.0


def test_state_redis_crashed_and_flushed_mid_load_on_rabbitmq(fault_env, effects_db, vhost, tmp_path):
    url, dsn = effects_db
    state = PrivateRedis().start()
    mock = harness.MockChannelsServer()
    prefix = fault_env["QUEUE_PREFIX"]
    env = dict(fault_env, DATABASE_URL=url, FAULT_EFFECTS_DSN=dsn, FAULT_EFFECT_WORK_MS=str(WORK_MS),
               BROKER_URL=vhost.url, REDIS_URL=state.url, **harness.chat_env(mock),
               # The circuit opens after 3 failures and stays open past the crash: the parked
               # deliveries are only on the fallback list when it is wiped.
               CIRCUIT_FAILURE_THRESHOLD="3", CIRCUIT_RESET_TIMEOUT_S="60")
    queue = f"{prefix}fault"
    fallback_key = f"atelier:{prefix}fallback:channel:whatsapp"
    worker = scheduler = None
    try:
        mock.control(channel="all", mode="fail", status=503)
        worker = harness.Worker(env, tmp_path / "worker.log", threads=THREADS).start()
        scheduler = harness.Scheduler(env, tmp_path / "scheduler.log")
        chats = harness.ChatProducer(env, tmp_path, CHATS)
        client = redis.Redis.from_url(state.url)
        services.wait_for(lambda: client.llen(fallback_key) >= CHATS // 2, timeout=90, interval=0.2,
                          message="deliveries parked on the whatsapp fallback list")
        producer = harness.Producer(env, tmp_path, MESSAGES, rate=RATE, duplicate_every=DUPLICATE_EVERY)
        services.wait_for(lambda: harness.count_effects(dsn) >= 400, timeout=120, interval=0.05,
                          message="400 effects")
        parked = client.llen(fallback_key)
        client.close()
        state.crash()
        crashed_at = time.time()
        time.sleep(DOWN_S)  # the outage: Dedup and the breakers cannot reach their store
        state.wipe()
        state.start()
        back_at = time.time()
        mock.control(channel="all", mode="ok")
        producer.wait(timeout=180)
        # The producer sends the first keys again, as an outbox relay does after a crash: their
        # windows went with the flush.
        again = harness.Producer(env, tmp_path, RESENT, name="resent")
        again.wait(timeout=60)
        chats.wait(timeout=60)
        effects_done = harness.wait_all_effects(dsn, producer, timeout=RECOVERY_BOUND_S)
        harness.wait_stable(dsn, seconds=2.0, timeout=30)
        chats_done = harness.wait_chat(mock, chats, dsn, timeout=RECOVERY_BOUND_S if effects_done else 5)
        chat_recovery = time.time() - back_at if chats_done else None
        tally = harness.Tally.read(dsn, producer.sent())  # (the resent keys are among these)
        chat = harness.ChatTally.read(mock, chats.created(), dsn)
        left = wait_empty(vhost.url, queue, timeout=20 if effects_done else 0)
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.stop()
        mock.close()
        state.close()

    last = tally.last_run_at()
    recovery = (last - back_at) if effects_done and last is not None else None
    # A key may run twice only if its first run completed before the crash wiped its window.
    after_crash_twice = {k: r for k, r in tally.duplicate_keys().items() if r[0][1].timestamp() >= crashed_at}
    forgotten = len(tally.duplicate_keys()) - len(after_crash_twice)
    harness.record("3 state Redis crashed + flushed (effects)", "rabbitmq", messages=len(tally.sent),
                   lost=len(tally.lost), duplicates=len(after_crash_twice), recovery_s=recovery,
                   note=f"{forgotten} of the {RESENT} keys sent again after the flush ran again (their window "
                        f"forgotten; the handler's idempotency absorbs it); left after: {left}",
                   ok=effects_done and not tally.lost and not after_crash_twice and left == 0)
    harness.record("3 state Redis crashed + flushed (chat parked on the fallback list)", "rabbitmq",
                   messages=len(chat.expected), lost=len(chat.lost), duplicates=chat.sent_twice + chat.shown_twice,
                   recovery_s=chat_recovery,
                   note=f"{parked} parked when Redis was wiped; statuses {dict(chat.statuses)}",
                   ok=chats_done and not chat.lost and chat.sent_twice == chat.shown_twice == 0)

    assert effects_done and not tally.lost, f"{len(tally.lost)} of {len(tally.sent)} sent never ran"
    assert not after_crash_twice, f"keys run twice after the crash: {dict(list(after_crash_twice.items())[:5])}"
    assert left == 0, f"{left} messages stuck on the broker"
    assert chats_done and not chat.lost, (
        f"{len(chat.lost)} of {len(chat.expected)} chat deliveries never reached the channel after the fallback "
        f"list was wiped (statuses {dict(chat.statuses)})")
    assert chat.sent_twice == chat.shown_twice == 0
