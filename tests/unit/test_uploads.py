"""Upload rules that need no server: keys, the compose decision, settings, CLI sizes, the
streaming reader, the collected-uploads metric, actor payload validation."""

import argparse

import pytest

from adapters.objectstore.minio import _IterReader
from bootstrap.settings import ConfigError, load_settings
from domain.errors import InvalidKey
from domain.keys import validate_key
from domain.models import Chunk
from domain.services.uploads import (
    COLLECTED_METRIC,
    COMPOSE_MIN_PART,
    can_compose,
    chunk_key,
    final_key,
    missing_indexes,
    safe_filename,
)
from entrypoints.commands.uploads import parse_size

UID = "0b5c3c1e-8f0e-4a9a-9d43-2f5a3f1f2d10"


@pytest.mark.parametrize("name,safe", [
    ("cat.jpg", "cat.jpg"), ("my cat (1).jpg", "my_cat__1_.jpg"), ("../../etc/passwd", "passwd"),
    ("C:\\Users\\ann\\x.png", "x.png"), ("..", "file"), ("", "file"), ("é.png", "_.png"),
])
def test_file_names_become_one_safe_key_segment(name, safe):
    assert safe_filename(name) == safe
    assert validate_key(final_key(UID, name)) == f"uploads/{UID}/{safe}"


def test_keys_are_deterministic():
    assert chunk_key(UID, 7) == f"upload-chunks/{UID}/000007"
    assert final_key(UID, "a.bin") == final_key(UID, "a.bin")
    with pytest.raises(InvalidKey):
        chunk_key("../x", 1)


def test_missing_indexes():
    chunks = [Chunk(UID, i, 1, chunk_key(UID, i)) for i in (0, 2, 5)]
    assert missing_indexes(6, chunks) == [1, 3, 4]
    assert missing_indexes(3, [Chunk(UID, i, 1, "k") for i in range(3)]) == []


def test_compose_needs_every_chunk_but_the_last_at_5_mib():
    m = COMPOSE_MIN_PART
    assert can_compose([m, m, 1])
    assert can_compose([1])  # one chunk: a server-side copy
    assert not can_compose([m, m - 1, m])
    assert not can_compose([])
    assert not can_compose([m] * 10_001)  # S3's part limit


def test_upload_settings_defaults_and_bad_values(monkeypatch):
    s = load_settings()
    assert (s.gc_retention_hours, s.gc_batch_size, s.upload_url_expiry_s) == (24, 100, 3600)
    for var, value in [("GC_RETENTION_HOURS", "0"), ("GC_BATCH_SIZE", "0"), ("UPLOAD_URL_EXPIRY_S", "604801")]:
        monkeypatch.setenv(var, value)
        with pytest.raises(ConfigError) as info:
            load_settings()
        assert info.value.message.startswith(f"configuration error: {var}:")
        monkeypatch.delenv(var)


def test_cli_sizes():
    assert parse_size("5M") == 5 * 1024 * 1024
    assert parse_size("64k") == 65536
    assert parse_size("1MiB") == 1024 * 1024
    assert parse_size("100") == 100
    for bad in ("0", "-1", "5X", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


def test_iter_reader_gives_exact_reads_and_counts():
    reader = _IterReader(iter([b"abc", b"", b"defgh", b"ij"]))
    assert reader.read(4) == b"abcd"
    assert reader.read(5) == b"efghi"
    assert reader.read(5) == b"j"
    assert reader.read(5) == b""
    assert reader.total == 10


def test_collected_uploads_counter_is_exposed(monkeypatch):
    from adapters.metrics import InMemoryMetricsStore
    from bootstrap import Container

    monkeypatch.delenv("REDIS_URL", raising=False)
    container = Container(load_settings(broker_url="stub://"))
    container.__dict__["metrics_store"] = store = InMemoryMetricsStore()
    store.add([(COLLECTED_METRIC, (), 3)])
    spec = next(s for s in container.metrics if s.name == COLLECTED_METRIC)
    assert spec.kind == "counter" and spec.read() == {(): 3.0}


def test_merge_upload_refuses_a_bad_id_before_touching_anything():
    import actors
    from domain.errors import InvalidPayload

    with pytest.raises(InvalidPayload, match="upload_id must be a UUID"):
        actors.uploads.merge_upload.fn("not-a-uuid")
    with pytest.raises(InvalidPayload):
        actors.uploads.process_uploaded_image.fn({"no": "payload"})
    actors.uploads.process_uploaded_image.fn({"payload": {"image_id": None}})  # not an image: nothing
