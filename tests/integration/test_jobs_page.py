"""The jobs view (/ui/jobs) in real headless Chromium, on both brokers: a job found by its id, a
running job's progress bar, a failure with its reason and a replay button for its dead letter,
the workers; and the replay it posts, behind the ops server's auth."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from wsgiref.simple_server import make_server

import httpx
import pytest
import redis

from adapters.sender import BrokerSender
from adapters.sql.migrate import upgrade
from bootstrap import Container
from bootstrap.broker import build_broker
from bootstrap.settings import load_settings
from domain.resilience import DeadLetter
from entrypoints.commands.ops import build_app
from entrypoints.ops import _QuietHandler, _Server
from tests import services
from tests.e2e.test_ops_e2e import chromium

USER, PASSWORD = "ops", "jobs-view-secret"


@pytest.mark.parametrize("broker_url", [services.REDIS_URL, services.RABBITMQ_URL], ids=["redis", "rabbitmq"])
def test_the_jobs_view_shows_jobs_progress_failures_and_workers_and_replays_a_dead_letter(
        broker_url, sqlite_url, tmp_path):
    prefix = services.unique("t") + "_"
    upgrade(sqlite_url)
    settings = load_settings(broker_url=broker_url, redis_url=services.REDIS_URL, queue_prefix=prefix,
                             database_url=sqlite_url, local_store_dir=tmp_path / "objects",
                             ops_username=USER, ops_password=PASSWORD)
    broker = build_broker(settings)
    container = Container(settings)
    # The ops process's container sends on the process's broker (bootstrap.get_broker); here, this test's.
    container.__dict__["message_sender"] = BrokerSender(broker)
    import bootstrap.container as bc

    bc.set_container(container)
    server = make_server("127.0.0.1", 0, build_app(settings, container, broker), server_class=_Server,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        now = int(time.time() * 1000)
        letter_id = str(uuid.uuid4())
        at = datetime.now(UTC)
        container.dead_letter_store.add(DeadLetter(
            id=letter_id, message_id="m-failed", actor="process_image", queue=prefix + "media", args=["x"],
            kwargs={}, options={}, error_type="domain.errors.NotFound", error="no image x", traceback="",
            reason="permanent", attempts=1, enqueued_at=at, failed_at=at))
        store = container.job_store
        store.write([
            ("m-running", now * 8, {"actor": "merge_upload", "queue": prefix + "uploads", "status": "running",
                                    "started_at": now, "progress": 0.4, "note": "part 3 of 8"}),
            ("m-failed", now * 8, {"actor": "process_image", "queue": prefix + "media", "status": "failed",
                                   "reason": "permanent", "error": "no image x", "dead_letter_id": letter_id,
                                   "finished_at": now}),
            ("m-done", now * 8, {"actor": "process_image", "queue": prefix + "media", "status": "done",
                                 "finished_at": now}),
        ])
        store.heartbeat("w-1", {"id": "w-1", "host": "box-7", "pid": 4242, "queues": [prefix + "media"],
                                "threads": 8, "busy": 1, "started_at": now, "last_seen": now}, 60_000)

        page = chromium(f"http://{USER}:{PASSWORD}@{host}/ui/jobs?id=m-done", "--virtual-time-budget=10000")
        dom = page.stdout
        assert 'data-loaded="yes"' in dom, page.stderr[-2000:]
        assert "m-done" in dom and ">done<" in dom  # the job searched by id
        assert 'data-message-id="m-running"' in dom and "40% part 3 of 8" in dom  # its progress bar
        assert "no image x" in dom and f'data-letter="{letter_id}"' in dom  # the failure and its replay button
        assert "box-7" in dom and "4242" in dom  # the worker

        refused = chromium(f"http://{host}/ui/jobs")
        assert "atelier jobs" not in refused.stdout

        url = f"http://{host}/dead-letters/{letter_id}/replay"
        assert httpx.post(url).status_code == 401
        for header in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            assert httpx.post(url, auth=(USER, PASSWORD), headers=header).status_code == 403
        assert httpx.get(f"http://{host}/ui/jobs", auth=(USER, PASSWORD)).headers["X-Frame-Options"] == "DENY"
        replayed = httpx.post(url, auth=(USER, PASSWORD))
        assert replayed.status_code == 200, replayed.text
        assert container.dead_letter_store.get(letter_id).replay_message_id == replayed.json()["message_id"]
        again = httpx.post(url, auth=(USER, PASSWORD))
        assert again.status_code == 409 and "was replayed" in again.json()["error"]
        assert httpx.post(f"http://{host}/dead-letters/{uuid.uuid4()}/replay", auth=(USER, PASSWORD)).status_code == 404
    finally:
        bc.set_container(None)
        server.shutdown()
        server.server_close()
        client = redis.Redis.from_url(services.REDIS_URL)
        for key in client.scan_iter(f"atelier:{prefix}*"):
            client.delete(key)
        client.close()
        container.close()
        broker.close()
        services.purge_queues(broker_url, prefix, ("media",))
