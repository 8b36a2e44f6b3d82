"""`atelier images add`: registering is enough (issue 16, hole 7). The image and its image.uploaded
event commit together; the outbox routes the event to process_image. The command relays once
itself, so nothing else need run; with the broker down the image is registered all the same and
sent by a later relay. It ends with one clear line, and a non-zero exit when anything failed."""

from __future__ import annotations

import json

import redis
from dramatiq import Message

from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import ImageStatus
from entrypoints.samples import make_image
from tests import services


def _env(tmp_path, broker_url: str) -> dict[str, str]:
    return services.subprocess_env(BROKER_URL=broker_url, QUEUE_PREFIX=services.unique("img") + "_",
                                   DATABASE_URL=f"sqlite:///{tmp_path / 'atelier.db'}",
                                   LOCAL_STORE_DIR=str(tmp_path / "objects"), LOG_LEVEL="CRITICAL")


def _queued(env: dict[str, str]) -> list[Message]:
    client = redis.Redis.from_url(services.REDIS_URL)
    try:
        return [Message.decode(v) for v in client.hvals(f"dramatiq:{env['QUEUE_PREFIX']}media.msgs")]
    finally:
        client.close()


def _image(env: dict[str, str], image_id: str):  # type: ignore[no-untyped-def]
    engine = make_engine(env["DATABASE_URL"])
    try:
        with uow_factory(engine)() as uow:
            return uow.images.get(image_id), [e for e in uow.outbox.list(limit=100) if e.aggregate_id == image_id]
    finally:
        engine.dispose()


def _photo(tmp_path, name: str = "photo.jpg"):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_bytes(make_image(320, 200, seed=3))
    return path


def test_registering_is_enough_and_processing_is_sent_once(tmp_path):
    env = _env(tmp_path, services.REDIS_URL)
    assert services.run_cli(["migrate"], env).returncode == 0
    try:
        added = services.run_cli(["images", "add", str(_photo(tmp_path)), str(_photo(tmp_path, "b.jpg"))], env)
        assert added.returncode == 0, added.stderr
        ids = added.stdout.split()
        assert added.stderr.strip().splitlines()[-1] == "registered 2 images; processing sent"
        queued = _queued(env)
        # One process_image per image, sent by the outbox relay with the event's dedup key.
        assert sorted(m.args[0] for m in queued) == sorted(ids)
        assert all(m.actor_name == "process_image" and m.options["dedup_key"].endswith(":process_image")
                   for m in queued)
        for image_id in ids:
            image, events = _image(env, image_id)
            assert image.status is ImageStatus.PENDING
            assert [(e.type, e.published_at is not None) for e in events] == [("image.uploaded", True)]
    finally:
        services.purge_queues(services.REDIS_URL, env["QUEUE_PREFIX"], ())


def test_with_the_broker_down_the_image_is_registered_and_sent_later(tmp_path):
    down = _env(tmp_path, f"redis://127.0.0.1:{services.free_port()}/0")
    assert services.run_cli(["migrate"], down).returncode == 0
    added = services.run_cli(["images", "add", str(_photo(tmp_path))], down)
    assert added.returncode == 0, added.stderr
    assert "Traceback" not in added.stderr
    last = added.stderr.strip().splitlines()[-1]
    assert last.startswith("registered 1 image; processing not sent yet") and "outbox relay" in last
    (image_id,) = added.stdout.split()
    image, events = _image(down, image_id)
    assert image.status is ImageStatus.PENDING and [e.published_at for e in events] == [None]

    up = dict(down, BROKER_URL=services.REDIS_URL)
    try:
        relayed = services.run_cli(["outbox", "relay", "--once"], up)
        assert relayed.returncode == 0, relayed.stderr
        assert [m.args[0] for m in _queued(up)] == [image_id]
    finally:
        services.purge_queues(services.REDIS_URL, up["QUEUE_PREFIX"], ())


