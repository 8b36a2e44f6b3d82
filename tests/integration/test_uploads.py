"""UploadService on real stores (moto's S3 server through the MinIO adapter, the local directory)
and real databases (SQLite, PostgreSQL): merges, verification, crash points, concurrency, GC."""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from adapters.metrics import InMemoryMetricsStore
from adapters.objectstore.local import LocalObjectStore
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.errors import NotFound, PermanentError
from domain.models import ImageStatus, UploadStatus
from domain.services.uploads import (
    COLLECTED_METRIC,
    ChecksumMismatch,
    UploadPolicy,
    UploadService,
    chunk_key,
)

MiB = 1024 * 1024


class Crash(BaseException):
    """Stands for the worker being killed: no `except Exception` sees it, nothing after it runs."""


class ControlledClock:
    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current


class CrashingStore:
    """The real store, except that the n-th call of one method crashes (after doing its work if
    ``after`` is true, as a kill right after a call returned)."""

    def __init__(self, store, method: str, *, call: int = 1, after: bool = False) -> None:  # type: ignore[no-untyped-def]
        self._store, self._method, self._call, self._after = store, method, call, after
        self.calls = 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        real = getattr(self._store, name)
        if name != self._method:
            return real

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls != self._call:
                return real(*args, **kwargs)
            if not self._after:
                raise Crash(name)
            real(*args, **kwargs)
            raise Crash(name)

        return wrapper


@pytest.fixture(params=["minio", "local"])
def store(request, tmp_path):
    if request.param == "minio":
        return request.getfixturevalue("minio_store")
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture
def uow(database_url):
    engine = make_engine(database_url)
    yield uow_factory(engine)
    engine.dispose()


def _events(uow, aggregate_id: str) -> list:
    with uow() as u:
        return [e for e in u.outbox.list(limit=100_000) if e.aggregate_id == aggregate_id]


def _upload_file(service: UploadService, data: bytes, chunk_size: int, *, filename: str = "big.bin",
                 content_type: str | None = "application/octet-stream", verify: bool = True) -> str:
    parts = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    upload = service.create_upload(filename, len(parts), content_type, expected_size=len(data),
                                   expected_sha256=hashlib.sha256(data).hexdigest() if verify else None)
    for index, part in enumerate(parts):
        service.upload_chunk(upload.id, index, part)
    return upload.id


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def _assert_completed(service: UploadService, uow, store, upload_id: str, data: bytes, strategy: str) -> None:
    upload = service.get_upload(upload_id)
    assert upload.status is UploadStatus.COMPLETED, upload.failure_reason
    assert upload.size == len(data)
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get(upload.final_key) == data
    assert hashlib.sha256(_fetch(service.download_url(upload_id))).hexdigest() == upload.sha256
    # Chunks are gone, objects and rows.
    assert service.list_chunks(upload_id) == []
    assert list(store.list(f"upload-chunks/{upload_id}/")) == []
    completed = [e for e in _events(uow, upload_id) if e.type == "upload.completed"]
    assert len(completed) == 1
    payload = completed[0].payload
    assert payload["merge"] == strategy and payload["size"] == len(data) and payload["key"] == upload.final_key
    assert _fetch(payload["download_url"]) == data


def test_server_side_merge_with_5_mib_parts(uow, store):
    service = UploadService(uow, store)
    data = os.urandom(3 * 5 * MiB + 12345)
    upload_id = _upload_file(service, data, 5 * MiB)
    assert service.merge_upload(upload_id).status is UploadStatus.COMPLETED
    _assert_completed(service, uow, store, upload_id, data, "compose")


def test_streaming_merge_of_small_chunks(uow, store):
    service = UploadService(uow, store)
    data = os.urandom(300_000)
    upload_id = _upload_file(service, data, 64 * 1024, verify=False)  # 5 chunks, the last short
    service.merge_upload(upload_id)
    # The sha256 is computed while streaming even when none was expected.
    _assert_completed(service, uow, store, upload_id, data, "stream")


