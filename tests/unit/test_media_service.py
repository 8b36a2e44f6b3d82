import pytest

from domain.errors import InvalidImage, NotFound
from domain.models import ImageStatus, new_id
from domain.services.media import MediaService, ThumbnailSpec, thumbnail_key
from tests.unit.fakes import FakeImageProcessor, FakeUnitOfWork, InMemoryObjectStore


@pytest.fixture
def world():
    rows: dict = {}
    store = InMemoryObjectStore()
    imaging = FakeImageProcessor()
    events: list = []
    service = MediaService(lambda: FakeUnitOfWork(rows, events), store, imaging,
                           ThumbnailSpec((64, 128), "webp", 80))
    service.events = events  # visible to the tests
    return service, rows, store, imaging


def test_register_stores_original_and_records_pending(world):
    service, rows, store, _ = world
    image = service.register_image(b"pixels", "image/jpeg", owner="ann")
    assert rows[image.id].status is ImageStatus.PENDING
    assert store.get(image.original_key) == b"pixels"
    assert rows[image.id].owner == "ann"


def test_process_makes_thumbnails_under_stable_keys_and_marks_ready(world):
    service, rows, store, _ = world
    image = service.register_image(b"pixels")
    result = service.process_image(image.id)
    assert result.status is ImageStatus.READY
    assert [t.size for t in rows[image.id].thumbnails] == [64, 128]
    for t in rows[image.id].thumbnails:
        assert t.key == thumbnail_key(image.id, t.size, "webp")
        assert store.get(t.key).startswith(f"{t.size}:".encode())
    assert rows[image.id].metadata["format"] == "FAKE"
    assert [e.type for e in service.events] == ["image.uploaded", "image.processed"]
    assert service.events[1].aggregate_id == image.id


def test_second_run_changes_nothing(world):
    service, rows, store, imaging = world
    image = service.register_image(b"pixels")
    service.process_image(image.id)
    before = (rows[image.id].updated_at, store.puts, imaging.calls)
    again = service.process_image(image.id)
    assert again.status is ImageStatus.READY
    assert (rows[image.id].updated_at, store.puts, imaging.calls) == before


def test_undecodable_image_fails_permanently_with_reason(world):
    service, rows, _, _ = world
    image = service.register_image(b"bad")
    with pytest.raises(InvalidImage):
        service.process_image(image.id)
    assert rows[image.id].status is ImageStatus.FAILED
    assert "not an image" in rows[image.id].failure_reason
    assert service.events[-1].type == "image.failed"
    # A failed image is terminal: running again neither raises nor changes it.
    assert service.process_image(image.id).status is ImageStatus.FAILED


def test_missing_image_is_not_found(world):
    service, *_ = world
    with pytest.raises(NotFound):
        service.process_image(new_id())


def test_missing_original_fails_permanently(world):
    service, rows, store, _ = world
    image = service.register_image(b"pixels")
    store.delete(image.original_key)
    with pytest.raises(NotFound):
        service.process_image(image.id)
    assert rows[image.id].status is ImageStatus.FAILED
    assert rows[image.id].failure_reason.startswith("original missing")


def test_transient_store_failure_leaves_image_processing_for_the_retry(world):
    from domain.errors import TransientError

    service, rows, store, _ = world
    image = service.register_image(b"pixels")
    real_put = store.put
    store.put = lambda *a, **k: (_ for _ in ()).throw(TransientError("store down"))
    with pytest.raises(TransientError):
        service.process_image(image.id)
    assert rows[image.id].status is ImageStatus.PROCESSING
    store.put = real_put
    assert service.process_image(image.id).status is ImageStatus.READY


def test_a_redelivery_running_beside_the_first_run_records_one_outcome(world):
    """process_image is what the outbox sends on image.uploaded: a redelivery may run while the
    first run is still rendering (RabbitMQ redelivers an unacked message; a relay resends after a
    crash before its commit). Both write the same objects under the same keys; the outcome and
    its image.processed event are recorded once."""
    service, rows, store, imaging = world
    image = service.register_image(b"pixels")
    real_render = imaging.render
    nested: list = []

    def render_with_a_redelivery_meanwhile(*args):  # type: ignore[no-untyped-def]
        if not nested:
            nested.append(None)
            nested[0] = service.process_image(image.id)  # the redelivery runs to its end first
        return real_render(*args)

    imaging.render = render_with_a_redelivery_meanwhile
    first = service.process_image(image.id)
    assert first.status is nested[0].status is ImageStatus.READY
    assert [e.type for e in service.events] == ["image.uploaded", "image.processed"]
    assert sorted(store.list("thumbnails/")) == [thumbnail_key(image.id, s, "webp") for s in (128, 64)]


def test_image_uploaded_is_routed_to_process_image_by_its_id():
    """Registering is enough: the routing table sends process_image(image id) for image.uploaded."""
    from bootstrap.routing import ANNOUNCED, ROUTES
    from domain.services.outbox import Router

    (route,) = Router(ROUTES, ANNOUNCED).routes_for("image.uploaded")
    assert route.actor == "process_image"
    assert route.args({"aggregate_id": "i-1", "payload": {"image_id": "i-1"}}) == ("i-1",)