def test_a_file_that_cannot_be_read_fails_the_command_with_one_line(tmp_path):
    env = _env(tmp_path, "stub://")
    assert services.run_cli(["migrate"], env).returncode == 0
    added = services.run_cli(["images", "add", str(_photo(tmp_path)), str(tmp_path / "missing.jpg"),
                              "--no-relay"], env)
    assert added.returncode == 1
    assert len(added.stdout.split()) == 1  # the readable one was registered
    lines = added.stderr.strip().splitlines()
    assert any("missing.jpg" in line for line in lines[:-1])
    assert lines[-1] == "error: 1 of 2 images not registered"
    assert "Traceback" not in added.stderr


def test_the_database_down_fails_the_command_with_one_line(tmp_path):
    env = _env(tmp_path, "stub://")
    env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{services.free_port()}/nothing"
    added = services.run_cli(["images", "add", str(_photo(tmp_path)), str(_photo(tmp_path, "b.jpg"))], env)
    assert added.returncode == 1
    assert added.stdout == ""
    assert "Traceback" not in added.stderr
    lines = added.stderr.strip().splitlines()
    assert "photo.jpg: not registered: OperationalError" in lines[0]
    assert lines[-1] == "error: 2 of 2 images not registered"


def test_phone_formats_are_taken_and_the_content_decides_the_media_type(tmp_path):
    from PIL import Image

    from tests.imaging_support import colourful, heic, save

    env = _env(tmp_path, "stub://")
    assert services.run_cli(["migrate"], env).returncode == 0
    photo = Image.fromarray(colourful(48, 64))
    heic_data = heic(photo)
    files = {  # name: (content, the media type its content says)
        "IMG_0001.HEIC": (heic_data, "image/heic"),
        "IMG_0002.heif": (heic_data, "image/heic"),
        "PXL_0003.AVIF": (save(photo, "AVIF", quality=80), "image/avif"),
        "IMG_0004.jpg": (heic_data, "image/heic"),  # a HEIC under a JPEG's name
        "scan.heic": (save(photo, "PNG"), "image/png"),  # and the other way round
        "notes.avif": (b"not an image at all\n", None),  # registered: process_image fails it with the reason
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    added = services.run_cli(["images", "add", *(str(tmp_path / name) for name in files), "--no-relay"], env)
    assert added.returncode == 0, added.stderr
    ids = added.stdout.split()
    assert len(ids) == len(files)
    for (name, (_, media_type)), image_id in zip(files.items(), ids, strict=True):
        image, events = _image(env, image_id)
        assert image.content_type == media_type, name
        assert [(e.type, e.payload["content_type"]) for e in events] == [("image.uploaded", media_type)], name

    shown = services.run_cli(["images", "show", ids[3]], env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["content_type"] == "image/heic"


def test_on_the_embedded_stub_broker_the_command_processes_the_images_itself(tmp_path):
    """stub:// is an in-process broker: what the relay hands it dies with the command. The command
    runs the work itself then, so an image added on the embedded default ends READY, not PENDING
    behind an event marked published."""
    env = _env(tmp_path, "stub://")
    assert services.run_cli(["migrate"], env).returncode == 0
    added = services.run_cli(["images", "add", str(_photo(tmp_path)), str(_photo(tmp_path, "b.jpg"))], env)
    assert added.returncode == 0, added.stderr
    assert added.stderr.strip().splitlines()[-1] == "registered 2 images; processed here (BROKER_URL is stub://)"
    for image_id in added.stdout.split():
        image, events = _image(env, image_id)
        assert image.status is ImageStatus.READY and len(image.thumbnails) == 3
        assert ("image.uploaded", True) in [(e.type, e.published_at is not None) for e in events]


def test_the_images_registered_beside_one_that_failed_are_processed_all_the_same(tmp_path):
    """One unreadable file made the command return before relaying: on the embedded stub broker
    (no scheduler, no other worker) the readable image stayed PENDING until some later command."""
    env = _env(tmp_path, "stub://")
    assert services.run_cli(["migrate"], env).returncode == 0
    added = services.run_cli(["images", "add", str(_photo(tmp_path)), str(tmp_path / "missing.jpg")], env)
    assert added.returncode == 1
    assert added.stderr.strip().splitlines()[-1] == "error: 1 of 2 images not registered"
    (image_id,) = added.stdout.split()
    image, events = _image(env, image_id)
    assert image.status is ImageStatus.READY
    assert "Traceback" not in added.stderr
