"""Messaging end to end on Redis and RabbitMQ: 1,000 messages from a producer process through the
outbox relay (the scheduler process) and a real `dramatiq actors` worker to the real mock-channels
server, which answers as Meta does and rate-limits part of the time: its WhatsApp number takes 50
messages a second while the worker paces at 80 (so the mock answers 130429 whenever it gets more),
and 5 % of sends hit the pair rate (131056). The channel also goes down part way through (131016,
HTTP 503) and comes back. Rate limits are retried after their wait and never open the circuit; the
outage does: its breaker parks deliveries on the fallback queue, and drain_fallback sends them back
once the channel recovers. Every message reaches its channel(s) exactly once, counted by id;
producer duplicates (created again; route_message and deliver_message sent again) deliver nothing
more."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import func, select

from adapters.sql import tables as t
from adapters.sql.engine import make_engine
from adapters.state.redis import RedisBreakerStore, RedisFallbackQueue
from domain.models import new_id
from domain.resilience import CircuitState
from tests import services
from tests.e2e.test_scheduler import SchedulerProcess

pytestmark = pytest.mark.e2e

TOTAL = 1000
DUPLICATES = 100


class Process:
    """A CLI subprocess (`python -m entrypoints.cli ...`) with its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args, self.env, self.log_path = args, env, log_path

    def __enter__(self) -> Process:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", *self.args], env=self.env,
                                     cwd=services.ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class MockChannelsProcess(Process):
    def __init__(self, env: dict[str, str], log_path: Path, extra: list[str] | None = None) -> None:
        self.port = services.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["mock-channels", "--host", "127.0.0.1", "--port", str(self.port), *(extra or [])], env,
                         log_path)

    def __enter__(self) -> MockChannelsProcess:
        super().__enter__()

        def up() -> bool:
            assert self.proc.poll() is None, self.output()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        services.wait_for(up, timeout=60, message="mock-channels up")
        return self

    def control(self, **body: object) -> None:
        assert httpx.post(f"{self.url}/_mock/control", json=body, timeout=10).status_code == 200

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_mock/stats", timeout=10).json()["channels"]

    def deliveries(self, channel: str) -> dict[str, dict]:
        return httpx.get(f"{self.url}/_mock/deliveries", params={"channel": channel}, timeout=30).json()

    def timeline(self, channel: str) -> list[dict]:
        return httpx.get(f"{self.url}/_mock/timeline", params={"channel": channel}, timeout=30).json()


def _producer(command: str, path: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.e2e.messaging_producer", command, str(path)], env=env,
                          cwd=services.ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def env(broker_env):
    env = dict(broker_env)
    yield env
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("messages", "outbox"))


