"""Chunked uploads end to end: a producer (the CLI) uploads chunks and sends merge_upload, a real
worker merges on moto's S3 server, the outbox relay routes upload.completed to the image
processing; a worker killed mid-merge leaves a state the redelivered message completes; the
scheduler's cron sends collect_abandoned_uploads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal

import httpx
import pytest
from PIL import Image as PILImage

from adapters.sql.engine import make_engine
from adapters.sql.migrate import upgrade
from adapters.sql.uow import uow_factory
from domain.models import ImageStatus, UploadStatus
from tests import services
from tests.e2e.test_scheduler import SchedulerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(broker_env):
    """broker_env with a database of this test's own: the relay sends every due event in it."""
    env = dict(broker_env)
    env["DATABASE_URL"] = services.create_pg_database()
    upgrade(env["DATABASE_URL"])
    yield env
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("uploads", "media", "outbox", "default"))
    services.drop_pg_database(env["DATABASE_URL"])


class Db:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.uow = uow_factory(self.engine)

    def upload(self, upload_id: str):  # type: ignore[no-untyped-def]
        with self.uow() as u:
            return u.uploads.get(upload_id)

    def image(self, image_id: str):  # type: ignore[no-untyped-def]
        with self.uow() as u:
            return u.images.get(image_id)

    def status(self, upload_id: str) -> UploadStatus | None:
        upload = self.upload(upload_id)
        return upload.status if upload else None