def test_streaming_merge_crosses_the_multipart_threshold(uow, minio_store):
    # Chunks under 5 MiB adding up to more than one streamed part (8 MiB): a real multipart upload.
    service = UploadService(uow, minio_store)
    data = os.urandom(9 * MiB + 7)
    upload_id = _upload_file(service, data, 3 * MiB)
    service.merge_upload(upload_id)
    _assert_completed(service, uow, minio_store, upload_id, data, "stream")


@pytest.mark.parametrize("chunk_size", [5 * MiB, 100_000], ids=["compose", "stream"])
def test_checksum_mismatch_fails_the_upload_and_removes_its_objects(uow, store, chunk_size):
    service = UploadService(uow, store)
    data = os.urandom(2 * chunk_size + 10)
    parts = [data[:chunk_size], data[chunk_size:2 * chunk_size], data[2 * chunk_size:]]
    upload = service.create_upload("x.bin", 3, expected_sha256=hashlib.sha256(b"other").hexdigest())
    for i, part in enumerate(parts):
        service.upload_chunk(upload.id, i, part)
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
        service.merge_upload(upload.id)
    failed = service.get_upload(upload.id)
    assert failed.status is UploadStatus.FAILED and "sha256 mismatch" in failed.failure_reason
    assert list(store.list(f"uploads/{upload.id}/")) == []  # bad bytes are not downloadable
    assert list(store.list(f"upload-chunks/{upload.id}/")) == [] and service.list_chunks(upload.id) == []
    assert [e.type for e in _events(uow, upload.id)] == ["upload.failed"]
    assert service.merge_upload(upload.id).status is UploadStatus.FAILED  # a redelivery changes nothing


def test_size_mismatch_is_refused(uow, store):
    service = UploadService(uow, store)
    upload = service.create_upload("x.bin", 2, expected_size=999)
    service.upload_chunk(upload.id, 0, b"a" * 10)
    service.upload_chunk(upload.id, 1, b"b" * 10)
    with pytest.raises(ChecksumMismatch, match="expected 999 bytes, merged 20"):
        service.merge_upload(upload.id)


def test_missing_chunks_are_named_and_the_upload_keeps_uploading(uow, store):
    service = UploadService(uow, store)
    upload = service.create_upload("x.bin", 5)
    service.upload_chunk(upload.id, 0, b"a")
    service.upload_chunk(upload.id, 3, b"d")
    with pytest.raises(PermanentError, match=r"missing 3 of 5 chunks: indexes 1, 2, 4"):
        service.merge_upload(upload.id)
    assert service.get_upload(upload.id).status is UploadStatus.UPLOADING
    for i in (1, 2, 4):
        service.upload_chunk(upload.id, i, bytes([97 + i]))
    service.merge_upload(upload.id)
    assert store.get(service.get_upload(upload.id).final_key) == b"abcde"


def test_bad_input_is_refused(uow, store):
    service = UploadService(uow, store)
    with pytest.raises(PermanentError):
        service.create_upload("", 1)
    with pytest.raises(PermanentError):
        service.create_upload("a", 0)
    with pytest.raises(PermanentError):
        service.create_upload("a", 1, expected_sha256="nothex")
    upload = service.create_upload("a", 2)
    with pytest.raises(PermanentError, match="from 0 to 1"):
        service.upload_chunk(upload.id, 2, b"x")
    with pytest.raises(NotFound):
        service.merge_upload("00000000-0000-0000-0000-000000000000")
    service.upload_chunk(upload.id, 0, b"x")
    service.upload_chunk(upload.id, 1, b"y")
    service.merge_upload(upload.id)
    with pytest.raises(PermanentError, match="COMPLETED"):
        service.upload_chunk(upload.id, 0, b"x")


def test_merging_twice_gives_one_status_change_and_one_event(uow, store):
    service = UploadService(uow, store)
    data = os.urandom(50_000)
    upload_id = _upload_file(service, data, 20_000)
    first = service.merge_upload(upload_id)
    second = service.merge_upload(upload_id)
    assert first.completed_at == second.completed_at
    assert [e.type for e in _events(uow, upload_id)] == ["upload.completed"]