def test_thousand_messages_through_rate_limits_and_an_outage_arrive_exactly_once(env, tmp_path):
    mock = MockChannelsProcess(env, tmp_path / "mock.log", ["--whatsapp-throughput", "50"])
    env.update({
        "WHATSAPP_BASE_URL": f"{mock.url}/whatsapp", "WHATSAPP_TOKEN": "e2e-token",
        "WHATSAPP_PHONE_NUMBER_ID": "100200300", "INSTAGRAM_BASE_URL": f"{mock.url}/instagram",
        "INSTAGRAM_TOKEN": "e2e-token", "CHANNEL_TIMEOUT_S": "10", "MESSAGE_SEND_LEASE_S": "30",
        "RETRY_MAX_RETRIES": "100", "RETRY_MIN_BACKOFF_MS": "100", "RETRY_MAX_BACKOFF_MS": "1000",
        # The breaker opens after 5 failures and tries again every 2 s; parked deliveries are
        # drained every second once it lets traffic through.
        "CIRCUIT_FAILURE_THRESHOLD": "5", "CIRCUIT_RESET_TIMEOUT_S": "2", "FALLBACK_POLL_INTERVAL": "1",
    })
    client = redis.Redis.from_url(services.REDIS_URL)
    breakers = RedisBreakerStore(client, f"atelier:{env['QUEUE_PREFIX']}circuit:")
    fallback = RedisFallbackQueue(client, f"atelier:{env['QUEUE_PREFIX']}fallback:")
    # 80 % WhatsApp, 10 % Instagram, 10 % both ("all").
    messages = [{"id": new_id(), "channel": "all" if i % 10 == 0 else "instagram" if i % 10 == 1 else "whatsapp",
                 "to": f"+1555{i:07d}", "text": f"message {i}"} for i in range(TOTAL)]
    expected = {
        "whatsapp": {m["id"] for m in messages if m["channel"] in ("whatsapp", "all")},
        "instagram": {m["id"] for m in messages if m["channel"] in ("instagram", "all")},
    }
    batch = tmp_path / "messages.json"
    batch.write_text(json.dumps(messages))
    duplicates = messages[:DUPLICATES]
    duplicate_ids = {m["id"] for m in duplicates}
    duplicate_deliveries = sum(2 if m["channel"] == "all" else 1 for m in duplicates)
    duplicates_file = tmp_path / "duplicates.json"
    duplicates_file.write_text(json.dumps(duplicates))
    engine = make_engine(env["DATABASE_URL"])

    with mock, services.WorkerProcess(env, tmp_path / "worker.log", threads=8) as worker, \
            SchedulerProcess(env, tmp_path / "scheduler.log") as relay:
        # One message through the CLI, then the same id again: recorded once.
        cli_id = new_id()
        cli = ["messages", "send", "--channel", "whatsapp", "--to", "+15559999999", "--text", "from the CLI",
               "--id", cli_id]
        sent = services.run_cli(cli, env)
        assert sent.returncode == 0 and sent.stdout.strip() == cli_id, sent.stderr
        again = services.run_cli(cli, env)
        assert again.returncode == 0 and "already recorded" in again.stdout, again.stderr
        expected["whatsapp"].add(cli_id)

        pair_rate_limits = {"channel": "whatsapp", "mode": "ratelimit", "code": 131056, "probability": 0.05}
        mock.control(**pair_rate_limits)
        assert _producer("create", batch, env) == {"created": TOTAL}

        # The channel goes down part way through ...
        services.wait_for(lambda: mock.stats()["whatsapp"]["accepted"] >= 200, timeout=180,
                          message="first deliveries")
        # Rate-limit answers so far, and the circuit still closed: they are not failures.
        limited_before_outage = mock.stats()["whatsapp"]["rate_limited"]
        assert breakers.states().get("channel:whatsapp", CircuitState.CLOSED) is CircuitState.CLOSED
        mock.control(channel="all", mode="fail", status=503)
        services.wait_for(lambda: breakers.states().get("channel:whatsapp") is CircuitState.OPEN, timeout=120,
                          message="the whatsapp circuit open")
        services.wait_for(lambda: fallback.lengths().get("channel:whatsapp", 0) >= 50, timeout=120,
                          message="deliveries parked on the whatsapp fallback queue")
        during_outage = mock.stats()
        parked_during_outage = fallback.lengths()["channel:whatsapp"]
        # ... and comes back, rate limits included.
        mock.control(channel="all", mode="ok")
        mock.control(**pair_rate_limits)

        # The producer creates the same messages again: nothing new is recorded.
        assert _producer("create", batch, env) == {"created": 0}

        def all_arrived() -> bool:
            stats = mock.stats()
            return all(stats[c]["unique"] >= len(ids) for c, ids in expected.items())

        services.wait_for(all_arrived, timeout=600, interval=0.5, message="every message at the mock")
        # The mock has them; the worker commits SENT just after. Resend only once it has, so the
        # resent route_message finds nothing left to send.
        ours = [m["id"] for m in messages] + [cli_id]  # (the database is shared by the session's tests)
        dt, mt = t.message_deliveries, t.outbound_messages
        deliveries = len(expected["whatsapp"]) + len(expected["instagram"])

        def all_sent() -> bool:
            with engine.connect() as conn:
                return conn.execute(select(func.count()).where(dt.c.message_id.in_(ours),
                                                               dt.c.status == "SENT")).scalar() == deliveries

        services.wait_for(all_sent, timeout=120, interval=0.5, message="every delivery SENT")

        # The producer sends route_message and deliver_message again for some: they run, and find
        # every delivery SENT.
        assert _producer("resend", duplicates_file, env) == {"route_message": DUPLICATES,
                                                             "deliver_message": duplicate_deliveries}

        def resends_done() -> bool:
            records = _records(worker.output())
            routed_again = {r.get("outbound_message_id") for r in records
                            if "nothing left to send" in r.get("event", "")}
            not_again = sum(1 for r in records if "not sent again" in r.get("event", "")
                            and r.get("outbound_message_id") in duplicate_ids)
            return duplicate_ids <= routed_again and not_again >= duplicate_deliveries

        services.wait_for(resends_done, timeout=180, interval=0.5,
                          message="the resent messages to run and find their deliveries SENT")

        stats = mock.stats()
        arrived = {c: mock.deliveries(c) for c in expected}
        with engine.connect() as conn:
            delivery_statuses = Counter(dict(conn.execute(
                select(dt.c.status, func.count()).where(dt.c.message_id.in_(ours)).group_by(dt.c.status)).all()))
            message_statuses = Counter(dict(conn.execute(
                select(mt.c.status, func.count()).where(mt.c.id.in_(ours)).group_by(mt.c.status)).all()))
            attempts = conn.execute(select(func.sum(dt.c.attempts)).where(dt.c.message_id.in_(ours))).scalar()
        relay_output = relay.output()
        worker_output = worker.output()
    engine.dispose()

    # The mock rate-limited part of the time: throughput answers (it takes 50/s, the worker paces
    # at 80/s) and pair-rate ones (injected), before the outage too, when the circuit stayed closed.
    print(f"\nmock whatsapp: {stats['whatsapp']['rate_limited']} rate limited "
          f"({stats['whatsapp']['throughput_limited']} over its throughput, {limited_before_outage} before the "
          f"outage), {stats['whatsapp']['accepted']} accepted")
    assert limited_before_outage > 0
    # Every message reached its channel(s), each exactly once, and nothing else arrived.
    for channel, ids in expected.items():
        assert set(arrived[channel]) == ids, channel
        assert {(r["accepted"], r["delivered"]) for r in arrived[channel].values()} == {(1, 1)}, channel
        assert stats[channel]["accepted_more_than_once"] == []
        assert stats[channel]["accepted"] == stats[channel]["delivered"] == len(ids)
    assert delivery_statuses == {"SENT": deliveries}
    assert message_statuses == {"SENT": TOTAL + 1}
    # The outage was real, and the breaker spared the channel: a handful of failed requests (the
    # threshold and the half-open trials), not one per parked delivery and retry.
    failed = during_outage["whatsapp"]["failed"] + during_outage["instagram"]["failed"]
    assert 5 <= failed < parked_during_outage
    assert attempts > deliveries
    # After recovery the circuit closed and its fallback queue drained to empty.
    assert breakers.states()["channel:whatsapp"] is CircuitState.CLOSED
    assert fallback.lengths().get("channel:whatsapp", 0) == 0
    assert client.llen(f"atelier:{env['QUEUE_PREFIX']}fallback:channel:whatsapp:processing") == 0
    worker_log = [r.get("event", "") for r in _records(worker_output)]
    assert "Circuit 'channel:whatsapp': closed -> open." in worker_log
    assert "Circuit 'channel:whatsapp': half_open -> closed." in worker_log
    assert "Traceback" not in relay_output, relay_output[-3000:]
    client.close()
