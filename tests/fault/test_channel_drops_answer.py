"""Scenario 5: a channel that takes a message and drops the answer (the connection closes before the
reply: a timeout, a reset, a proxy that gave up), on each broker.

60 chat messages to WhatsApp; the mock channel takes the first 20 requests and closes each connection
without answering (mode ``drop``). The gateway cannot know whether the channel got the message: it is
a transient error, and the retry sends it again with the same Idempotency-Key; the mock, as a channel
that deduplicates on that key, answers with the first answer and shows it once.

Promise (docs/messaging.md): nothing lost, every message shown once on a channel that honours
Idempotency-Key; a resend only for a dropped answer, never more than one per drop. A channel that
ignores the key would show those resends: the table counts them.
"""

from __future__ import annotations

import time

import pytest

from tests.fault import harness

pytestmark = pytest.mark.fault

CHATS = 60
DROPPED = 20
RECOVERY_BOUND_S = 45.0


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_channel_accepts_and_drops_the_answer(broker, request, fault_env, effects_db, redis_server, tmp_path):
    url, dsn = effects_db
    mock = harness.MockChannelsServer()
    broker_url = redis_server.url if broker == "redis" else request.getfixturevalue("vhost").url
    env = dict(fault_env, DATABASE_URL=url, BROKER_URL=broker_url, REDIS_URL=redis_server.url,
               **harness.chat_env(mock),
               # Each dropped answer is a failed call to the breaker: with the default threshold (5)
               # the circuit would open and hold the rest for its reset timeout. The drops are what is
               # tested here, not the breaker (scenario 3 and tests/e2e cover it).
               CIRCUIT_FAILURE_THRESHOLD="1000")
    worker = scheduler = None
    try:
        mock.control(channel="whatsapp", mode="drop", count=DROPPED)
        worker = harness.Worker(env, tmp_path / "worker.log", threads=4).start()
        scheduler = harness.Scheduler(env, tmp_path / "scheduler.log")
        chats = harness.ChatProducer(env, tmp_path, CHATS)
        chats.wait(timeout=60)
        started = time.time()
        done = harness.wait_chat(mock, chats, dsn, timeout=RECOVERY_BOUND_S)
        took = time.time() - started if done else None
        chat = harness.ChatTally.read(mock, chats.created(), dsn)
        dropped = mock.state.stats()["channels"]["whatsapp"]["dropped"]
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.stop()
        mock.close()

    harness.record("5 channel takes the message, drops the answer", broker, messages=len(chat.expected),
                   lost=len(chat.lost), duplicates=chat.shown_twice, recovery_s=took,
                   note=f"{dropped} answers dropped; {chat.sent_twice} sent again with the same Idempotency-Key "
                        f"(shown once by the channel's dedup; a channel without it shows them twice); "
                        f"deliveries {dict(chat.statuses)}")

    assert done and not chat.lost, f"{len(chat.lost)} of {len(chat.expected)} never reached the channel"
    assert dropped == DROPPED
    assert chat.shown_twice == 0
    assert chat.sent_twice <= dropped, "sent again more often than answers were lost"
    assert chat.statuses == {"SENT": len(chat.expected)}