def _noise_png(side: int) -> bytes:
    """Incompressible pixels: a PNG a little larger than side*side*3 bytes."""
    buf = io.BytesIO()
    PILImage.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _create(env: dict[str, str], path, *args: str) -> str:  # type: ignore[no-untyped-def]
    result = services.run_cli(["uploads", "create", str(path), *args], env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_image_upload_is_merged_server_side_verified_downloadable_and_processed(env, tmp_path):
    data = _noise_png(1500)  # about 6.8 MB: two chunks of 5 MiB, merged with compose
    path = tmp_path / "noise.png"
    path.write_bytes(data)
    db = Db(env["DATABASE_URL"])
    with services.WorkerProcess(env, tmp_path / "worker.log") as worker:
        upload_id = _create(env, path, "--chunk-size", "5M")
        upload = services.wait_for(lambda: (u := db.upload(upload_id)) and u.status is UploadStatus.COMPLETED
                                   and u, timeout=90, message="COMPLETED upload")
        assert upload.size == len(data) and upload.sha256 == hashlib.sha256(data).hexdigest()

        shown = services.run_cli(["uploads", "show", upload_id, "--json"], env)
        assert shown.returncode == 0, shown.stderr
        info = json.loads(shown.stdout)
        assert info["status"] == "COMPLETED" and info["chunks_registered"] == 0
        download = httpx.get(info["download_url"], timeout=30)
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == hashlib.sha256(data).hexdigest()

        # The image was registered with the COMPLETED commit; the relay routes upload.completed.
        assert db.image(upload.image_id).status is ImageStatus.PENDING
        relay = services.run_cli(["outbox", "relay", "--once"], env)
        assert relay.returncode == 0, relay.stderr
        assert json.loads(relay.stdout.strip().splitlines()[-1])["published"] >= 1
        image = services.wait_for(lambda: (i := db.image(upload.image_id)) and i.status is ImageStatus.READY
                                  and i, timeout=90, message="READY image")
        log = worker.output()
    db.engine.dispose()
    assert image.original_key == upload.final_key
    assert image.metadata["width"] == 1500 and [t.size for t in image.thumbnails] == [128, 256, 512]
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    completed = [r for r in records if r.get("event") == "upload completed"]
    assert [r.get("upload_id") for r in completed] == [upload_id]


def test_small_chunks_are_streamed_and_a_bad_checksum_fails_for_good(env, tmp_path):
    data = os.urandom(700_000)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    db = Db(env["DATABASE_URL"])
    with services.WorkerProcess(env, tmp_path / "worker.log"):
        good = _create(env, path, "--chunk-size", "64k")
        # Register a second upload's chunks, then corrupt one object before the merge.
        bad = _create(env, path, "--chunk-size", "64k", "--no-merge")
        from adapters.objectstore.minio import MinioObjectStore, make_client
        from domain.services.uploads import chunk_key

        store = MinioObjectStore(make_client(env["MINIO_ENDPOINT"], "testing", "testing", secure=False,
                                             region="us-east-1"), env["MINIO_BUCKET"], create_bucket=False)
        store.put(chunk_key(bad, 3), b"x" * (64 * 1024))
        assert services.run_cli(["uploads", "merge", bad], env).returncode == 0
        done = services.wait_for(lambda: (u := db.upload(good)) and u.status is UploadStatus.COMPLETED and u,
                                 timeout=90, message="COMPLETED upload")
        failed = services.wait_for(lambda: (u := db.upload(bad)) and u.status is UploadStatus.FAILED and u,
                                   timeout=90, message="FAILED upload")
    db.engine.dispose()
    assert store.get(done.final_key) == data and done.image_id is None
    assert "sha256 mismatch" in failed.failure_reason
    assert list(store.list(f"upload-chunks/{bad}/")) == [] and not store.exists(f"uploads/{bad}/data.bin")


@pytest.mark.parametrize("broker_env", ["rabbitmq"], indirect=True)
def test_a_worker_killed_mid_merge_leaves_a_state_the_redelivery_completes(env, tmp_path):
    # RabbitMQ hands an unacknowledged message to another consumer as soon as the dead worker's
    # connection drops. (Redis gives it back only after the heartbeat timeout, a minute.)
    data = os.urandom(48 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    db = Db(env["DATABASE_URL"])
    upload_id = _create(env, path, "--chunk-size", "64k")  # 768 chunks, streamed: takes a while
    worker = services.WorkerProcess(env, tmp_path / "worker1.log").start()
    services.wait_for(lambda: db.status(upload_id) is UploadStatus.MERGING, timeout=90, message="MERGING",
                      interval=0.02)
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(30)
    worker.stop()
    assert db.status(upload_id) is UploadStatus.MERGING  # killed mid-merge
    with services.WorkerProcess(env, tmp_path / "worker2.log"):
        upload = services.wait_for(lambda: (u := db.upload(upload_id)) and u.status is UploadStatus.COMPLETED
                                   and u, timeout=120, message="COMPLETED after redelivery")
    db.engine.dispose()
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    with db.uow() as u:
        events = [e for e in u.outbox.list(limit=1000) if e.aggregate_id == upload_id]
    assert [e.type for e in events] == ["upload.completed"]


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_the_scheduler_cron_sends_collect_abandoned_uploads_to_a_worker(env, tmp_path):
    # Every minute, and an upload counts as abandoned after 0.36 s idle.
    env.update(GC_CRON="* * * * *", GC_RETENTION_HOURS="0.0001", OUTBOX_RELAY_LOOP="false")
    path = tmp_path / "left.bin"
    path.write_bytes(b"half an upload")
    db = Db(env["DATABASE_URL"])
    upload_id = _create(env, path, "--chunk-size", "4", "--no-merge")
    with services.WorkerProcess(env, tmp_path / "worker.log"), \
            SchedulerProcess(env, tmp_path / "scheduler.log") as scheduler:
        upload = services.wait_for(lambda: (u := db.upload(upload_id)) and u.status is UploadStatus.FAILED
                                   and u, timeout=150, message="collected upload")
        records = scheduler.records()
    db.engine.dispose()
    assert upload.failure_reason == "abandoned"
    sent = [r for r in records if r["event"] == "schedule sent" and r["job"] == "collect_abandoned_uploads"]
    assert sent and sent[0]["actor"] == "collect_abandoned_uploads"
