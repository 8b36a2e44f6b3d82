"""The Redis JobStore on the shared Redis (a namespace per test), and /jobs, /workers on the ops
server behind its auth, with the broker's Jobs middleware writing the records."""

from __future__ import annotations

import threading
from wsgiref.simple_server import make_server

import dramatiq
import httpx
import pytest
import redis

from adapters.state.jobs import RedisJobStore
from bootstrap import Container
from bootstrap.broker import build_broker
from bootstrap.settings import load_settings
from entrypoints.commands.ops import build_app
from entrypoints.ops import _QuietHandler, _Server
from middleware.jobs import Jobs
from tests import services


@pytest.fixture
def store():
    client = redis.Redis.from_url(services.REDIS_URL)
    namespace = f"atelier:{services.unique('t')}_jobs:"
    yield RedisJobStore(client, namespace, retention_s=60)
    for key in client.scan_iter(f"{namespace}*"):
        client.delete(key)
    client.close()


def test_an_older_update_only_fills_missing_fields(store):
    store.write([("m1", 100 * 8 + 1, {"status": "running", "started_at": "100"})])
    store.write([("m1", 90 * 8, {"status": "queued", "enqueued_at": "90", "actor": "a"})])  # a producer's late flush
    record = store.get("m1")
    assert record["status"] == "running" and record["enqueued_at"] == "90" and record["actor"] == "a"
    store.write([("m1", 120 * 8 + 4, {"status": "done"})])
    assert store.get("m1")["status"] == "done"
    # A redelivery of it, put back while it ran and skipped as done after: the record says done.
    store.write([("m1", 130 * 8 + 4, {"status": "skipped", "reason": "duplicate", "finished_at": "130"})])
    assert store.get("m1")["status"] == "done" and "reason" not in store.get("m1")


def test_the_in_memory_store_keeps_a_finished_record_against_a_later_skip():
    from adapters.state.jobs import InMemoryJobStore

    store = InMemoryJobStore()
    store.write([("m1", 8 * 100, {"status": "failed", "reason": "permanent"})])
    store.write([("m1", 8 * 130, {"status": "skipped", "reason": "duplicate"})])
    assert store.get("m1")["status"] == "failed" and store.get("m1")["reason"] == "permanent"


def test_cancel_takes_a_waiting_job_at_once_and_marks_a_running_one(store):
    store.write([("w", 8, {"status": "delayed", "actor": "a"}), ("r", 8, {"status": "running", "actor": "a"}),
                 ("d", 8, {"status": "done", "actor": "a"})])
    assert store.request_cancel("w", 1000) == "delayed" and store.get("w")["status"] == "cancelled"
    # the delayed message moved to its queue later: the cancel holds
    store.write([("w", 2000 * 8, {"status": "queued"})])
    assert store.get("w")["status"] == "cancelled"
    assert store.request_cancel("r", 1001) == "running"
    assert store.get("r")["status"] == "running" and store.get("r")["cancel_requested_at"] == "1001"
    assert store.request_cancel("d", 1002) == "done" and store.get("d")["status"] == "done"
    assert store.request_cancel("unknown", 1003) is None and store.get("unknown") is None
    ids, cursor = store.cancelled_since(0)
    assert sorted(ids) == ["r", "w"] and cursor == 1001
    assert store.cancelled_since(1002) == ([], 1002)


def test_records_expire_after_the_retention_window(store):
    store.write([("m", 8, {"status": "queued"})])
    ttl = store.client.pttl(f"{store.namespace}j:m")
    assert 0 < ttl <= 60_000


def test_recent_filters_and_workers_expire(store):
    store.write([(f"m{i}", 8 * i, {"status": "done" if i % 2 else "failed", "actor": f"a{i % 3}"}) for i in range(30)])
    assert len(store.recent(5)) == 5
    assert all(r["status"] == "failed" for _, r in store.recent(100, status="failed"))
    assert {m for m, _ in store.recent(100, actor="a0", status="done")} == {"m3", "m9", "m15", "m21", "m27"}
    store.heartbeat("h:1", {"id": "h:1", "host": "h", "pid": 1}, ttl_ms=60_000)
    store.heartbeat("h:2", {"id": "h:2", "host": "h", "pid": 2}, ttl_ms=-1000)  # its ttl ended
    assert [w["pid"] for w in store.workers()] == [1]
    store.remove_worker("h:1")
    assert store.workers() == []


USER, PASSWORD = "operator", "s3cret pass"