@pytest.mark.parametrize("chunk_size", [5 * MiB, 100_000], ids=["compose", "stream"])
def test_concurrent_merges_give_one_object_and_one_status_change(uow, store, chunk_size):
    service = UploadService(uow, store)
    data = os.urandom(2 * chunk_size + 1000)
    upload_id = _upload_file(service, data, chunk_size, filename="cat.png", content_type="image/png")
    barrier = threading.Barrier(3)
    results, errors = [], []

    def merge() -> None:
        barrier.wait()
        try:
            results.append(service.merge_upload(upload_id))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=merge) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert {r.status for r in results} == {UploadStatus.COMPLETED}
    _assert_completed(service, uow, store, upload_id, data, "compose" if chunk_size >= 5 * MiB else "stream")
    # One image registered, one image.uploaded event.
    upload = service.get_upload(upload_id)
    image_events = [e for e in _events(uow, upload.image_id) if e.type == "image.uploaded"]
    assert len(image_events) == 1 and image_events[0].payload["upload_id"] == upload_id
    assert list(store.list(f"uploads/{upload_id}/")) == [upload.final_key]


def test_an_image_upload_registers_the_image_in_the_same_transaction(uow, store):
    service = UploadService(uow, store)
    upload_id = _upload_file(service, b"\x89PNG not really", 4, filename="my cat.png", content_type="image/png")
    upload = service.merge_upload(upload_id)
    assert upload.final_key == f"uploads/{upload_id}/my_cat.png"
    with uow() as u:
        image = u.images.get(upload.image_id)
    assert image.status is ImageStatus.PENDING and image.original_key == upload.final_key
    completed = [e for e in _events(uow, upload_id) if e.type == "upload.completed"][0]
    assert completed.payload["image_id"] == image.id
    # A file that is not an image registers nothing.
    other = service.merge_upload(_upload_file(service, b"text", 2, content_type="text/plain"))
    assert other.image_id is None


# -- crash points: a worker killed at each step leaves a state the retry completes ----------------

@pytest.mark.parametrize("method,after", [
    ("compose", False),   # killed before the server-side copy started
    ("compose", True),    # the merged object exists, COMPLETED not yet recorded
    ("read_stream", False),  # killed while verifying the sha256
])
def test_a_merge_killed_mid_compose_is_completed_by_the_retry(uow, store, method, after):
    data = os.urandom(5 * MiB + 100)
    upload_id = _upload_file(UploadService(uow, store), data, 5 * MiB)
    with pytest.raises(Crash):
        UploadService(uow, CrashingStore(store, method, after=after)).merge_upload(upload_id)
    service = UploadService(uow, store)
    assert service.get_upload(upload_id).status is UploadStatus.MERGING
    service.merge_upload(upload_id)
    _assert_completed(service, uow, store, upload_id, data, "compose")


def test_a_streaming_merge_killed_midway_leaves_no_partial_object(uow, store):
    data = os.urandom(9 * MiB)
    upload_id = _upload_file(UploadService(uow, store), data, 1 * MiB)
    # The 6th chunk read crashes: about 5 MiB have gone into the multipart upload / temp file.
    crashing = CrashingStore(store, "read_stream", call=6)
    with pytest.raises(Crash):
        UploadService(uow, crashing).merge_upload(upload_id)
    service = UploadService(uow, store)
    upload = service.get_upload(upload_id)
    assert upload.status is UploadStatus.MERGING
    assert list(store.list(f"uploads/{upload_id}/")) == []
    service.merge_upload(upload_id)
    _assert_completed(service, uow, store, upload_id, data, "stream")


def test_a_crash_after_completed_before_chunk_cleanup_is_finished_by_the_retry(uow, store):
    data = os.urandom(40_000)
    upload_id = _upload_file(UploadService(uow, store), data, 10_000)
    with pytest.raises(Crash):
        UploadService(uow, CrashingStore(store, "delete", call=2)).merge_upload(upload_id)
    service = UploadService(uow, store)
    assert service.get_upload(upload_id).status is UploadStatus.COMPLETED
    assert len(service.list_chunks(upload_id)) == 4  # rows still there, one object already gone
    service.merge_upload(upload_id)
    _assert_completed(service, uow, store, upload_id, data, "stream")


