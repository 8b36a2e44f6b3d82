"""A producer process sends; a real `dramatiq actors` worker processes, on Redis and RabbitMQ."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from adapters.objectstore.minio import MinioObjectStore, make_client
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import ImageStatus
from entrypoints.samples import make_image
from tests import services
from tests.imaging_support import mad, thumbnail_reference

pytestmark = pytest.mark.e2e


def test_thumbnails_end_to_end(broker_env, phone_photos, tmp_path):
    good = tmp_path / "photo.jpg"
    good.write_bytes(make_image(1600, 1200, seed=7, orientation=6))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    # What phones write; the content decides the format, never the name: the last is a HEIC named .jpg.
    phones = {"heic": tmp_path / "IMG_0001.HEIC", "avif": tmp_path / "PXL_0002.avif",
              "disguised": tmp_path / "IMG_0003.jpg"}
    for name, path in phones.items():
        path.write_bytes(phone_photos["heic" if name == "disguised" else name].data)

    engine = make_engine(broker_env["DATABASE_URL"])
    uow = uow_factory(engine)

    def image(image_id):
        with uow() as u:
            return u.images.get(image_id)

    with services.WorkerProcess(broker_env, tmp_path / "worker.log") as worker:
        produced = services.run_cli(["images", "add", str(good), str(bad), *map(str, phones.values())],
                                    broker_env)
        assert produced.returncode == 0, produced.stderr
        good_id, bad_id, *phone_ids = produced.stdout.split()

        ready = services.wait_for(lambda: (i := image(good_id)) and i.status is ImageStatus.READY and i,
                                  timeout=90, message="READY row")
        failed = services.wait_for(lambda: (i := image(bad_id)) and i.status is ImageStatus.FAILED and i,
                                   timeout=90, message="FAILED row")

        def phones_ready():
            found = [image(i) for i in phone_ids]
            return all(i and i.status is ImageStatus.READY for i in found) and dict(zip(phones, found, strict=True))

        phone_images = services.wait_for(phones_ready, timeout=90, message="HEIC and AVIF READY")
        log = worker.output()
    engine.dispose()

    assert [t.size for t in ready.thumbnails] == [128, 256, 512]
    assert (ready.thumbnails[-1].width, ready.thumbnails[-1].height) == (384, 512)  # EXIF rotation
    client = make_client(broker_env["MINIO_ENDPOINT"], "testing", "testing", secure=False, region="us-east-1")
    store = MinioObjectStore(client, broker_env["MINIO_BUCKET"], create_bucket=False)
    for t in ready.thumbnails:
        assert store.size(t.key) == t.byte_size
    assert "not an image" in failed.failure_reason

    # HEIC and AVIF: the right media type (from the content, for the .jpg name too), upright,
    # the camera's fields, and thumbnails in sRGB converted from the Display P3 profile.
    cameras = {"heic": ("HEIF", "image/heic", "Apple", "iPhone 15 Pro", 6, "2025:06:01 12:30:00"),
               "avif": ("AVIF", "image/avif", "Google", "Pixel 9", 8, "2025:07:02 08:15:00")}
    for name, found in phone_images.items():
        source = "heic" if name == "disguised" else name
        fmt, media_type, make, model, orientation, taken_at = cameras[source]
        assert found.content_type == media_type, name
        assert client.stat_object(broker_env["MINIO_BUCKET"], found.original_key).content_type == media_type
        m = found.metadata
        assert (m["format"], m["width"], m["height"], m["mode"]) == (fmt, 600, 800, "RGB"), name  # as shown
        assert m["exif"] == {"make": make, "model": model, "orientation": orientation, "taken_at": taken_at}
        assert m["color_profile"] == "Display P3 (generated)", name
        assert [(t.size, t.width, t.height) for t in found.thumbnails] == [
            (128, 96, 128), (256, 192, 256), (512, 384, 512)], name
        for t in found.thumbnails:
            assert store.size(t.key) == t.byte_size and t.format == "webp"
        largest = Image.open(io.BytesIO(store.get(found.thumbnails[-1].key)))
        assert "icc_profile" not in largest.info  # untagged: sRGB
        pixels = np.asarray(largest.convert("RGB"), float)
        reference = thumbnail_reference(phone_photos[source].srgb, 512)
        untagged = thumbnail_reference(phone_photos[source].untagged, 512)
        # The mean colour tells sRGB from the profile ignored (about 16/255 off in red), ...
        assert np.abs(untagged.mean((0, 1)) - reference.mean((0, 1))).max() > 8
        assert np.abs(pixels.mean((0, 1)) - reference.mean((0, 1))).max() <= 1.5, name
        # ... and each pixel is where the reference has it: turned upright, once.
        assert mad(pixels, reference) <= 3, name

    # Log lines are JSON with the message context bound; the bad image ran exactly once.
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    bad_runs = [r for r in records if r.get("image_id") == bad_id and "Permanent failure" in r["event"]]
    assert len(bad_runs) == 1, log
    assert all(r["actor"] == "process_image" and r["message_id"] and r["queue"].endswith("media")
               for r in bad_runs)
    assert not [r for r in records if r.get("image_id") == bad_id and r.get("retries", 0) > 0]
