"""atelier's Redis consumer under real `dramatiq actors` workers (default options but threads):
a worker killed with SIGKILL has every message it held run again within the heartbeat timeout
plus a few seconds of another worker being up; raw bodies that are not messages each end as one
dead letter (reason ``undecodable``) while the worker keeps every thread and runs what comes next."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from adapters.sql.deadletters import SqlDeadLetterStore
from adapters.sql.engine import make_engine
from tests import services

pytestmark = pytest.mark.e2e

MODULE = "tests.e2e.recovery_actors"
HEARTBEAT_TIMEOUT_MS = 3000


@pytest.fixture
def env(base_env: dict[str, str]) -> Iterator[tuple[dict[str, str], Any]]:
    env = dict(base_env)
    env.update(BROKER_URL=services.REDIS_URL, REDIS_URL=services.REDIS_URL,
               BROKER_HEARTBEAT_TIMEOUT_MS=str(HEARTBEAT_TIMEOUT_MS),
               TEST_STATE_REDIS_URL=services.REDIS_URL, TEST_STATE_NS=services.unique("rec"))
    state = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    yield env, state
    prefix = env["QUEUE_PREFIX"]
    keys = [*state.scan_iter(f"{env['TEST_STATE_NS']}:*"), *state.scan_iter(f"dramatiq:__acks__.*.{prefix}*"),
            *state.scan_iter(f"atelier:{prefix}*")]
    if keys:
        state.delete(*keys)
    state.close()
    services.purge_queues(env["BROKER_URL"], prefix, ("recovery",))


def send(env: dict[str, str], *keys: str) -> None:
    sent = subprocess.run([sys.executable, "-m", MODULE, *keys], env=env, cwd=services.ROOT, capture_output=True,
                          text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr


def unacked(state: Any, prefix: str) -> dict[str, set[str]]:
    """Ack set of each worker process for the recovery queue: {key: ids}."""
    return {key: state.smembers(key) for key in state.scan_iter(f"dramatiq:__acks__.*.{prefix}recovery", count=1000)}


@pytest.mark.fault
def test_a_killed_workers_messages_run_again_within_the_heartbeat_timeout(env, tmp_path) -> None:
    env, state = env
    ns, prefix = env["TEST_STATE_NS"], env["QUEUE_PREFIX"]
    keys = [f"job{i}" for i in range(6)]
    state.set(f"{ns}:hold", 1)  # every run waits until the flag goes
    first = services.WorkerProcess(env, tmp_path / "w1.log", threads=2, modules=(MODULE,)).start()
    try:
        send(env, *keys)
        # Two running, two prefetched behind them (prefetch: twice the threads), two still queued.
        services.wait_for(lambda: state.llen(f"{ns}:started") == 2 and sum(map(len, unacked(state, prefix).values()))
                          == 4, timeout=60, message="the first worker holding four messages")
        held = set().union(*unacked(state, prefix).values())
        os.killpg(first.proc.pid, signal.SIGKILL)  # the worker and its process: no requeue, no ack
        killed = time.monotonic()
    finally:
        first.stop()
    assert first.proc.returncode == -signal.SIGKILL
    assert set().union(*unacked(state, prefix).values()) == held  # still held by the dead process
    state.delete(f"{ns}:hold")

    with services.WorkerProcess(env, tmp_path / "w2.log", threads=2, modules=(MODULE,)):
        up = time.monotonic()
        services.wait_for(lambda: state.llen(f"{ns}:done") >= len(keys), timeout=HEARTBEAT_TIMEOUT_MS / 1000 + 30,
                          message="every message done")
        recovered = time.monotonic()
        services.wait_for(lambda: not any(unacked(state, prefix).values()), timeout=10, message="all acked")
    done = Counter(state.lrange(f"{ns}:done", 0, -1))
    assert done == Counter(keys)  # each finished once: the two that ran in the dead worker ran again
    print(f"\nkill -9 recovery: every message done {recovered - up:.1f} s after the second worker was up, "
          f"{recovered - killed:.1f} s after the kill (heartbeat timeout {HEARTBEAT_TIMEOUT_MS / 1000:.0f} s)")
    assert recovered - up <= HEARTBEAT_TIMEOUT_MS / 1000 + 15


def raw_bodies(queue_name: str) -> dict[str, bytes]:
    def message(**changes: Any) -> bytes:
        fields = {"queue_name": queue_name, "actor_name": "hold", "args": ["x"], "kwargs": {}, "options": {},
                  "message_id": services.unique("m"), "message_timestamp": int(time.time() * 1000)}
        fields.update(changes)
        return json.dumps(fields).encode()

    return {
        "raw-not-utf8": b"\xff\xfe\x00\x01",
        "raw-not-json": b"<xml>not json</xml>",
        "raw-json-list": b"[\"hold\", [1]]",
        "raw-args-string": message(args="abc"),
        "raw-unhashable-id": message(message_id=["a", "list"]),
        "raw-no-body": b"",  # listed below without a body in the hash
    }


def test_raw_bodies_that_are_not_messages_each_become_one_dead_letter_and_the_worker_keeps_running(
        env, tmp_path) -> None:
    env, state = env
    ns, prefix = env["TEST_STATE_NS"], env["QUEUE_PREFIX"]
    assert services.run_cli(["migrate"], env).returncode == 0
    store = SqlDeadLetterStore(make_engine(env["DATABASE_URL"]))
    queue_name = f"{prefix}recovery"
    bodies = raw_bodies(queue_name)
    with services.WorkerProcess(env, tmp_path / "w.log", threads=2, modules=(MODULE,)) as worker:
        key = f"dramatiq:{queue_name}"
        with state.pipeline(transaction=True) as pipe:  # one write, so one fetch may take them all
            pipe.hset(f"{key}.msgs", mapping={k: v for k, v in bodies.items() if k != "raw-no-body"})
            pipe.rpush(key, *bodies)
            pipe.execute()
        services.wait_for(lambda: len(store.list(limit=100)) >= len(bodies), timeout=30, message="the dead letters")
        # Every thread still runs: two messages are running at once, then a good one after them.
        state.set(f"{ns}:hold", 1)
        send(env, "a", "b")
        services.wait_for(lambda: state.llen(f"{ns}:started") == 2, timeout=30, message="two running at once")
        state.delete(f"{ns}:hold")
        send(env, "c")
        services.wait_for(lambda: state.llen(f"{ns}:done") == 3, timeout=30, message="the good messages done")
        services.wait_for(lambda: not any(unacked(state, prefix).values()), timeout=10, message="nothing unacked")
        log = worker.output()
    letters = store.list(limit=100)
    assert len(letters) == len(bodies)  # one each
    by_reason = Counter(letter.reason for letter in letters)
    # Decodable bodies of the wrong shape are admission's: arguments, then the message's own fields.
    assert by_reason == {"undecodable": 4, "invalid_arguments": 1, "invalid_message": 1}, by_reason
    assert sorted(letter.options["broker_message_id"] for letter in letters if letter.reason == "undecodable") == \
        ["raw-json-list", "raw-no-body", "raw-not-json", "raw-not-utf8"]
    assert "Consumer encountered" not in log and "Restarting consumer" not in log, log
    listed = services.run_cli(["dlq", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("undecodable") >= len(bodies)
