"""Embeddings end to end on Redis and RabbitMQ: a producer adds images; a real `dramatiq actors`
worker renders thumbnails; the outbox relay routes image.processed to embed_image; the worker
embeds with the tiny open_clip model (loaded from a checkpoint file, like real weights) into
Qdrant local mode; after the worker stops (local mode is one process), `atelier search` finds
each image first by itself, a HEIC and an AVIF among them. Without weights, the message is kept and
retried, with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import ImageStatus
from entrypoints.samples import make_image
from tests import services
from tests.clip_support import tiny_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(broker_env, tmp_path):
    env = dict(broker_env)
    env.update(tiny_env(tmp_path / "clip"))
    yield env
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("embeddings", "outbox"))


def _records(worker: services.WorkerProcess) -> list[dict]:
    return [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]


def _send_embed(env: dict[str, str], image_id: str) -> None:
    script = f"import actors; actors.media.embed_image.send({image_id!r})"
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=services.ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_embed_through_the_outbox_then_search(env, phone_photos, tmp_path):
    files = []
    for seed in range(3):
        path = tmp_path / f"photo{seed}.jpg"
        path.write_bytes(make_image(1200, 900, seed=seed))
        files.append(str(path))
    media_types = {}  # what the phones wrote goes the same way (thumbnails from HEIC and AVIF, embeddings)
    for name, media_type in (("IMG_0001.HEIC", "image/heic"), ("PXL_0002.avif", "image/avif")):
        path = tmp_path / name
        path.write_bytes(phone_photos[media_type.split("/")[1]].data)
        files.append(str(path))
        media_types[len(files) - 1] = media_type
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    engine = make_engine(env["DATABASE_URL"])
    uow = uow_factory(engine)

    def status(image_id):
        with uow() as u:
            image = u.images.get(image_id)
        return image.status if image else None

    with services.WorkerProcess(env, tmp_path / "worker.log", threads=4) as worker:
        added = services.run_cli(["images", "add", *files, str(bad)], env)
        assert added.returncode == 0, added.stderr
        *ids, bad_id = added.stdout.split()
        phone_ids = {ids[n]: media_type for n, media_type in media_types.items()}
        services.wait_for(lambda: all(status(i) is ImageStatus.READY for i in ids)
                          and status(bad_id) is ImageStatus.FAILED, timeout=120, message="thumbnails")
        relayed = services.run_cli(["outbox", "relay", "--once"], env)
        assert relayed.returncode == 0, relayed.stderr
        # Sent by hand too (as `atelier reindex` would): a FAILED image never reaches the model.
        _send_embed(env, bad_id)
        services.wait_for(lambda: {r.get("image_id") for r in _records(worker)
                                   if r.get("event") == "image embedded"} >= set(ids),
                          timeout=180, message="embeddings")
        services.wait_for(lambda: [r for r in _records(worker) if r.get("image_id") == bad_id
                                   and r.get("actor") == "embed_image"
                                   and "Permanent failure" in r.get("event", "")], timeout=60,
                          message="bad image refused")
    engine.dispose()
    records = _records(worker)
    refused = [r for r in records if r.get("image_id") == bad_id and "Permanent failure" in r["event"]
               and r.get("actor") == "embed_image"]
    assert len(refused) == 1 and "failed processing" in refused[0]["event"]
    assert refused[0]["queue"].endswith("embeddings") and refused[0]["retries"] == 0
    embedded = [r for r in records if r.get("event") == "image embedded"]
    assert sorted(r["image_id"] for r in embedded) == sorted(ids)  # one relay run: one message each
    assert sum("CLIP model loaded" in r.get("event", "") for r in records) == 1  # once per process

    # Each kind (a JPEG, the HEIC, the AVIF) finds itself first: its vector is its own. One CLI run
    # each (a few seconds of torch start-up): the JPEGs are alike, the first one stands for them.
    for image_id in [ids[0], *phone_ids]:
        found = services.run_cli(["search", "--like", image_id, "--limit", "3", "--json"], env, timeout=120)
        assert found.returncode == 0, found.stderr
        rows = [json.loads(line) for line in found.stdout.splitlines()]
        assert rows[0]["image_id"] == image_id and rows[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert bad_id not in [r["image_id"] for r in rows]
    text = services.run_cli(["search", "a red bicycle", "--limit", "10", "--json"], env, timeout=120)
    assert text.returncode == 0, text.stderr
    rows = [json.loads(line) for line in text.stdout.splitlines()]
    assert sorted(r["image_id"] for r in rows) == sorted(ids)
    # The payload's media type is the one decided by content when the producer registered the file.
    assert {r["image_id"]: r["content_type"] for r in rows} == {i: phone_ids.get(i, "image/jpeg") for i in ids}


def test_without_weights_messages_are_kept_and_retried(env, tmp_path):
    env = dict(env, CLIP_PRETRAINED=str(tmp_path / "no-such-weights.pt"))
    with services.WorkerProcess(env, tmp_path / "worker.log", threads=2) as worker:
        image_path = tmp_path / "p.jpg"
        image_path.write_bytes(make_image(640, 480, seed=9))
        added = services.run_cli(["images", "add", str(image_path)], env)
        assert added.returncode == 0, added.stderr
        image_id = added.stdout.strip()
        engine = make_engine(env["DATABASE_URL"])
        uow = uow_factory(engine)

        def ready():
            with uow() as u:
                return u.images.get(image_id).status is ImageStatus.READY

        services.wait_for(ready, timeout=120, message="READY")
        engine.dispose()
        _send_embed(env, image_id)
        services.wait_for(lambda: any("Retrying message" in r.get("event", "") for r in _records(worker)),
                          timeout=60, message="a retry")
    records = _records(worker)
    unavailable = [r for r in records if r.get("event", "").startswith("CLIP model unavailable")]
    assert len(unavailable) == 1, unavailable  # one clear line, not one per message
    assert "no-such-weights.pt does not exist" in unavailable[0]["event"]
    assert not [r for r in records if r.get("event") == "image embedded"]
    assert not [r for r in records if "Permanent failure" in r.get("event", "")]
