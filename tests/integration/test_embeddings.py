"""The open_clip embedder (tiny model loaded from a saved checkpoint through the production
path), dynamic batching with real threads, and Qdrant in local mode, alone and together."""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.clip import ClipEmbedder, file_metadata, load_clip
from adapters.imaging import PillowImageProcessor
from adapters.objectstore.local import LocalObjectStore
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from adapters.vector_index import DimensionMismatch, QdrantIndex
from domain.errors import IndexUnavailable, InvalidImage, ModelUnavailable, PermanentError
from domain.models import ImageStatus
from domain.services.embeddings import EmbeddingService, NotEmbeddable, point_id
from domain.services.media import MediaService
from entrypoints.samples import make_image
from tests.clip_support import TINY_MODEL, make_tiny_clip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def _decode(data: bytes, side: int):
    return PillowImageProcessor().decode(data, longest_side=side)[0]


def _embedder(tiny, **kw) -> ClipEmbedder:
    configs, checkpoint = tiny
    return ClipEmbedder(lambda: load_clip(TINY_MODEL, str(checkpoint), model_config=configs), _decode,
                        model_id="tiny", **kw)


def test_loads_the_checkpoint_file_and_embeds_unit_vectors(tiny):
    configs, checkpoint = tiny
    clip = load_clip(TINY_MODEL, str(checkpoint), model_config=configs)
    import torch

    saved = torch.load(checkpoint)
    assert torch.equal(clip.model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])
    embedder = _embedder(tiny, max_batch_size=1)
    vector = embedder.embed_image(make_image(800, 600, seed=1))
    text = embedder.embed_text("a red bicycle")
    assert len(vector) == len(text) == 32
    assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-5)
    assert math.isclose(sum(v * v for v in text), 1.0, rel_tol=1e-5)


def test_batched_results_equal_one_at_a_time(tiny):
    images = [make_image(640, 480, seed=s) for s in range(12)]
    single = _embedder(tiny, max_batch_size=1)
    batched = _embedder(tiny, max_batch_size=8, max_wait=0.05)
    expected = [single.embed_image(d) for d in images]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(batched.embed_image, images))
    for a, b in zip(expected, got, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
    assert sum(batched.batcher.batch_sizes) == 12 and max(batched.batcher.batch_sizes) > 1


def test_unreadable_bytes_are_refused_before_the_model(tiny):
    embedder = _embedder(tiny, max_batch_size=4)
    with pytest.raises(InvalidImage):
        embedder.embed_image(b"not an image at all")
    assert embedder.batcher.batch_sizes == []


def test_missing_weights_say_so_once_and_are_transient(tmp_path, caplog):
    calls = []

    def loader():
        calls.append(1)
        return load_clip("ViT-B-32", str(tmp_path / "missing.pt"))

    embedder = ClipEmbedder(loader, _decode, model_id="x", retry_after=60)
    with caplog.at_level(logging.ERROR, logger="adapters.clip"):
        for _ in range(3):
            with pytest.raises(ModelUnavailable, match="missing.pt does not exist"):
                embedder.embed_image(make_image(64, 64))
    lines = [r for r in caplog.records if r.name == "adapters.clip"]
    assert len(lines) == 1 and "CLIP model unavailable" in lines[0].getMessage()
    assert len(calls) == 1  # remembered for retry_after: a burst of messages does not reload


def test_unknown_tag_and_model_are_unavailable(tiny):
    with pytest.raises(ModelUnavailable, match="neither a file nor a tag"):
        load_clip("ViT-B-32", "no_such_tag")
    with pytest.raises(ModelUnavailable, match="not an open_clip model"):
        load_clip("ViT-Nope", "random")


def test_checkpoint_files_keep_their_tags_metadata(tmp_path, tiny):
    # The OpenAI ViT-B-32 file, recognised by its published name: QuickGELU.
    openai_file = tmp_path / "ViT-B-32.pt"
    openai_file.write_bytes(b"")
    assert file_metadata("ViT-B-32", openai_file, None)["quick_gelu"] is True
    assert file_metadata("ViT-B-32", tmp_path / "other.bin", "openai")["quick_gelu"] is True
    assert file_metadata("ViT-B-32", tmp_path / "other.bin", "laion2b_s34b_b79k")["quick_gelu"] is False
    with pytest.raises(ModelUnavailable, match="not a tag"):
        file_metadata("ViT-B-32", tmp_path / "other.bin", "nope")


def test_open_clip_config_beside_the_file_sets_activation_and_normalisation(tmp_path, tiny):
    import shutil

    from open_clip.transformer import QuickGELU
    from torchvision.transforms import Normalize

    configs, checkpoint = tiny
    folder = tmp_path / "hub"
    folder.mkdir()
    shutil.copy(checkpoint, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"quick_gelu": True},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }))
    clip = load_clip(TINY_MODEL, str(folder / "open_clip_pytorch_model.bin"), model_config=configs)
    assert clip.metadata["quick_gelu"] is True
    assert any(isinstance(m, QuickGELU) for m in clip.model.modules())
    normalize = [t for t in clip.preprocess.transforms if isinstance(t, Normalize)][0]
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.25, 0.25, 0.25)
    plain = load_clip(TINY_MODEL, str(checkpoint), model_config=configs)
    assert not any(isinstance(m, QuickGELU) for m in plain.model.modules())