# -- garbage collection -------------------------------------------------------------------------

T0 = datetime(2001, 1, 1, tzinfo=UTC)  # far in the past: other tests' uploads are never old enough


def test_collects_abandoned_uploads_in_batches_with_a_controlled_clock(uow, store):
    clock = ControlledClock(T0)
    metrics = InMemoryMetricsStore()
    service = UploadService(uow, store, UploadPolicy(gc_batch_size=2), clock=clock, metrics=metrics)
    abandoned = []
    for n in range(5):
        upload = service.create_upload(f"a{n}.bin", 3)
        service.upload_chunk(upload.id, 0, b"x" * 10)
        abandoned.append(upload.id)
    store.put(chunk_key(abandoned[0], 2), b"put, never registered")
    done = service.create_upload("done.bin", 1)
    service.upload_chunk(done.id, 0, b"d")
    service.merge_upload(done.id)
    clock.current = T0 + timedelta(hours=23)
    recent = service.create_upload("recent.bin", 2)
    service.upload_chunk(recent.id, 0, b"r")

    clock.current = T0 + timedelta(hours=24, minutes=1)
    assert service.collect_abandoned() == 5
    for upload_id in abandoned:
        upload = service.get_upload(upload_id)
        assert (upload.status, upload.failure_reason) == (UploadStatus.FAILED, "abandoned")
        assert service.list_chunks(upload_id) == []
        assert list(store.list(f"upload-chunks/{upload_id}/")) == []
        assert [e.payload["reason"] for e in _events(uow, upload_id) if e.type == "upload.failed"] == ["abandoned"]
    assert service.get_upload(recent.id).status is UploadStatus.UPLOADING
    assert store.exists(chunk_key(recent.id, 0))
    assert service.get_upload(done.id).status is UploadStatus.COMPLETED
    assert metrics.read(COLLECTED_METRIC) == {(): 5.0}
    assert service.collect_abandoned() == 0

    clock.current = T0 + timedelta(hours=48)
    assert service.collect_abandoned() == 1
    assert service.get_upload(recent.id).failure_reason == "abandoned"
    assert metrics.read(COLLECTED_METRIC) == {(): 6.0}


def test_two_collectors_at_once_collect_each_upload_once(uow, store):
    clock = ControlledClock(T0 + timedelta(days=10))  # a slot of time of its own
    service = UploadService(uow, store, UploadPolicy(gc_batch_size=3), clock=clock)
    ids = []
    for n in range(12):
        upload = service.create_upload(f"g{n}.bin", 2)
        service.upload_chunk(upload.id, 0, b"x")
        ids.append(upload.id)
    clock.current += timedelta(hours=25)
    barrier = threading.Barrier(2)
    counts, errors = [], []

    def collect() -> None:
        barrier.wait()
        try:
            counts.append(service.collect_abandoned())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=collect) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sum(counts) == 12
    for upload_id in ids:
        assert service.get_upload(upload_id).status is UploadStatus.FAILED
        assert len([e for e in _events(uow, upload_id) if e.type == "upload.failed"]) == 1


def test_a_chunk_arriving_after_the_collector_is_refused_and_removed(uow, store):
    clock = ControlledClock(T0 + timedelta(days=20))
    service = UploadService(uow, store, clock=clock)
    upload = service.create_upload("late.bin", 2)
    service.upload_chunk(upload.id, 0, b"x")
    clock.current += timedelta(hours=25)
    assert service.collect_abandoned() >= 1
    # The producer comes back: its chunk is refused and not left behind in the store.
    real_get = service.get_upload
    calls = iter([UploadStatus.UPLOADING])

    def stale_get(upload_id):  # the status check before the put still saw UPLOADING
        current = real_get(upload_id)
        status = next(calls, None)
        if status is not None:
            current.status = status
        return current

    service.get_upload = stale_get  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match="FAILED"):
        service.upload_chunk(upload.id, 1, b"late")
    assert not store.exists(chunk_key(upload.id, 1))
