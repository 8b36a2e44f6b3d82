"""The middleware's state adapters: Redis (real server) and in-memory give the same answers;
the SQL dead-letter store on PostgreSQL and SQLite; `atelier dlq` as a subprocess."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis
from dramatiq import Message

from adapters.sql.deadletters import SqlDeadLetterStore
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from adapters.state.memory import InMemoryBreakerStore, InMemoryDedupStore, InMemoryFallbackQueue
from adapters.state.redis import RedisBreakerStore, RedisDedupStore, RedisFallbackQueue
from domain.models import DomainEvent, new_id, utcnow
from domain.resilience import BreakerPolicy, CircuitState, DeadLetter, DedupOutcome
from tests import services


@pytest.fixture(params=["memory", "redis"])
def stores(request, redis_ns):
    client, ns = redis_ns
    if request.param == "memory":
        return InMemoryDedupStore(), InMemoryBreakerStore(), InMemoryFallbackQueue()
    return (RedisDedupStore(client, f"{ns}dedup:"), RedisBreakerStore(client, f"{ns}circuit:"),
            RedisFallbackQueue(client, f"{ns}fallback:"))


def test_dedup_states(stores):
    dedup = stores[0]
    assert dedup.acquire("k", "m1", 60_000) is DedupOutcome.ACQUIRED
    assert dedup.acquire("k", "m2", 60_000) is DedupOutcome.BUSY
    assert dedup.acquire("k", "m1", 60_000) is DedupOutcome.ACQUIRED
    dedup.release("k", "m2")
    assert dedup.acquire("k", "m2", 60_000) is DedupOutcome.BUSY
    dedup.release("k", "m1")
    assert dedup.acquire("k", "m2", 60_000) is DedupOutcome.ACQUIRED
    dedup.complete("k", "m2", 60_000)
    assert dedup.acquire("k", "m3", 60_000) is DedupOutcome.DONE
    dedup.release("k", "m2")  # a completed key is never released
    assert dedup.acquire("k", "m3", 60_000) is DedupOutcome.DONE
    dedup.complete("w", "m", 1)
    services.wait_for(lambda: dedup.acquire("w", "m4", 60_000) is DedupOutcome.ACQUIRED, timeout=5,
                      message="window end")
    dedup.acquire("lease", "dead-worker", 1)
    services.wait_for(lambda: dedup.acquire("lease", "m5", 60_000) is DedupOutcome.ACQUIRED, timeout=5,
                      message="lease end")


def test_dedup_take_free_takes_only_free_keys_in_one_call(stores):
    dedup = stores[0]
    dedup.complete("done", "m0", 60_000)
    assert dedup.acquire("held", "other", 60_000) is DedupOutcome.ACQUIRED
    assert dedup.acquire("own", "m3", 60_000) is DedupOutcome.ACQUIRED  # an earlier delivery of m3
    items = [("free", "m1", 60_000), ("done", "m2", 60_000), ("own", "m3", 60_000), ("held", "m4", 60_000),
             ("free", "m5", 60_000)]  # the same key twice in one batch: the first takes it
    assert dedup.take_free(items) == [DedupOutcome.ACQUIRED, DedupOutcome.DONE, DedupOutcome.BUSY,
                                      DedupOutcome.BUSY, DedupOutcome.BUSY]
    assert dedup.take_free([]) == []
    assert dedup.acquire("free", "m6", 60_000) is DedupOutcome.BUSY  # m1 holds it
    assert dedup.acquire("own", "m3", 60_000) is DedupOutcome.ACQUIRED  # still m3's, decided at start


def test_dedup_leases_belong_to_a_delivery(stores):
    dedup = stores[0]
    assert dedup.acquire("k", "m1|p1.1", 60_000) is DedupOutcome.ACQUIRED
    assert dedup.acquire("k", "m1|p1.1", 60_000) is DedupOutcome.ACQUIRED  # its own: extended
    assert dedup.acquire("k", "m1|p2.7", 60_000) is DedupOutcome.REDELIVERY  # the same message, delivered again
    assert dedup.acquire("k", "m1|p1.2", 60_000) is DedupOutcome.REDELIVERY  # again, in the same process
    assert dedup.acquire("k", "m2|p1.3", 60_000) is DedupOutcome.BUSY  # another message
    dedup.release("k", "m1|p2.7")  # not the holder: nothing happens
    assert dedup.acquire("k", "m1|p2.7", 60_000) is DedupOutcome.REDELIVERY
    dedup.release("k", "m1|p1.1")
    assert dedup.acquire("k", "m1|p2.7", 60_000) is DedupOutcome.ACQUIRED
    # Message ids may hold "|": the delivery is what follows the last one.
    assert dedup.acquire("p", "a|b|p1.1", 60_000) is DedupOutcome.ACQUIRED
    assert dedup.acquire("p", "a|b|p2.1", 60_000) is DedupOutcome.REDELIVERY
    assert dedup.acquire("p", "a|p2.2", 60_000) is DedupOutcome.BUSY
    # A lease written before holders named their delivery (``r:<message id>``, a rolling deploy).
    assert dedup.acquire("old", "m3", 60_000) is DedupOutcome.ACQUIRED
    assert dedup.acquire("old", "m3|p1.4", 60_000) is DedupOutcome.REDELIVERY
    assert dedup.acquire("old", "m4|p1.5", 60_000) is DedupOutcome.BUSY


def test_dedup_renew_extends_or_retakes_only_its_own_lease(stores):
    dedup = stores[0]
    assert dedup.remaining_ms("k") == 0
    assert dedup.acquire("k", "m1|p1.1", 1_000) is DedupOutcome.ACQUIRED
    assert 0 < dedup.remaining_ms("k") <= 1_000
    assert dedup.renew([("k", "m1|p1.1", 60_000), ("k", "m1|p2.1", 60_000), ("gone", "m2|p1.2", 60_000)]) == [
        True, False, True]  # its own; another delivery's; a lease that lapsed (free): taken again
    assert 59_000 < dedup.remaining_ms("k") <= 60_000
    assert dedup.acquire("gone", "m9|p9.9", 60_000) is DedupOutcome.BUSY  # held again by m2
    dedup.complete("k", "m1|p1.1", 5_000)
    assert dedup.renew([("k", "m1|p1.1", 60_000)]) == [False]  # done: not a lease any more
    assert dedup.acquire("k", "m1|p3.1", 60_000) is DedupOutcome.DONE
    assert 0 < dedup.remaining_ms("k") <= 5_000
    assert dedup.renew([]) == []


def test_dedup_claims_decide_once_between_two_parties(stores):
    dedup = stores[0]
    assert dedup.claim("~retry:m1:1", "dead", 60_000) == "dead"
    assert dedup.claim("~retry:m1:1", "run", 60_000) == "dead"  # the first claim stands
    assert dedup.claim("~retry:m1:2", "run", 60_000) == "run"
    assert dedup.claim("~retry:m1:2", "dead", 60_000) == "run"
    dedup.claim("short", "run", 1)
    services.wait_for(lambda: dedup.claim("short", "dead", 60_000) == "dead", timeout=5, message="claim end")


def test_dedup_one_winner_among_concurrent_acquirers(stores):
    dedup = stores[0]
    results: list[DedupOutcome] = []
    barrier = threading.Barrier(16)

    def contend(i: int) -> None:
        barrier.wait()
        results.append(dedup.acquire("race", f"m{i}", 60_000))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(DedupOutcome.ACQUIRED) == 1 and results.count(DedupOutcome.BUSY) == 15


def test_dedup_redelivery_whose_lease_ends_mid_acquire_takes_the_key(redis_ns):
    # SET NX GET saw the message's own lease; it ended before the extend that followed (the
    # expiry is simulated by deleting it in between). The key is free: the message must run,
    # not be skipped as "busy" (acknowledged, and never run by anyone).
    client, ns = redis_ns

    class ExpiresAfterGet:
        def __init__(self, real):  # type: ignore[no-untyped-def]
            self.real = real

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.real, name)

        def set(self, name, *args, **kwargs):  # type: ignore[no-untyped-def]
            held = self.real.set(name, *args, **kwargs)
            if kwargs.get("get") and held is not None:
                self.real.delete(name)
            return held

    dedup = RedisDedupStore(ExpiresAfterGet(client), f"{ns}dedup:")
    assert dedup.acquire("k", "m1", 60_000) is DedupOutcome.ACQUIRED
    assert dedup.acquire("k", "m1", 60_000) is DedupOutcome.ACQUIRED  # its own lease, gone meanwhile
    assert client.get(f"{ns}dedup:k") == b"r:m1"


def test_breaker_transitions(stores):
    store, now = stores[1], 1_000_000
    policy = BreakerPolicy(failure_threshold=2, window_ms=1000, reset_timeout_ms=500, half_open_trials=2)
    assert store.allow("c", now, policy).allowed
    assert store.record_failure("c", now, policy) is None
    assert store.record_failure("c", now + 2000, policy) is None  # the first left the window
    assert store.record_failure("c", now + 2100, policy) == (CircuitState.CLOSED, CircuitState.OPEN)
    assert store.record_failure("c", now + 2150, policy) is None  # already open
    refused = store.allow("c", now + 2200, policy)
    assert (refused.allowed, refused.state, refused.retry_at_ms) == (False, CircuitState.OPEN, now + 2600)
    assert store.peek("c", now + 2200, policy) == (CircuitState.OPEN, False)
    assert store.peek("c", now + 2700, policy) == (CircuitState.OPEN, True)
    # Judged by the reset timeout it was opened with, not the caller's default (30 s).
    assert store.peek("c", now + 2700, BreakerPolicy()) == (CircuitState.OPEN, True)
    first = store.allow("c", now + 2700, policy)
    assert first.allowed and first.trial and first.transition == (CircuitState.OPEN, CircuitState.HALF_OPEN)
    assert store.allow("c", now + 2700, policy).trial
    assert not store.allow("c", now + 2710, policy).allowed  # two trials out
    store.release_trial("c")  # one ended with bad input
    assert store.allow("c", now + 2720, policy).trial
    assert store.record_failure("c", now + 2800, policy) == (CircuitState.HALF_OPEN, CircuitState.OPEN)
    trial = store.allow("c", now + 3400, policy)
    assert store.record_success("c", trial.trial) == (CircuitState.HALF_OPEN, CircuitState.CLOSED)
    assert store.record_success("c", False) is None
    assert store.states() == {"c": CircuitState.CLOSED}
    # Trials that never report (their worker died) expire after the reset timeout.
    for t in (4000, 4001):
        store.record_failure("d", now + t, policy)
    store.allow("d", now + 4600, policy)
    store.allow("d", now + 4600, policy)
    assert not store.allow("d", now + 4700, policy).allowed
    assert store.allow("d", now + 5200, policy).trial
    assert store.states()["d"] is CircuitState.HALF_OPEN


def test_fallback_queue_claim_ack_recover_lock(stores):
    queue = stores[2]
    for i in range(5):
        queue.push("c", f"m{i}".encode())
    queue.push("other", b"x")
    assert queue.circuits() == ["c", "other"]
    assert queue.lengths() == {"c": 5, "other": 1}
    assert queue.claim("c", 2) == [b"m0", b"m1"]
    queue.ack("c", b"m0")
    assert queue.lengths() == {"c": 4, "other": 1}  # m1 claimed, not acked: still counted
    assert queue.recover("c") == 1
    assert queue.claim("c", 10) == [b"m1", b"m2", b"m3", b"m4"]
    assert queue.recover("c") == 4
    assert queue.claim("c", 1) == [b"m1"]  # recovered in order, at the head
    assert queue.lock("c", "t1", 60_000) and not queue.lock("c", "t2", 60_000)
    queue.unlock("c", "t2")  # not the holder
    assert not queue.lock("c", "t2", 60_000)
    queue.unlock("c", "t1")
    assert queue.lock("c", "t2", 60_000)


def _letter(actor: str = "deliver", failed_at: datetime | None = None, attempts: int = 3, **kw) -> DeadLetter:
    now = failed_at or datetime.now(UTC)
    return DeadLetter(id=new_id(), message_id=kw.pop("message_id", new_id()), actor=actor, queue="q",
                      args=[1, {"a": "b"}], kwargs={"x": 1}, options={"dedup_key": "k", "correlation_id": "c"},
                      error_type="domain.errors.TransientError", error="down", traceback="Traceback ...",
                      reason="retries_exhausted", attempts=attempts, enqueued_at=now - timedelta(minutes=1),
                      failed_at=now, correlation_id="c", **kw)


def test_sql_dead_letter_store(database_url):
    engine = make_engine(database_url)
    store = SqlDeadLetterStore(engine)
    now = datetime.now(UTC)
    old = _letter(failed_at=now - timedelta(days=3))
    new = _letter(actor="thumbnail", failed_at=now)
    assert store.add(old) and store.add(new)
    assert not store.add(_letter(message_id=old.message_id, attempts=old.attempts))  # the same failure again
    got = store.get(old.id)
    assert got.asdict() == old.asdict()
    mine = {old.id, new.id}
    listed = [x.id for x in store.list(limit=1000) if x.id in mine]
    assert listed == [new.id, old.id]  # newest first
    assert {x.id for x in store.list(actor="thumbnail")} >= {new.id} and old.id not in {
        x.id for x in store.list(actor="thumbnail")}
    assert old.id in {x.id for x in store.list(older_than=now - timedelta(days=1))}
    assert new.id not in {x.id for x in store.list(older_than=now - timedelta(days=1))}
    assert old.id not in {x.id for x in store.list(newer_than=now - timedelta(days=1))}
    before = store.count(replayed=False)
    store.mark_replayed(old.id, now, "m-new")
    assert store.get(old.id).replay_message_id == "m-new"
    assert store.count(replayed=False) == before - 1
    assert old.id in {x.id for x in store.list(replayed=True)}
    assert store.delete([old.id, new.id, new_id()]) == 2
    assert store.get(old.id) is None
    engine.dispose()


def test_sql_dead_letter_store_takes_a_failure_whose_text_has_nul_bytes(database_url):
    # PostgreSQL text refuses NUL (and UTF-8 a lone surrogate): such a letter failed every write,
    # and the message carrying it came back hourly for ever without the letter reaching the store.
    engine = make_engine(database_url)
    store = SqlDeadLetterStore(engine)
    letter = _letter()
    letter.error, letter.traceback = "bad \x00 byte", "Traceback ...\nValueError: bad \x00 byte in \udcff.jpg"
    assert store.add(letter)
    got = store.get(letter.id)
    assert "\x00" not in got.error and got.error.startswith("bad ") and got.error.endswith(" byte")
    assert "\x00" not in got.traceback and got.traceback.endswith("\\udcff.jpg")
    store.delete([letter.id])
    engine.dispose()


def test_sql_dead_letter_store_takes_a_correlation_id_longer_than_its_column(database_url):
    # Producers choose correlation ids (a request id, a trace header): one longer than the
    # 64-character column failed every write on PostgreSQL, for ever, like the NUL above.
    engine = make_engine(database_url)
    store = SqlDeadLetterStore(engine)
    cid = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    letter = _letter()
    letter.correlation_id, letter.options = cid, {**letter.options, "correlation_id": cid}
    assert store.add(letter)
    got = store.get(letter.id)
    assert got.correlation_id == cid[:64] and got.options["correlation_id"] == cid
    store.delete([letter.id])
    engine.dispose()


def test_sql_dead_letter_store_takes_a_payload_with_nan_or_infinity(database_url):
    # Dramatiq's JSON carries NaN and Infinity, PostgreSQL's json refuses them: such a payload's
    # letter failed every write, for ever, like the NUL above.
    engine = make_engine(database_url)
    store = SqlDeadLetterStore(engine)
    letter = _letter()
    letter.args, letter.kwargs = [float("nan"), [float("inf")]], {"lat": float("-inf"), "ok": 1.5}
    assert store.add(letter)
    got = store.get(letter.id)
    assert got.args == ["NaN", ["Infinity"]] and got.kwargs == {"lat": "-Infinity", "ok": 1.5}
    store.delete([letter.id])
    engine.dispose()


def test_dlq_cli_lists_shows_replays_and_purges(base_env):
    env = dict(base_env, BROKER_URL=services.REDIS_URL)
    assert services.run_cli(["migrate"], env).returncode == 0
    engine = make_engine(env["DATABASE_URL"])
    store = SqlDeadLetterStore(engine)
    now = datetime.now(UTC)
    # relay_outbox is a real actor: replay needs one the producer declares.
    letter = _letter(actor="relay_outbox", failed_at=now - timedelta(hours=2))
    letter.args, letter.kwargs = [], {}
    letter.options = {"correlation_id": "corr-9", "retries": 3, "max_retries": 3}
    letter.correlation_id = "corr-9"
    recent = _letter(failed_at=now)
    store.add(letter)
    store.add(recent)
    dead_event = DomainEvent("image.processed", "image", new_id(), {})
    uow = uow_factory(engine)
    with uow() as u:
        u.add_event(dead_event)
        u.outbox.mark_failed(dead_event.id, attempts=4, error="no actor", next_attempt_at=utcnow(), dead=True)
        u.commit()
    client = redis.Redis.from_url(services.REDIS_URL)
    try:
        listed = services.run_cli(["dlq", "list", "--json"], env)
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(r["source"], r["id"]) for r in rows] == [("message", recent.id), ("message", letter.id),
                                                           ("outbox", dead_event.id)]
        older = services.run_cli(["dlq", "list", "--older-than", "1h", "--no-outbox"], env)
        assert older.stdout.startswith(letter.id) and recent.id not in older.stdout
        by_actor = services.run_cli(["dlq", "list", "--actor", "deliver"], env)
        assert recent.id in by_actor.stdout and letter.id not in by_actor.stdout

        shown = services.run_cli(["dlq", "show", letter.id], env)
        assert shown.returncode == 0 and "corr-9" in shown.stdout and "Traceback ..." in shown.stdout
        assert dead_event.id in services.run_cli(["dlq", "show", dead_event.id], env).stdout

        replayed = services.run_cli(["dlq", "replay", letter.id], env)
        assert replayed.returncode == 0, replayed.stderr
        queued = [Message.decode(v) for v in client.hvals(f"dramatiq:{env['QUEUE_PREFIX']}outbox.msgs")]
        assert len(queued) == 1
        message = queued[0]
        assert message.actor_name == "relay_outbox" and f"replayed as message {message.message_id}" in replayed.stdout
        assert message.options["correlation_id"] == "corr-9"
        assert message.options["dedup_key"] == f"replay:{letter.id}" and message.options["replay_of"] == letter.id
        assert "retries" not in message.options and message.options["max_retries"] == 3
        again = services.run_cli(["dlq", "replay", letter.id], env)
        assert again.returncode == 1 and "--force" in again.stdout
        assert letter.id not in services.run_cli(["dlq", "list"], env).stdout
        assert letter.id in services.run_cli(["dlq", "list", "--replayed"], env).stdout

        outbox_replay = services.run_cli(["dlq", "replay", dead_event.id], env)
        assert "outbox event due again" in outbox_replay.stdout, outbox_replay.stderr

        assert services.run_cli(["dlq", "purge"], env).returncode != 0  # no filter: refused
        purged = services.run_cli(["dlq", "purge", "--replayed"], env)
        assert "purged 1 " in purged.stdout
        assert store.get(letter.id) is None and store.get(recent.id) is not None
    finally:
        services.purge_queues(services.REDIS_URL, env["QUEUE_PREFIX"], ())
        client.close()
        engine.dispose()
