"""The ops server as a real process: metrics from several real workers add up; the dashboard in
real headless Chromium with and without credentials; readiness naming what is down."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests import services
from tests.e2e.ops_support import OpsServer, cleanup_redis

pytestmark = pytest.mark.e2e

ACTOR_MODULE = "tests.e2e.ops_actors"


@pytest.fixture
def ops_env(broker_env):
    env = dict(broker_env)
    env.update(REDIS_URL=services.REDIS_URL, TEST_STATE_REDIS_URL=services.REDIS_URL,
               TEST_STATE_NS=services.unique("opstest"), OPS_USERNAME="operator",
               OPS_PASSWORD="correct horse battery staple")
    yield env
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("ops_test", "slow"))
    cleanup_redis(env["QUEUE_PREFIX"], env["TEST_STATE_NS"])


def scrape(ops: OpsServer, env: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = httpx.get(ops.url + "/metrics", auth=(env["OPS_USERNAME"], env["OPS_PASSWORD"]), timeout=10)
    assert resp.status_code == 200, resp.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def test_metrics_from_two_worker_processes_add_up(ops_env, tmp_path):
    count, permanent, transient = 40, 4, 3
    queue_name = ops_env["QUEUE_PREFIX"] + "ops_test"
    labels = (("actor_name", "tally"), ("queue_name", queue_name))
    state = redis.Redis.from_url(services.REDIS_URL)

    with services.WorkerProcess(ops_env, tmp_path / "w1.log", modules=(ACTOR_MODULE,)), \
            services.WorkerProcess(ops_env, tmp_path / "w2.log", modules=(ACTOR_MODULE,)), \
            OpsServer(ops_env, tmp_path / "ops.log") as ops:
        sent = subprocess.run([sys.executable, "-m", ACTOR_MODULE, "tally", str(count), str(permanent),
                               str(transient)], env=ops_env, cwd=services.ROOT, capture_output=True, text=True,
                              timeout=120)
        assert sent.returncode == 0, sent.stderr
        runs = count + transient  # each transient failure is retried once
        figures = services.wait_for(
            lambda: (m := scrape(ops, ops_env)).get(("dramatiq_messages_total", labels)) == runs
            and m.get(("dramatiq_message_rejects_total", labels)) == permanent + transient and m,
            timeout=120, message="all runs counted")

    per_process = {pid: int(n) for pid, n in state.hgetall(f"{ops_env['TEST_STATE_NS']}:pids").items()}
    assert len(per_process) == 2, per_process  # both worker processes did part of the work
    assert sum(per_process.values()) == runs
    assert figures[("dramatiq_message_errors_total", labels)] == permanent + 2 * transient
    assert figures[("dramatiq_message_retries_total", labels)] == transient
    assert figures[("dramatiq_message_duration_milliseconds_count", labels)] == runs
    assert figures[("dramatiq_message_duration_milliseconds_sum", labels)] >= runs * 100  # each sleeps 0.1 s
    below_100ms = figures[("dramatiq_message_duration_milliseconds_bucket", (*labels[:1], ("le", "100.0"),
                                                                              *labels[1:]))]
    assert below_100ms == 0
    assert figures[("atelier_outbox_pending_events", ())] == 0
    assert not [k for k in figures if k[0] == "atelier_scrape_errors"]


def chromium(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Load url in real headless Chromium and dump the DOM it rendered."""
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium package is missing: scripts/tools.sh installs it"
    with tempfile.TemporaryDirectory(prefix="atelier-chromium-") as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *flags, "--dump-dom", url],
            capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": profile})


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_dashboard_in_chromium_needs_credentials(ops_env, tmp_path):
    with services.WorkerProcess(ops_env, tmp_path / "w.log", modules=(ACTOR_MODULE,)), \
            OpsServer(ops_env, tmp_path / "ops.log") as ops:
        host = ops.url.removeprefix("http://")
        user, password = ops_env["OPS_USERNAME"], ops_env["OPS_PASSWORD"].replace(" ", "%20")

        allowed = chromium(f"http://{user}:{password}@{host}/dashboard/")
        assert "<title>Dashboard :: Dramatiq Dashboard</title>" in allowed.stdout, allowed.stderr[-2000:]
        # The dashboard lists the project's queues and the running worker.
        assert f'href="/dashboard/queues/{ops_env["QUEUE_PREFIX"]}media"' in allowed.stdout

        for url in (f"http://{host}/dashboard/", f"http://{user}:wrong@{host}/dashboard/"):
            refused = chromium(url)
            assert "Dramatiq Dashboard" not in refused.stdout
            assert "ERR_INVALID_AUTH_CREDENTIALS" in refused.stderr, refused.stderr[-2000:]


@pytest.mark.parametrize("broker_env", ["rabbitmq"], indirect=True)
def test_dashboard_with_rabbitmq_points_at_management_ui(ops_env, tmp_path):
    env = {**ops_env, "RABBITMQ_MANAGEMENT_URL": "http://rabbit.example:15672/"}
    with OpsServer(env, tmp_path / "ops.log") as ops:
        resp = httpx.get(ops.url + "/dashboard/", auth=(env["OPS_USERNAME"], env["OPS_PASSWORD"]))
        assert httpx.get(ops.url + "/dashboard/").status_code == 401
    assert resp.status_code == 200
    assert "Redis" in resp.text and 'href="http://rabbit.example:15672/"' in resp.text


def test_readyz_names_what_is_down(ops_env, tmp_path):
    auth = (ops_env["OPS_USERNAME"], ops_env["OPS_PASSWORD"])
    with OpsServer(ops_env, tmp_path / "ops.log") as ops:
        ready = httpx.get(ops.url + "/readyz", auth=auth, timeout=30)
        assert httpx.get(ops.url + "/readyz", timeout=30).status_code == 401
        assert httpx.get(ops.url + "/healthz", timeout=30).status_code == 200
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert {name: c["status"] for name, c in body["checks"].items()} == {
        "broker": "up", "database": "up", "redis": "up", "object_store": "up", "vector_index": "up"}

    # The state Redis on a closed port, the object store and the Qdrant server on others: 503 naming them.
    down = {**ops_env, "REDIS_URL": f"redis://127.0.0.1:{services.free_port()}/0",
            "MINIO_ENDPOINT": f"127.0.0.1:{services.free_port()}",
            "QDRANT_URL": f"http://127.0.0.1:{services.free_port()}"}
    with OpsServer(down, tmp_path / "ops-down.log") as ops:
        unready = httpx.get(ops.url + "/readyz", auth=auth, timeout=30)
    assert unready.status_code == 503, unready.text
    body = unready.json()
    assert sorted(body["failed"]) == ["object_store", "redis", "vector_index"]
    assert body["checks"]["broker"]["status"] == "up" and body["checks"]["database"]["status"] == "up"
    assert "Error" in body["checks"]["redis"]["error"]
