"""The middleware stack end to end, on real Redis and real RabbitMQ: a producer process sends, a
real `dramatiq actors` worker consumes. Correlation ids through a chain, dedup windows, a circuit
breaker guarding a real HTTP server, dead letters after retries or at once, and replay."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from adapters.sql.deadletters import SqlDeadLetterStore
from adapters.sql.engine import make_engine
from adapters.state.redis import RedisBreakerStore
from domain.resilience import CircuitState
from tests import services
from tests.e2e.ops_support import cleanup_redis

pytestmark = pytest.mark.e2e

MODULE = "tests.e2e.resilience_actors"


class Dependency:
    """An HTTP server on 127.0.0.1 that answers 200, or 503 once told to fail; counts requests."""

    def __init__(self) -> None:
        self.failing = False
        self.requests: Counter[tuple[str, int]] = Counter()  # (outcome, n)
        dep = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.path.rsplit("/", 1)[1])
                code = 503 if dep.failing else 200
                dep.requests[("fail" if dep.failing else "ok", n)] += 1
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def env(broker_env):
    env = dict(broker_env)
    env.update(TEST_STATE_REDIS_URL=services.REDIS_URL, TEST_STATE_NS=services.unique("mw"))
    dependency = Dependency()
    env["TEST_HTTP_URL"] = dependency.url
    assert services.run_cli(["migrate"], env).returncode == 0
    state = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    yield env, state, dependency
    dependency.close()
    state.close()
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("resilience", "outbox"))
    cleanup_redis(env["QUEUE_PREFIX"], env["TEST_STATE_NS"])
    client = redis.Redis.from_url(services.REDIS_URL)
    keys = list(client.scan_iter(f"atelier:{env['QUEUE_PREFIX']}*"))
    if keys:
        client.delete(*keys)
    client.close()


def send(env: dict[str, str], *args: str) -> None:
    sent = subprocess.run([sys.executable, "-m", MODULE, *args], env=env, cwd=services.ROOT,
                          capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr


def worker(env: dict[str, str], tmp_path, name: str = "worker") -> services.WorkerProcess:
    return services.WorkerProcess(env, tmp_path / f"{name}.log", threads=4, modules=(MODULE,))


def records(w: services.WorkerProcess) -> list[dict]:
    return [json.loads(line) for line in w.output().splitlines() if line.startswith("{")]


def test_correlation_id_survives_a_chain_and_shows_in_log_lines(env, tmp_path):
    env, state, _ = env
    ns = env["TEST_STATE_NS"]
    with worker(env, tmp_path) as w:
        send(env, "chain", "corr-e2e-1")
        services.wait_for(lambda: state.lrange(f"{ns}:chain", 0, -1), timeout=60, message="chain done")
        steps = services.wait_for(lambda: len(s := [r for r in records(w) if r.get("event") == "chain step"]) == 2
                                  and s, timeout=30, message="both log lines")
    first, second = sorted(steps, key=lambda r: r["step"])
    assert first["correlation_id"] == second["correlation_id"] == "corr-e2e-1"
    assert second["causation_id"] == first["message_id"]
    assert (first["actor"], second["actor"]) == ("chain_first", "chain_second")


def test_duplicate_sends_within_the_window_run_once(env, tmp_path):
    env, state, _ = env
    ns = env["TEST_STATE_NS"]
    with worker(env, tmp_path) as w:
        send(env, "effect", "A", "5")  # five messages, one order
        send(env, "effect", "B", "1")
        services.wait_for(lambda: "B" in state.hgetall(f"{ns}:effects"), timeout=60, message="order B")
        services.wait_for(lambda: len([r for r in records(w) if "dedup key" in r.get("event", "")]) >= 4,
                          timeout=60, message="four duplicates skipped")
        send(env, "effect", "A", "2")  # later, still within the window
        services.wait_for(lambda: len([r for r in records(w) if "dedup key" in r.get("event", "")]) >= 6,
                          timeout=60, message="two more skipped")
    assert state.hgetall(f"{ns}:effects") == {"A": "1", "B": "1"}


def test_breaker_opens_parks_and_after_recovery_runs_every_parked_message_once(env, tmp_path):
    env, state, dependency = env
    ns = env["TEST_STATE_NS"]
    breakers = RedisBreakerStore(redis.Redis.from_url(services.REDIS_URL), f"atelier:{env['QUEUE_PREFIX']}circuit:")
    with worker(env, tmp_path) as w:
        send(env, "guarded", "0", "3")
        services.wait_for(lambda: len(state.hgetall(f"{ns}:guarded")) == 3, timeout=60, message="healthy calls")
        dependency.failing = True
        send(env, "guarded", "10", "30")  # twenty messages while the dependency fails
        services.wait_for(lambda: breakers.states().get("http:test") is CircuitState.OPEN, timeout=60,
                          message="circuit open")
        services.wait_for(lambda: len([r for r in records(w) if "parked" in r.get("event", "")]) >= 10,
                          timeout=60, message="messages parked")
        failed_calls = sum(c for (outcome, _), c in dependency.requests.items() if outcome == "fail")
        dependency.failing = False
        services.wait_for(lambda: len(state.hgetall(f"{ns}:guarded")) == 23, timeout=120,
                          message="every message ran after recovery")
        services.wait_for(lambda: breakers.states()["http:test"] is CircuitState.CLOSED, timeout=30,
                          message="circuit closed")
        log = records(w)
    done = state.hgetall(f"{ns}:guarded")
    assert done == {str(n): "1" for n in [*range(3), *range(10, 30)]}  # each exactly once
    assert all(c == 1 for (outcome, _), c in dependency.requests.items() if outcome == "ok")
    # The dependency was spared: far fewer failing calls than 20 messages retried 50 times.
    assert failed_calls < 20
    transitions = [r["event"] for r in log if r.get("event", "").startswith("Circuit 'http:test':")]
    assert "Circuit 'http:test': closed -> open." in transitions
    assert "Circuit 'http:test': half_open -> closed." in transitions
    breakers.client.close()


def test_poison_message_is_dead_lettered_after_retries_and_replayed(env, tmp_path):
    env, state, _ = env
    ns = env["TEST_STATE_NS"]
    engine = make_engine(env["DATABASE_URL"])
    letters = SqlDeadLetterStore(engine)

    def letter_of(actor: str):  # this run's letters: the database is shared by the session
        return [x for x in letters.list(actor=actor) if x.queue.startswith(env["QUEUE_PREFIX"])]

    with worker(env, tmp_path):
        send(env, "poison", "1", f"poison-{ns}")
        send(env, "refuse", "2")
        [poisoned] = services.wait_for(lambda: letter_of("poison"), timeout=90, message="poison dead-lettered")
        refused = services.wait_for(lambda: letter_of("refuse"), timeout=60, message="refuse dead-lettered")
        times = [float(t) for t in state.lrange(f"{ns}:poison:1", 0, -1)]
        assert len(times) == 4  # first try + max_retries=3
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        # Exponential backoff with jitter: 1-2 s, 2-4 s, 4-8 s (+ up to 1 s of delay-queue tick).
        assert gaps[2] > gaps[0] and gaps[2] >= 4
        assert poisoned.reason == "retries_exhausted" and poisoned.attempts == 4
        assert poisoned.error_type == "domain.errors.TransientError" and "still failing" in poisoned.traceback
        assert poisoned.correlation_id == f"poison-{ns}" and poisoned.args == [1]
        [refused] = refused
        assert refused.reason == "permanent" and refused.attempts == 1 and state.get(f"{ns}:refused") == "1"

        state.set(f"{ns}:healed", "1")
        replay = services.run_cli(["dlq", "replay", poisoned.id], env)
        assert replay.returncode == 0, replay.stderr
        services.wait_for(lambda: state.lrange(f"{ns}:poison_ok", 0, -1), timeout=60, message="replayed run")
    assert state.lrange(f"{ns}:poison_ok", 0, -1) == [f"poison-{ns}"]  # same correlation id, ran once
    assert letters.get(poisoned.id).replayed_at is not None
    engine.dispose()


def test_fallback_circuit_parks_in_its_queue_and_drain_fallback_sends_each_back_once(env, tmp_path):
    env, state, dependency = env
    ns = env["TEST_STATE_NS"]
    client = redis.Redis.from_url(services.REDIS_URL)
    fallback_key = f"atelier:{env['QUEUE_PREFIX']}fallback:http:fallback"
    with worker(env, tmp_path):
        dependency.failing = True
        send(env, "guarded_fallback", "0", "12")
        services.wait_for(lambda: client.llen(fallback_key) >= 9, timeout=60,
                          message="messages parked in the fallback queue")
        dependency.failing = False

        def drained() -> bool:
            if len(state.hgetall(f"{ns}:fallback_done")) == 12:
                return True
            send(env, "drain")  # what the scheduler does every FALLBACK_POLL_INTERVAL
            return False

        services.wait_for(drained, timeout=120, interval=0.5, message="every parked message ran")
    assert state.hgetall(f"{ns}:fallback_done") == {str(n): "1" for n in range(12)}
    assert client.llen(fallback_key) == 0 and client.llen(f"{fallback_key}:processing") == 0
    client.close()