def _unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def test_qdrant_local_collection_upsert_search(tmp_path):
    index = QdrantIndex("images", path=tmp_path / "q")
    assert index.search(_unit(1, 0, 0), 5) == []  # nothing embedded yet: no collection, no error
    index.upsert(point_id("a"), _unit(1, 0, 0), {"image_id": "a", "owner": "ann"})
    index.upsert(point_id("b"), _unit(0, 1, 0), {"image_id": "b", "owner": "bob"})
    index.upsert(point_id("a"), _unit(1, 0.1, 0), {"image_id": "a", "owner": "ann"})  # again: replaced
    assert index.count() == 2
    info = index.client().get_collection("images").config.params.vectors
    assert info.size == 3 and info.distance.value.lower() == "cosine"
    hits = index.search(_unit(1, 0, 0), 5)
    assert [h.image_id for h in hits] == ["a", "b"] and hits[0].score > 0.99
    assert [h.image_id for h in index.search(_unit(1, 0, 0), 5, owner="bob")] == ["b"]
    assert index.get_vector(point_id("a")) == pytest.approx(_unit(1, 0.1, 0), abs=1e-6)
    assert index.get_vector(point_id("zzz")) is None
    with pytest.raises(DimensionMismatch, match="QDRANT_COLLECTION"):
        index.upsert(point_id("c"), _unit(1, 0, 0, 0), {"image_id": "c"})
    index.ping()
    index.close()


def test_qdrant_local_mode_is_one_process_at_a_time(tmp_path):
    first = QdrantIndex("images", path=tmp_path / "q")
    first.upsert(point_id("a"), _unit(1, 0), {"image_id": "a"})
    second = QdrantIndex("images", path=tmp_path / "q")
    second.ping()  # readiness does not take the lock from the process that holds it
    with pytest.raises(IndexUnavailable, match="QDRANT_URL"):
        second.count()
    first.close()
    assert second.count() == 1
    second.close()


def test_service_embeds_ready_images_and_finds_each_by_itself(tiny, tmp_path, database_url):
    engine = make_engine(database_url)
    uow = uow_factory(engine)
    store = LocalObjectStore(tmp_path / "objects")
    media = MediaService(uow, store, PillowImageProcessor())
    index = QdrantIndex("images", path=tmp_path / "q")
    service = EmbeddingService(uow, store, _embedder(tiny, max_batch_size=4), index)
    ids = []
    for seed in range(5):
        image = media.register_image(make_image(1200, 900, seed=seed), "image/jpeg", owner="ann")
        media.process_image(image.id)
        ids.append(image.id)
    bad = media.register_image(b"not an image", "image/jpeg")
    with pytest.raises(PermanentError):
        media.process_image(bad.id)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(service.embed_image, ids))
    service.embed_image(ids[0])  # again: still one point per image
    with pytest.raises(NotEmbeddable):
        service.embed_image(bad.id)
    assert index.count() == 5
    for image_id in ids:
        hits = service.search_similar(image_id, limit=3)
        assert hits[0].image_id == image_id and hits[0].score == pytest.approx(1.0, abs=1e-4)
        with uow() as u:
            largest = max(u.images.get(image_id).thumbnails, key=lambda t: t.size)
            assert u.images.get(image_id).status is ImageStatus.READY
        assert service.search_image(store.get(largest.key), limit=1)[0].image_id == image_id
    hits = service.search_text("a red bicycle", limit=10)
    assert sorted(h.image_id for h in hits) == sorted(ids)
    assert hits[0].payload["owner"] == "ann" and hits[0].payload["model"] == "tiny"
    index.close()
    engine.dispose()


def test_ready_ids_filtered_in_sql(database_url):
    from datetime import timedelta

    from domain.models import Image, utcnow

    engine = make_engine(database_url)
    uow = uow_factory(engine)
    owner = f"o{point_id(database_url)[:8]}"  # the PostgreSQL database is shared by the session
    t0 = utcnow()
    made = []
    for n, status in enumerate([ImageStatus.READY, ImageStatus.READY, ImageStatus.FAILED, ImageStatus.READY]):
        image = Image(id=point_id(f"{owner}{n}"), original_key=f"originals/{n}", owner=owner, status=status,
                      created_at=t0 + timedelta(minutes=n), updated_at=t0)
        with uow() as u:
            u.images.add(image)
            u.commit()
        made.append(image.id)
    with uow() as u:
        assert u.images.list_ids(ImageStatus.READY, owner=owner) == [made[0], made[1], made[3]]
        assert u.images.list_ids(ImageStatus.READY, owner=owner, created_from=t0 + timedelta(minutes=1),
                                 created_to=t0 + timedelta(minutes=3)) == [made[1]]
        assert u.images.list_ids(ImageStatus.READY, 1, owner=owner) == [made[0]]
    engine.dispose()


def test_local_readiness_needs_a_usable_directory(tmp_path):
    QdrantIndex("images", path=tmp_path / "not" / "yet" / "there").ping()  # created on first use
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(IndexUnavailable, match="not a writable directory"):
        QdrantIndex("images", path=blocker / "qdrant").ping()
