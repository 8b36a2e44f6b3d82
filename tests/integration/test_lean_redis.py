"""The lean Redis path of the dedup store, against the real server: replies of every shape, error
replies that leave the connection usable, dropped connections, and the URL's database."""

from __future__ import annotations

import threading

import pytest
import redis

from adapters.state.redis import RedisDedupStore
from adapters.state.resp import LeanConnections, RespError
from domain.resilience import DedupOutcome
from tests import services


def test_set_nx_get_answers_nil_then_the_value_also_for_values_larger_than_one_read(redis_ns):
    c, ns = redis_ns
    lean = LeanConnections(c)
    big = b"x" * 200_000  # several recv() calls
    assert lean.set_nx_get(f"{ns}k".encode(), big, 60_000) is None
    assert lean.set_nx_get(f"{ns}k".encode(), b"other", 60_000) == big
    assert c.get(f"{ns}k") == big
    assert 0 < c.pttl(f"{ns}k") <= 60_000


def test_an_error_reply_raises_and_the_connection_stays_in_step(redis_ns):
    c, ns = redis_ns
    c.rpush(f"{ns}list", "a")
    lean = LeanConnections(c)
    with pytest.raises(RespError, match="WRONGTYPE"):
        lean.set_nx_get(f"{ns}list".encode(), b"v", 1000)
    assert lean.set_nx_get(f"{ns}fresh".encode(), b"v", 1000) is None  # the reply is this command's
    with pytest.raises(RespError):  # one bad command among many: all replies read, then raised
        lean.set_many([(f"{ns}a".encode(), b"1", 1000), (f"{ns}b".encode(), b"2", 0), (f"{ns}c".encode(), b"3", 1000)])
    assert c.get(f"{ns}a") == b"1" and c.get(f"{ns}c") == b"3"
    assert lean.set_nx_get(f"{ns}fresh".encode(), b"w", 1000) == b"v"


def test_set_many_pipelines_thousands_in_one_round_trip(redis_ns):
    c, ns = redis_ns
    lean = LeanConnections(c)
    lean.set_many([(f"{ns}m{i}".encode(), b"done", 60_000) for i in range(5000)])
    assert c.mget([f"{ns}m0", f"{ns}m4999"]) == [b"done", b"done"]
    assert len(list(c.scan_iter(f"{ns}m*", count=10_000))) == 5000


def test_a_killed_connection_fails_one_call_and_the_next_reconnects(redis_ns):
    c, ns = redis_ns
    lean = LeanConnections(c)
    assert lean.set_nx_get(f"{ns}a".encode(), b"1", 60_000) is None
    host, port = lean._local.conn._sock.getsockname()[:2]
    c.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}")  # this connection only
    with pytest.raises(redis.ConnectionError):
        lean.set_nx_get(f"{ns}b".encode(), b"1", 60_000)
    assert lean.set_nx_get(f"{ns}b".encode(), b"1", 60_000) is None


def test_a_server_that_is_down_is_a_connection_error():
    down = redis.Redis.from_url(f"redis://127.0.0.1:{services.free_port()}/0", socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        LeanConnections(down).set_nx_get(b"k", b"v", 1000)
    with pytest.raises(redis.ConnectionError):
        RedisDedupStore(down, "atelier:x:").acquire("k", "m", 1000)


def test_the_urls_database_is_used():
    c = redis.Redis.from_url(services.REDIS_URL.rsplit("/", 1)[0] + "/5")
    key = f"atelier:{services.unique('db')}"
    try:
        assert LeanConnections(c).set_nx_get(key.encode(), b"v", 60_000) is None
        assert c.get(key) == b"v"
        assert redis.Redis.from_url(services.REDIS_URL.rsplit("/", 1)[0] + "/0").get(key) is None
    finally:
        c.delete(key)


def test_threads_each_use_their_own_connection_and_one_key_has_one_winner(redis_ns):
    c, ns = redis_ns
    store = RedisDedupStore(c, ns)
    outcomes = []

    def contend(token):
        outcomes.append(store.acquire("same", token, 60_000))

    threads = [threading.Thread(target=contend, args=(f"m{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(DedupOutcome.ACQUIRED) == 1 and outcomes.count(DedupOutcome.BUSY) == 15
    store.complete_many([("same", "m0", 60_000), ("other", "m1", 60_000)])
    assert store.acquire("same", "m9", 60_000) is DedupOutcome.DONE
    assert store.acquire("other", "m9", 60_000) is DedupOutcome.DONE
