"""A producer process sends; a real `dramatiq actors` worker processes, on Redis and RabbitMQ."""

import json

import pytest

from adapters.objectstore.minio import MinioObjectStore, make_client
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import ImageStatus
from entrypoints.samples import make_image
from tests import services

pytestmark = pytest.mark.e2e


def test_thumbnails_end_to_end(broker_env, tmp_path):
    good = tmp_path / "photo.jpg"
    good.write_bytes(make_image(1600, 1200, seed=7, orientation=6))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")

    engine = make_engine(broker_env["DATABASE_URL"])
    uow = uow_factory(engine)

    def image(image_id):
        with uow() as u:
            return u.images.get(image_id)

    with services.WorkerProcess(broker_env, tmp_path / "worker.log") as worker:
        produced = services.run_cli(["images", "add", str(good), str(bad)], broker_env)
        assert produced.returncode == 0, produced.stderr
        good_id, bad_id = produced.stdout.split()

        ready = services.wait_for(lambda: (i := image(good_id)) and i.status is ImageStatus.READY and i,
                                  timeout=90, message="READY row")
        failed = services.wait_for(lambda: (i := image(bad_id)) and i.status is ImageStatus.FAILED and i,
                                   timeout=90, message="FAILED row")
        log = worker.output()
    engine.dispose()

    assert [t.size for t in ready.thumbnails] == [128, 256, 512]
    assert (ready.thumbnails[-1].width, ready.thumbnails[-1].height) == (384, 512)  # EXIF rotation
    store = MinioObjectStore(
        make_client(broker_env["MINIO_ENDPOINT"], "testing", "testing", secure=False, region="us-east-1"),
        broker_env["MINIO_BUCKET"], create_bucket=False)
    for t in ready.thumbnails:
        assert store.size(t.key) == t.byte_size
    assert "not an image" in failed.failure_reason

    # Log lines are JSON with the message context bound; the bad image ran exactly once.
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    bad_runs = [r for r in records if r.get("image_id") == bad_id and "Permanent failure" in r["event"]]
    assert len(bad_runs) == 1, log
    assert all(r["actor"] == "process_image" and r["message_id"] and r["queue"].endswith("media")
               for r in bad_runs)
    assert not [r for r in records if r.get("image_id") == bad_id and r.get("retries", 0) > 0]
