import uuid

import pytest

from domain.errors import InvalidPayload, ModelUnavailable, NotFound, PermanentError, TransientError
from domain.models import ImageStatus
from domain.services.embeddings import EmbeddingService, NotEmbeddable, NotReadyYet, point_id
from domain.services.media import MediaService, ThumbnailSpec
from tests.unit.fakes import (
    FakeEmbedder,
    FakeImageProcessor,
    FakeUnitOfWork,
    InMemoryObjectStore,
    InMemoryVectorIndex,
)


@pytest.fixture
def world():
    rows: dict = {}
    store = InMemoryObjectStore()
    media = MediaService(lambda: FakeUnitOfWork(rows), store, FakeImageProcessor(), ThumbnailSpec((64, 128)))
    embedder, index = FakeEmbedder(), InMemoryVectorIndex()
    return media, EmbeddingService(lambda: FakeUnitOfWork(rows), store, embedder, index), embedder, index, rows


def ready(media, data=b"pixels", owner="ann"):
    image = media.register_image(data, "image/jpeg", owner=owner)
    media.process_image(image.id)
    return image


def test_embeds_from_the_largest_thumbnail_with_payload(world):
    media, service, embedder, index, _ = world
    image = ready(media)
    pid = service.embed_image(image.id)
    assert pid == str(uuid.uuid5(uuid.UUID("6f6c1a52-7b1e-4d3c-9a39-5d0f2f0e8a11"), image.id))
    assert embedder.images == [b"128:b'pixels'"]  # the 128 thumbnail, never the original
    vector, payload = index.points[pid]
    assert payload == {"image_id": image.id, "owner": "ann", "content_type": "image/jpeg",
                       "created_at": image.created_at.isoformat(), "model": "fake-clip"}


def test_reembedding_is_idempotent(world):
    media, service, _, index, _ = world
    image = ready(media)
    service.embed_image(image.id)
    service.embed_image(image.id)
    assert list(index.points) == [point_id(image.id)] and index.upserts == 2


def test_failed_images_never_reach_the_embedder(world):
    media, service, embedder, index, _ = world
    image = media.register_image(b"bad")
    with pytest.raises(PermanentError):
        media.process_image(image.id)
    with pytest.raises(NotEmbeddable, match="failed processing"):
        service.embed_image(image.id)
    assert embedder.images == [] and index.points == {}


def test_pending_image_is_retried_later(world):
    media, service, embedder, _, _ = world
    image = media.register_image(b"pixels")
    with pytest.raises(NotReadyYet) as err:
        service.embed_image(image.id)
    assert isinstance(err.value, TransientError) and embedder.images == []


def test_missing_image(world):
    _, service, *_ = world
    with pytest.raises(NotFound):
        service.embed_image(str(uuid.uuid4()))


def test_model_unavailable_is_transient_and_writes_nothing(world):
    media, service, embedder, index, _ = world
    image = ready(media)
    embedder.down = True
    with pytest.raises(ModelUnavailable) as err:
        service.embed_image(image.id)
    assert isinstance(err.value, TransientError) and index.points == {}


def test_search_by_text_image_and_id(world):
    media, service, embedder, index, _ = world
    images = [ready(media, data) for data in (b"one", b"two", b"three")]
    for image in images:
        service.embed_image(image.id)
    # The fake embeds text like bytes: the 128 thumbnail's bytes as text find that image first.
    hits = service.search_text("128:b'two'", limit=2)
    assert hits[0].image_id == images[1].id and len(hits) == 2
    assert hits[0].score == pytest.approx(1.0)
    assert service.search_image(b"128:b'three'", limit=1)[0].image_id == images[2].id
    similar = service.search_similar(images[0].id, limit=3)
    assert similar[0].image_id == images[0].id and [h.score for h in similar] == sorted(
        [h.score for h in similar], reverse=True)


def test_search_filters_by_owner_and_validates(world):
    media, service, *_ = world
    a, b = ready(media, b"a", owner="ann"), ready(media, b"b", owner="bob")
    service.embed_image(a.id)
    service.embed_image(b.id)
    assert [h.image_id for h in service.search_text("anything", owner="bob")] == [b.id]
    with pytest.raises(InvalidPayload):
        service.search_text("   ")
    with pytest.raises(InvalidPayload):
        service.search_text("x", limit=0)
    with pytest.raises(NotFound, match="no embedding"):
        service.search_similar(str(uuid.uuid4()))


def test_reindex_candidates_are_ready_images_filtered(world):
    media, service, _, _, rows = world
    a, b = ready(media, b"a", owner="ann"), ready(media, b"b", owner="bob")
    pending = media.register_image(b"c", owner="ann")
    assert service.reindex_candidates() == [a.id, b.id]
    assert service.reindex_candidates(owner="ann") == [a.id]
    assert service.reindex_candidates(created_from=rows[b.id].created_at) == [b.id]
    assert service.reindex_candidates(created_to=rows[b.id].created_at) == [a.id]
    assert pending.id not in service.reindex_candidates() and rows[pending.id].status is ImageStatus.PENDING
