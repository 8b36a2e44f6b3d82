"""Graceful shutdown on SIGTERM, on Redis and RabbitMQ, with a slow test actor: messages in flight
finish within --worker-shutdown-timeout, or go back to the broker and complete in the next worker;
messages prefetched but not started go back too. None is lost."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import redis

from tests import services
from tests.e2e.ops_support import cleanup_redis

pytestmark = pytest.mark.e2e

ACTOR_MODULE = "tests.e2e.ops_actors"


@pytest.fixture
def slow_env(broker_env):
    env = dict(broker_env)
    env.update(TEST_STATE_REDIS_URL=services.REDIS_URL, TEST_STATE_NS=services.unique("shutdown"))
    state = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    yield env, state
    state.close()
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("ops_test", "slow"))
    cleanup_redis(env["QUEUE_PREFIX"], env["TEST_STATE_NS"])


def send_slow(env: dict[str, str], seconds: float, *keys: str) -> None:
    sent = subprocess.run([sys.executable, "-m", ACTOR_MODULE, "slow", str(seconds), *keys], env=env,
                          cwd=services.ROOT, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr


def sigterm_and_wait(worker: services.WorkerProcess, timeout: float) -> int:
    """SIGTERM, then wait for the worker to exit by itself (never killed)."""
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    services.wait_for(lambda: worker.proc.poll() is not None, timeout=timeout, message="worker exit after SIGTERM")
    return worker.stop()


def test_in_flight_messages_finish_within_the_shutdown_timeout(slow_env, tmp_path):
    env, state = slow_env
    ns = env["TEST_STATE_NS"]
    keys = [f"job{i}" for i in range(6)]
    first = services.WorkerProcess(env, tmp_path / "w1.log", threads=2, modules=(ACTOR_MODULE,),
                                   extra_args=("--worker-shutdown-timeout", "30000")).start()
    try:
        send_slow(env, 2.0, *keys)
        running = services.wait_for(lambda: len(s := state.lrange(f"{ns}:started", 0, -1)) >= 2 and s,
                                    timeout=60, message="two messages running")
        assert sigterm_and_wait(first, timeout=60) == 0, first.output()
    finally:
        first.stop()
    in_flight = {entry.split(":")[0] for entry in running}
    done_by_first = set(state.lrange(f"{ns}:done", 0, -1))
    assert in_flight <= done_by_first  # what was running at SIGTERM finished before exit
    assert done_by_first < set(keys)  # and the worker stopped taking new work

    with services.WorkerProcess(env, tmp_path / "w2.log", threads=2, modules=(ACTOR_MODULE,)):
        services.wait_for(lambda: state.llen(f"{ns}:done") >= len(keys), timeout=90, message="all jobs done")
    done = state.lrange(f"{ns}:done", 0, -1)
    assert sorted(done) == keys  # every message completed, each once
    assert all(state.get(f"{ns}:attempts:{k}") == "1" for k in keys)


def test_unfinished_message_goes_back_and_completes_in_the_next_worker(slow_env, tmp_path):
    env, state = slow_env
    ns = env["TEST_STATE_NS"]
    first = services.WorkerProcess(env, tmp_path / "w1.log", threads=1, modules=(ACTOR_MODULE,),
                                   extra_args=("--worker-shutdown-timeout", "1000")).start()
    try:
        send_slow(env, 300.0, "long")  # cannot finish: 300 s on its first run
        services.wait_for(lambda: state.get(f"{ns}:attempts:long") == "1", timeout=60, message="long job running")
        # Sent once the long job runs: Dramatiq's work queue orders messages of equal priority
        # arbitrarily, so one fetched together with it could run first.
        send_slow(env, 0.5, "queued")  # waits behind it (one thread), prefetched or still in the queue
        # The worker gives up on it after the 1 s timeout and exits by itself, well before 300 s.
        sigterm_and_wait(first, timeout=60)
        log = first.output()
    finally:
        first.stop()
    assert state.llen(f"{ns}:done") == 0

    # A second worker gets both back from the broker at once (not after a heartbeat timeout).
    with services.WorkerProcess(env, tmp_path / "w2.log", threads=2, modules=(ACTOR_MODULE,)):
        services.wait_for(lambda: state.llen(f"{ns}:done") >= 2, timeout=30, message="both jobs done")
    assert sorted(state.lrange(f"{ns}:done", 0, -1)) == ["long", "queued"]
    assert state.get(f"{ns}:attempts:long") == "2"  # run again from the start: at least once
    assert state.get(f"{ns}:attempts:queued") == "1"
    if env["BROKER_URL"].startswith("redis"):
        assert "unfinished message(s)" in log, log  # RequeueUnfinished did it
