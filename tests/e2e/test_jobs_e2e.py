"""A producer follows messages to done, failed and cancelled (queued, delayed, running) through
`atelier jobs`, with a real `dramatiq actors` worker on Redis and on RabbitMQ."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from tests import services

MODULE = "tests.e2e.jobs_actors"
pytestmark = pytest.mark.e2e
DELAY_MS = 20_000


@pytest.fixture
def env(broker_env):
    env = dict(broker_env)
    env.update(TEST_STATE_REDIS_URL=services.REDIS_URL, TEST_STATE_NS=services.unique("jobs"))
    assert services.run_cli(["migrate"], env).returncode == 0
    state = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    yield env, state
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("jobs",))
    for key in list(state.scan_iter(f"atelier:{env['QUEUE_PREFIX']}*")) + list(
            state.scan_iter(f"{env['TEST_STATE_NS']}*")):
        state.delete(key)
    state.close()


def send(env, actor: str, tag: str, delay: int | None = None) -> str:
    args = [sys.executable, "-m", MODULE, actor, tag, *([str(delay)] if delay else [])]
    sent = subprocess.run(args, env=env, cwd=services.ROOT, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    return sent.stdout.strip().splitlines()[-1]


def jobs(env, *args: str) -> dict:
    done = services.run_cli(["jobs", *args], env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def status_is(env, message_id: str, status: str):  # type: ignore[no-untyped-def]
    def check():  # type: ignore[no-untyped-def]
        done = services.run_cli(["jobs", "show", message_id], env)
        return done.returncode == 0 and (view := json.loads(done.stdout))["status"] == status and view
    return check


def worker(env, tmp_path, name: str) -> services.WorkerProcess:
    return services.WorkerProcess(env, tmp_path / f"{name}.log", threads=2, modules=(MODULE,))


def test_follow_messages_to_done_failed_and_cancelled(env, tmp_path):
    env, state = env
    ns = env["TEST_STATE_NS"]
    queued = send(env, "ok", "queued")  # no worker yet: it waits in its queue
    services.wait_for(status_is(env, queued, "queued"), timeout=30, message="queued record")
    assert jobs(env, "cancel", queued)["cancel"] == "cancelled"
    assert jobs(env, "cancel", queued)["status"] == "cancelled"  # idempotent
    with worker(env, tmp_path, "w1"):
        workers = services.wait_for(lambda: services.run_cli(["workers"], env).stdout.count('"pid"') >= 1,
                                    timeout=30, message="a worker heartbeat")
        assert workers
        ok = send(env, "ok", "ok")
        done = services.wait_for(status_is(env, ok, "done"), timeout=60, message="done")
        assert done["attempts"] == 1 and done["actor"] == "jobs_ok" and done["finished_at"]
        bad = send(env, "bad", "bad")
        failed = services.wait_for(status_is(env, bad, "failed"), timeout=60, message="failed")
        assert failed["reason"] == "permanent" and failed["dead_letter_id"] and "bad bad" in failed["error"]
        # Long enough for the CLI calls below to land before it is due on a loaded machine (each
        # starts a Python process); the sentinel, sent after it with the same delay, is due later.
        delayed = send(env, "ok", "delayed", delay=DELAY_MS)
        assert services.wait_for(status_is(env, delayed, "delayed"), timeout=30, message="delayed record")
        assert jobs(env, "cancel", delayed)["cancel"] == "cancelled"
        sentinel = send(env, "ok", "sentinel", delay=DELAY_MS)
        long = send(env, "long", "long")
        running = services.wait_for(lambda: (v := status_is(env, long, "running")()) and v["progress"] and v,
                                    timeout=60, message="running with progress")
        assert 0 <= running["progress"]["fraction"] < 1
        assert jobs(env, "cancel", long)["cancel"] == "requested"
        cancelled = services.wait_for(status_is(env, long, "cancelled"), timeout=30, message="stopped")
        assert cancelled["reason"] == "cancelled while running" and cancelled["attempts"] == 1
        # The sentinel runs: the delayed one was due too.
        services.wait_for(status_is(env, sentinel, "done"), timeout=60, message="sentinel")
    runs = state.hgetall(f"{ns}:runs")
    assert "queued" not in runs and "delayed" not in runs and runs["long"] == "1" and runs["ok"] == "1"
    assert int(state.hget(f"{ns}:steps", "long")) < 599
    assert jobs(env, "show", delayed)["status"] == "cancelled" and jobs(env, "show", queued)["status"] == "cancelled"
    listed = jobs(env, "list", "--status", "cancelled")["jobs"]
    assert {queued, delayed, long} <= {j["message_id"] for j in listed}
