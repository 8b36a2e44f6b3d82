"""Object-store adapters: MinIO SDK against moto's S3 server, and the local directory."""

import urllib.request

import pytest

from adapters.objectstore.local import LocalObjectStore
from domain.errors import InvalidKey, NotFound


@pytest.fixture(params=["minio", "local"])
def store(request, tmp_path):
    if request.param == "minio":
        return request.getfixturevalue("minio_store")
    return LocalObjectStore(tmp_path / "objects")


def test_put_get_size_exists_delete(store):
    store.put("thumbnails/a/128.webp", b"abc", "image/webp")
    assert store.get("thumbnails/a/128.webp") == b"abc"
    assert store.size("thumbnails/a/128.webp") == 3
    assert store.exists("thumbnails/a/128.webp")
    store.put("thumbnails/a/128.webp", b"abcd")  # overwrite is idempotent-friendly
    assert store.get("thumbnails/a/128.webp") == b"abcd"
    store.delete("thumbnails/a/128.webp")
    assert not store.exists("thumbnails/a/128.webp")
    store.delete("thumbnails/a/128.webp")  # deleting twice is fine


def test_missing_object_is_not_found(store):
    with pytest.raises(NotFound):
        store.get("originals/nothing")
    with pytest.raises(NotFound):
        store.size("originals/nothing")


def test_list_by_prefix(store):
    for k in ("p/1", "p/2", "q/1"):
        store.put(k, b"x")
    assert sorted(store.list("p/")) == ["p/1", "p/2"]


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", ""])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(InvalidKey):
        store.put(key, b"x")


def test_url_gives_the_bytes(store):
    store.put("originals/u1", b"hello")
    url = store.url("originals/u1", expires_seconds=60)
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"hello"


def test_local_store_stays_inside_its_root(tmp_path):
    root = tmp_path / "root"
    store = LocalObjectStore(root)
    (tmp_path / "secret").write_bytes(b"s")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(NotFound):
        store.get("link/secret")
