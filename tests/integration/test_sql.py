"""The SQL adapter on real PostgreSQL and on SQLite."""

import threading

import pytest
from sqlalchemy import inspect

from adapters.sql.engine import make_engine
from adapters.sql.tables import metadata
from adapters.sql.uow import uow_factory
from domain.models import Image, ImageStatus, Thumbnail, new_id, utcnow


@pytest.fixture
def uow(database_url):
    engine = make_engine(database_url)
    yield uow_factory(engine)
    engine.dispose()


def _image() -> Image:
    image_id = new_id()
    return Image(id=image_id, original_key=f"originals/{image_id}", content_type="image/jpeg", owner="o")


def test_migrations_match_the_tables(database_url):
    engine = make_engine(database_url)
    insp = inspect(engine)
    for table in metadata.sorted_tables:
        db_cols = {c["name"] for c in insp.get_columns(table.name)}
        assert db_cols == set(table.columns.keys()), table.name
    engine.dispose()


def test_roundtrip_with_thumbnails_and_metadata(uow):
    image = _image()
    with uow() as u:
        u.images.add(image)
        u.commit()
    thumbs = [Thumbnail(128, "thumbnails/x/128.webp", 128, 96, "webp", 900),
              Thumbnail(256, "thumbnails/x/256.webp", 256, 192, "webp", 2000)]
    with uow() as u:
        img = u.images.get_for_update(image.id)
        img.mark_ready(thumbs, {"format": "JPEG", "exif": {"make": "X"}}, utcnow())
        u.images.save(img)
        u.commit()
    with uow() as u:
        got = u.images.get(image.id)
    assert got.status is ImageStatus.READY
    assert got.thumbnails == thumbs
    assert got.metadata["exif"]["make"] == "X"
    assert got.created_at.tzinfo is not None


def test_leaving_without_commit_rolls_back(uow):
    image = _image()
    with uow() as u:
        u.images.add(image)
    with uow() as u:
        assert u.images.get(image.id) is None


def test_for_update_serialises_concurrent_read_modify_write(uow):
    """Two threads each append a failure note under the row lock; neither write is lost."""
    image = _image()
    with uow() as u:
        u.images.add(image)
        u.commit()
    barrier = threading.Barrier(2)

    def bump(tag: str) -> None:
        barrier.wait()
        with uow() as u:
            img = u.images.get_for_update(image.id)
            img.failure_reason = (img.failure_reason or "") + tag
            u.images.save(img)
            u.commit()

    threads = [threading.Thread(target=bump, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with uow() as u:
        assert sorted(u.images.get(image.id).failure_reason) == ["a", "b"]