def test_ops_server_follows_and_cancels_jobs_behind_its_auth(sqlite_url, tmp_path):
    prefix = services.unique("t") + "_"
    settings = load_settings(broker_url=services.REDIS_URL, queue_prefix=prefix, database_url=sqlite_url,
                             local_store_dir=tmp_path / "objects", ops_username=USER, ops_password=PASSWORD)
    broker = build_broker(settings)

    @dramatiq.actor(broker=broker, queue_name=prefix + "media", actor_name="noop")
    def noop(n):  # pragma: no cover - never run: no worker
        pass

    container = Container(settings)
    server = make_server("127.0.0.1", 0, build_app(settings, container, broker), server_class=_Server,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        import bootstrap.container as bc

        bc.set_container(container)
        message = noop.send(1)
        next(m for m in broker.middleware if isinstance(m, Jobs)).flush()
        auth = (USER, PASSWORD)
        assert httpx.get(f"{url}/jobs/{message.message_id}").status_code == 401
        job = httpx.get(f"{url}/jobs/{message.message_id}", auth=auth).json()
        assert job["status"] == "queued" and job["actor"] == "noop" and job["queue"] == prefix + "media"
        assert httpx.get(f"{url}/jobs/nope", auth=auth).status_code == 404
        listed = httpx.get(f"{url}/jobs", params={"actor": "noop", "limit": 5}, auth=auth).json()["jobs"]
        assert [j["message_id"] for j in listed] == [message.message_id]
        assert httpx.get(f"{url}/jobs", params={"status": "bogus"}, auth=auth).status_code == 400
        for _ in range(2):  # idempotent
            r = httpx.delete(f"{url}/jobs/{message.message_id}", auth=auth)
            assert r.status_code == 202 and r.json()["status"] == "cancelled"
        assert httpx.delete(f"{url}/jobs/nope", auth=auth).status_code == 404
        assert httpx.get(f"{url}/workers", auth=auth).json() == {"workers": []}
    finally:
        bc.set_container(None)
        server.shutdown()
        server.server_close()
        client = redis.Redis.from_url(services.REDIS_URL)
        for key in client.scan_iter(f"atelier:{prefix}*"):
            client.delete(key)
        container.close()
        services.purge_queues(services.REDIS_URL, prefix, ("media",))


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_a_finished_record_never_goes_back_to_waiting(kind, store):
    """The enqueue that moves a delayed message to its queue can record 'queued' after the message
    ran: on RabbitMQ its publisher confirm comes back after a worker already took it."""
    from adapters.state.jobs import InMemoryJobStore

    jobs = store if kind == "redis" else InMemoryJobStore()
    jobs.write([("m", 100 * 8 + 4, {"status": "done", "finished_at": "100"})])
    jobs.write([("m", 101 * 8, {"status": "queued", "queue": "q"})])  # later by the clock
    assert jobs.get("m")["status"] == "done" and jobs.get("m")["queue"] == "q"
    jobs.write([("c", 8, {"status": "cancelled"})])
    jobs.write([("c", 9 * 8, {"status": "retrying"})])
    assert jobs.get("c")["status"] == "cancelled"


def test_a_record_with_text_redis_cannot_encode_does_not_hold_up_the_others(store):
    """An exception text or a producer's message id with a lone surrogate (both reach the record from
    outside): the batch is written, the text with a replacement character, the rest as it came."""
    store.write([("ok-1", 8, {"status": "done", "actor": "a"}),
                 ("bad", 8, {"status": "failed", "error": "OSError: '/tmp/\udcff.jpg'", "note": "a\x1fb\x1ec"}),
                 ("\ud800id", 8, {"status": "done"}),
                 ("ok-2", 8, {"status": "done", "actor": "a"})])
    assert store.get("ok-1")["status"] == "done" and store.get("ok-2")["status"] == "done"
    bad = store.get("bad")
    assert bad["status"] == "failed" and bad["error"].startswith("OSError: '/tmp/") and bad["note"] == "a\x1fb\x1ec"
    assert {m for m, _ in store.recent(10)} >= {"ok-1", "bad", "ok-2"}


def test_a_batch_larger_than_a_script_call_is_written_whole(store):
    from adapters.state.jobs import CHUNK

    n = CHUNK * 2 + 7
    store.write([(f"m{i}", 8 * i, {"status": "done", "attempts": 1, "started_at": 1764496000123}) for i in range(n)])
    assert len(store.recent(n + 10)) == n
    assert store.get(f"m{n - 1}") == {"status": "done", "attempts": "1", "started_at": "1764496000123",
                                      "order": str(8 * (n - 1))}


def test_values_of_any_json_type_are_kept_as_text(store):
    store.write([("m", 8, {"status": "done", "attempts": 2, "flag": True, "big": 10**30, "ratio": 0.5, "gone": None})])
    record = store.get("m")
    assert record["attempts"] == "2" and record["flag"] == "true" and record["ratio"] == "0.5"
    assert float(record["big"]) == 1e30 and "gone" not in record


def test_a_message_id_that_is_not_text_does_not_hold_up_every_later_record(store):
    """A producer that is not ours can send "message_id": null (or true): Dramatiq decodes and runs
    it. The script's prefix .. id fails on it, the write keeps the batch for the next one, and the
    next fails the same way: no record of this worker is written again."""
    from dramatiq.broker import MessageProxy

    jobs = Jobs(lambda: store, flush_interval=3600)
    odd = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}, message_id=None)
    jobs.before_process_message(None, MessageProxy(odd))
    jobs.after_process_message(None, MessageProxy(odd))
    jobs.flush()
    later = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    jobs.before_process_message(None, MessageProxy(later))
    jobs.after_process_message(None, MessageProxy(later))
    jobs.flush()
    jobs.flush()
    assert store.get(later.message_id) is not None and store.get(later.message_id)["status"] == "done"


