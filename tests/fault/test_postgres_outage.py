"""Scenario 4: the database of record (PostgreSQL) down 20 s while the outbox relays and chat
messages are being delivered, on each broker.

A producer records 200 chat messages (every fifth to both channels) at 20 a second through
MessagingService.create (the message and its ``message.created`` event in one transaction; the
scheduler's relay loop routes each to route_message, which sends deliver_message per channel). The
mock channel answers after 0.3 s, so deliveries are in flight, accepted by the channel but not yet
recorded SENT, when PostgreSQL stops (fast shutdown: every connection cut). 20 s later it starts
again. The producer retries its creates meanwhile (idempotent on the message id).

Promise: every event is published after the outage (none dead, none left due), every chat message
reaches its channel(s) exactly once (one request accepted per delivery, not only one shown: a real
channel may not deduplicate on Idempotency-Key), every delivery ends SENT, and no message is
dead-lettered for the outage (retries outlast it; periodic ticks leave the work to the next tick).
"""

from __future__ import annotations

import time

import psycopg
import pytest

from tests import services
from tests.fault import harness
from tests.fault.servers import PrivatePostgres

pytestmark = pytest.mark.fault

CHATS = 200
RATE = 20
EVERY_ALL = 5
DOWN_S = 20.0
THREADS = 8
RECOVERY_BOUND_S = 60.0


def dead_letters(dsn: str) -> dict[str, int]:
    """Dead letters by actor and reason: an outage is no reason for a message to fail for good."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT actor || ':' || reason, count(*) FROM dead_letters GROUP BY 1").fetchall()
    return dict(rows)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_postgres_down_20s_during_relaying_and_chat_deliveries(broker, request, fault_env, redis_server, tmp_path):
    pg = PrivatePostgres().start()
    mock = harness.MockChannelsServer()
    worker = scheduler = None
    try:
        url = pg.create_database()
        dsn = harness.effects_dsn(url)
        broker_url = redis_server.url if broker == "redis" else request.getfixturevalue("vhost").url
        env = dict(fault_env, DATABASE_URL=url, BROKER_URL=broker_url, REDIS_URL=redis_server.url,
                   **harness.chat_env(mock))
        mock.control(channel="all", mode="slow", delay_s=0.3)  # sends in flight when the database stops
        worker = harness.Worker(env, tmp_path / "worker.log", threads=THREADS).start()
        scheduler = harness.Scheduler(env, tmp_path / "scheduler.log")
        chats = harness.ChatProducer(env, tmp_path, CHATS, rate=RATE, every_all=EVERY_ALL, deadline=150)
        services.wait_for(lambda: mock.state.stats()["channels"]["whatsapp"]["accepted"] >= 40, timeout=90,
                          interval=0.1, message="deliveries under way")
        pg.stop()
        stopped_at = time.time()
        in_flight = mock.state.stats()["channels"]
        time.sleep(DOWN_S)  # the outage itself
        pg.start()
        back_at = time.time()
        chats.wait(timeout=120)
        done = harness.wait_chat(mock, chats, dsn, timeout=RECOVERY_BOUND_S)
        recovery = time.time() - back_at if done else None
        chat = harness.ChatTally.read(mock, chats.created(), dsn)
        outbox = services.wait_for(lambda: (s := harness.outbox_state(dsn))["due"] == 0 and s, timeout=30,
                                   message="the outbox relayed") if done else harness.outbox_state(dsn)
        letters = dead_letters(dsn)
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.stop()
        mock.close()
        pg.close()

    harness.record("4 PostgreSQL down 20 s (relay + chat deliveries)", broker, messages=len(chat.expected),
                   lost=len(chat.lost), duplicates=chat.sent_twice + chat.shown_twice, recovery_s=recovery,
                   note=f"down {back_at - stopped_at:.0f} s; channel requests accepted before the stop: "
                        f"{in_flight['whatsapp']['accepted'] + in_flight['instagram']['accepted']}; sent twice "
                        f"{chat.sent_twice}, shown twice {chat.shown_twice}; outbox {outbox}; dead letters {letters}; "
                        f"deliveries {dict(chat.statuses)}")

    assert done and not chat.lost, f"{len(chat.lost)} of {len(chat.expected)} deliveries never reached the channel " \
                                   f"(statuses {dict(chat.statuses)})"
    assert chat.sent_twice == 0, f"{chat.sent_twice} deliveries sent twice (the channel accepted them twice)"
    assert chat.shown_twice == 0
    assert outbox["dead"] == 0 and outbox["due"] == 0, outbox
    assert chat.statuses == {"SENT": len(chat.expected)}
    assert not letters, f"dead letters written for an outage: {letters}"
