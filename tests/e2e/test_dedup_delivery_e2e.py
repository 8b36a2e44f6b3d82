"""A deduplicated message delivered again while it runs, then the process running it SIGKILLed:
two real `dramatiq actors` processes on real Redis and real RabbitMQ (issue 16, item 5).

The broker hands the message out again while its first delivery still runs in process V: on
RabbitMQ because V's connections dropped (closed by rabbitmqctl, on a vhost of the test's own),
on Redis because maintenance took V for dead and requeued what it held. The second delivery must
neither run beside the first nor be acknowledged as done; then V is killed (kill -9) before its
run ends, and the message must still run to completion, exactly once, on the other process, once
V's dedup lease has ended (DEDUP_LEASE_TTL_S=4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker

from tests import services
from tests.fault.backlog import wait_empty
from tests.fault.servers import RabbitVhost

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

MODULE = "tests.e2e.dedup_actors"
LEASE_TTL_S = 4  # renewed every 1.3 s: a stall of the renewing thread under load must not end it


@pytest.fixture
def env(broker_env):
    env = dict(broker_env)
    vhost = None
    if env["BROKER_URL"].startswith("amqp"):
        vhost = RabbitVhost()  # its connections are closed below: a vhost of its own
        env["BROKER_URL"] = vhost.url
    env.update(TEST_STATE_REDIS_URL=services.REDIS_URL, TEST_STATE_NS=services.unique("dd"),
               DEDUP_LEASE_TTL_S=str(LEASE_TTL_S), dramatiq_restart_delay="300")
    state = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    yield env, state, vhost
    keys = list(state.scan_iter(f"{env['TEST_STATE_NS']}*")) + list(state.scan_iter(f"atelier:{env['QUEUE_PREFIX']}*"))
    if keys:
        state.delete(*keys)
    state.close()
    if vhost is not None:
        vhost.close()
    else:
        services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("dedup",))


def send(env: dict[str, str], order: str, message_id: str) -> None:
    sent = subprocess.run([sys.executable, "-m", MODULE, "send", order, message_id], env=env, cwd=services.ROOT,
                          capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr


def requeue_held(queue: str) -> int:
    """What Redis's maintenance does to a worker it takes for dead (its heartbeat late): every
    message in the worker's ack set goes back to the queue, though the worker may still run it."""
    client = redis.Redis.from_url(services.REDIS_URL)
    moved = 0
    try:
        # Every ack set first, each once: a SCAN of the shared Redis takes many round trips, may
        # return a key twice, and one walked while moving also finds the set of a worker that
        # fetched the message again meanwhile (counted twice, 1 time in CI's ~1200 tests).
        held = set(client.scan_iter(f"dramatiq:__acks__.*.{queue}", count=1000))
        for acks in held:
            for message_id in client.smembers(acks):
                if client.srem(acks, message_id):
                    client.rpush(f"dramatiq:{queue}", message_id)
                    moved += 1
    finally:
        client.close()
    return moved


def maintain(queue: str) -> None:
    """Redis's maintenance with a short heartbeat timeout: a killed worker's messages (its queue
    and delay queue) go back at once instead of after a minute, whenever a fetch happens to run it."""
    broker = RedisBroker(url=services.REDIS_URL, heartbeat_timeout=3_000, maintenance_chance=MAINTENANCE_SCALE)
    try:
        for name in (queue, f"{queue}.DQ"):
            broker.do_fetch(name, 0)
    finally:
        broker.close()


def test_a_message_delivered_again_while_it_runs_then_killed_runs_to_completion_exactly_once(env, tmp_path):
    env, state, vhost = env
    ns, order, message_id = env["TEST_STATE_NS"], "o1", str(uuid.uuid4())
    queue = f"{env['QUEUE_PREFIX']}dedup"
    starts = f"{ns}:starts:{order}"
    rabbit = vhost is not None
    workers = [services.WorkerProcess(env, tmp_path / f"worker-{name}.log", threads=2, modules=(MODULE,))
               for name in ("a", "b")]
    for worker in workers:
        worker.start()
    try:
        send(env, order, message_id)
        first_pid = int(services.wait_for(lambda: state.lrange(starts, 0, -1), timeout=30, message="first start")[0])
        victim, survivor = sorted(workers, key=lambda w: os.getpgid(first_pid) != w.proc.pid)

        # The broker hands it out again while it runs.
        if rabbit:
            # RabbitMQ closes the connections, as a network cut would: what was unacked on them is
            # delivered again, while the workers still run it.
            vhost.close_connections()
        else:
            assert requeue_held(queue) == 1
        services.wait_for(lambda: state.llen(starts) > 1 or any("was skipped" in w.output() for w in workers),
                          timeout=30, message="the second delivery dealt with")
        assert state.lrange(starts, 0, -1) == [str(first_pid)]  # not run beside the first

        os.killpg(victim.proc.pid, signal.SIGKILL)  # before its run ends
        victim.proc.wait(10)
        killed = time.monotonic()

        def restarted() -> bool:
            if not rabbit:
                maintain(queue)
            return state.llen(starts) >= 2

        services.wait_for(restarted, timeout=45, interval=0.5, message="the message run again")
        recovery = time.monotonic() - killed
        state.set(f"{ns}:release:{order}", 1)
        services.wait_for(lambda: state.hget(f"{ns}:effects", order) == "1", timeout=30, message="its effect")
        # Nothing left to come round: every delivery acknowledged, none waiting.
        left = wait_empty(env["BROKER_URL"], queue, timeout=30)
        assert left == 0, f"{left} messages still on the broker"
        assert state.hgetall(f"{ns}:effects") == {order: "1"}
        survivor_pids = {int(pid) for pid in state.lrange(starts, 0, -1)[1:]}
        assert len(survivor_pids) == 1 and os.getpgid(survivor_pids.pop()) == survivor.proc.pid
        assert state.llen(starts) == 2  # the killed run, and the one that completed
        # The lease ends within its 4 s; a worker that ignored DEDUP_LEASE_TTL_S (the default
        # 30 s, renewed every 10 s) would leave at least 20 s of it.
        assert recovery < 18
        print(f"\n{'rabbitmq' if rabbit else 'redis'}: run again {recovery:.1f} s after kill -9 "
              f"(lease {LEASE_TTL_S} s)")
    finally:
        for worker in workers:
            worker.stop(timeout=30)
