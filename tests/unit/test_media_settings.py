"""Embedding and search settings: defaults, and bad values that stop start-up naming the variable."""

import pytest

from bootstrap import Container
from bootstrap.settings import ConfigError, load_settings

MEDIA_VARS = ("CLIP_MODEL", "CLIP_PRETRAINED", "CLIP_PRETRAINED_TAG", "CLIP_DEVICE", "CLIP_MODEL_CONFIG",
              "CLIP_TORCH_THREADS", "EMBED_BATCH_MAX_SIZE", "EMBED_BATCH_MAX_WAIT_MS", "QDRANT_URL", "QDRANT_PATH",
              "QDRANT_COLLECTION", "METADATA_INCLUDE_GPS")


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for var in MEDIA_VARS:
        monkeypatch.delenv(var, raising=False)


def test_defaults():
    s = load_settings()
    assert (s.clip_model, s.clip_pretrained, s.clip_device) == ("ViT-B-32", "laion2b_s34b_b79k", "cpu")
    assert s.qdrant_url is None and str(s.qdrant_path) == "var/qdrant"
    assert (s.embed_batch_max_size, s.embed_batch_max_wait_ms) == (16, 50.0)
    assert s.metadata_include_gps is False


@pytest.mark.parametrize(("var", "value", "message"), [
    ("QDRANT_URL", "qdrant:6333", "QDRANT_URL: must start with http:// or https://"),
    ("CLIP_DEVICE", "tpu", "CLIP_DEVICE"),
    ("EMBED_BATCH_MAX_SIZE", "0", "EMBED_BATCH_MAX_SIZE"),
    ("EMBED_BATCH_MAX_WAIT_MS", "-1", "EMBED_BATCH_MAX_WAIT_MS"),
    ("QDRANT_COLLECTION", "a/b", "QDRANT_COLLECTION"),
    ("METADATA_INCLUDE_GPS", "perhaps", "METADATA_INCLUDE_GPS"),
])
def test_bad_values_name_the_variable(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith(f"configuration error: {message}")


def test_container_builds_without_loading_anything(monkeypatch, tmp_path):
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "q"))
    monkeypatch.setenv("QDRANT_COLLECTION", "mine")
    container = Container(load_settings())
    embedder = container.embedder
    assert embedder.model_id == "ViT-B-32/laion2b_s34b_b79k"
    assert embedder._clip is None  # lazily: nothing loaded until the first embedding
    index = container.vector_index
    assert index.collection == "mine" and index.url is None and index._client is None
    checks = {c.name: c for c in container.readiness_checks}
    checks["vector_index"].run()  # local mode: the directory is usable, its lock is not taken
    assert index._client is None


def test_qdrant_url_selects_the_server(monkeypatch):
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    index = Container(load_settings()).vector_index
    assert index.url == "http://qdrant:6333" and index.path is None