def test_an_option_of_another_type_is_kept_as_its_text_not_a_lua_address(store):
    """A producer's correlation_id that is an object (a tracing carrier, say) was kept as its text
    before (and still is by the in-memory store); the script writes Lua's 'table: 0x...'."""
    from adapters.state.jobs import InMemoryJobStore

    memory = InMemoryJobStore()
    update = [("m", 8, {"status": "queued", "correlation_id": {"trace": "abc"}})]
    store.write(update)
    memory.write(update)
    assert "table: 0x" not in store.get("m")["correlation_id"]
    assert "abc" in store.get("m")["correlation_id"] and "abc" in memory.get("m")["correlation_id"]


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_a_redelivery_running_again_leaves_a_done_record_done_but_a_replay_of_a_failed_one_runs(kind, store):
    from adapters.state.jobs import InMemoryJobStore

    jobs = store if kind == "redis" else InMemoryJobStore()
    jobs.write([("d", 100 * 8 + 4, {"status": "done", "finished_at": 100}),
                ("f", 100 * 8 + 4, {"status": "failed", "finished_at": 100})])
    jobs.write([("d", 200 * 8 + 1, {"status": "running", "attempts": 1}),
                ("f", 200 * 8 + 1, {"status": "running", "attempts": 1})])
    assert jobs.get("d")["status"] == "done" and jobs.get("f")["status"] == "running"


def test_a_write_redis_refuses_as_a_whole_is_kept_for_the_next_write_not_dropped(store):
    """Review finding: the per-update fallback takes any ResponseError for one update the script
    cannot take. Redis refuses every call for a while with a ResponseError too: READONLY (a
    failover: the client still talks to the old primary, now a replica), OOM (maxmemory), MISCONF
    (a failed RDB save), BUSY (another client's script), NOPERM. Every update of the batch is then
    tried alone, refused, logged one warning each, and dropped: the records of that window are
    lost (a "done" never written leaves the record "running" until it expires), where a failed
    write used to be kept and written again once Redis took writes."""
    from dramatiq.broker import MessageProxy

    real, refusing, calls = store._write, [True], []

    def write(keys, args):
        calls.append(1)
        if refusing[0]:
            raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")
        return real(keys=keys, args=args)

    store._write = write
    jobs = Jobs(lambda: store, flush_interval=3600)
    messages = [dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}) for _ in range(3)]
    for message in messages:
        jobs.before_process_message(None, MessageProxy(message))
        jobs.after_process_message(None, MessageProxy(message))
    jobs.flush()  # Redis refuses: read only for the failover's few seconds
    refused_calls = len(calls)
    refusing[0] = False
    jobs.flush()
    assert [(store.get(m.message_id) or {}).get("status") for m in messages] == ["done"] * 3
    assert refused_calls == 1, f"{refused_calls} script calls for one refused write of 3 updates"


def test_the_middlewares_updates_go_in_one_script_call_and_a_producers_odd_value_is_kept_as_text(store):
    """The store sends the middleware's values as they are: a None among them (a message with no
    correlation id, a failure with no dead letter) fails the script and sends the chunk again one
    update at a time. Each kind of end is one call; a producer's object is written as its JSON."""
    from dramatiq.broker import MessageProxy

    from domain.errors import Cancelled

    real, calls = store._write, []

    def write(keys, args):
        calls.append(1)
        return real(keys=keys, args=args)

    store._write = write
    jobs = Jobs(lambda: store, flush_interval=3600)
    ends = {"done": None, "failed": ValueError("bad"), "cancelled": Cancelled("asked")}
    messages = {}
    for status, exception in ends.items():
        message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
        proxy = MessageProxy(message)
        jobs.after_enqueue(None, message, None)
        jobs.before_process_message(None, proxy)
        if status == "failed":
            proxy.fail()
        jobs.after_process_message(None, proxy, exception=exception)
        messages[status] = message
    jobs.flush()
    assert len(calls) == 1, f"{len(calls)} script calls for one chunk"
    assert {s: store.get(m.message_id)["status"] for s, m in messages.items()} == {s: s for s in ends}
    odd = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={"correlation_id": {"t": 1}},
                           message_timestamp=1.5)
    jobs.after_enqueue(None, odd, None)
    jobs.flush()
    assert store.get(odd.message_id)["correlation_id"] == '{"t": 1}'
    assert store.get(odd.message_id)["enqueued_at"] == "1.5"
