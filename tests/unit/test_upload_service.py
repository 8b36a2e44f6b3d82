"""UploadService with in-memory fakes: the decisions, the status machine, events, GC batches."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from adapters.metrics import InMemoryMetricsStore
from domain.errors import PermanentError, TransientError
from domain.models import ImageStatus, UploadStatus
from domain.services.uploads import COLLECTED_METRIC, ChecksumMismatch, UploadPolicy, UploadService
from tests.unit.fakes import InMemoryUploadStore, UploadState

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.current = T0

    def now(self) -> datetime:
        return self.current


@pytest.fixture
def metrics():
    return InMemoryMetricsStore()


@pytest.fixture
def env(metrics):
    state, store, clock = UploadState(), InMemoryUploadStore(), Clock()
    # 10-byte "parts" stand for S3's 5 MiB: the rule, not the number, is under test.
    service = UploadService(state, store, UploadPolicy(compose_min_part=10, gc_batch_size=2), clock=clock,
                            metrics=metrics)
    return service, state, store, clock


def _upload(service, parts, content_type=None, sha=True):  # type: ignore[no-untyped-def]
    data = b"".join(parts)
    upload = service.create_upload("f.bin", len(parts), content_type,
                                   expected_sha256=hashlib.sha256(data).hexdigest() if sha else None)
    for i, part in enumerate(parts):
        service.upload_chunk(upload.id, i, part)
    return upload.id, data


def test_big_parts_are_composed_small_ones_streamed(env):
    service, state, store, _ = env
    composed_id, data = _upload(service, [b"a" * 10, b"b" * 10, b"c"])
    streamed_id, _ = _upload(service, [b"a" * 10, b"b" * 9, b"c"])
    service.merge_upload(composed_id)
    service.merge_upload(streamed_id)
    assert [k for k, _ in store.composed] == [f"uploads/{composed_id}/f.bin"]
    assert store.streamed == [f"uploads/{streamed_id}/f.bin"]
    assert store.get(f"uploads/{composed_id}/f.bin") == data
    assert not [k for k in store.objects if k.startswith("upload-chunks/")]
    assert [e.payload["merge"] for e in state.events if e.type == "upload.completed"] == ["compose", "stream"]


def test_completed_commits_status_event_and_image_together(env):
    service, state, store, _ = env
    upload_id, _ = _upload(service, [b"x" * 10, b"y"], content_type="image/jpeg")
    upload = service.merge_upload(upload_id)
    assert upload.status is UploadStatus.COMPLETED and upload.completed_at == T0
    image = state.images[upload.image_id]
    assert image.status is ImageStatus.PENDING and image.original_key == upload.final_key
    assert [e.type for e in state.events] == ["image.uploaded", "upload.completed"]
    assert state.events[1].payload["image_id"] == image.id
    service.merge_upload(upload_id)
    assert len(state.events) == 2  # a redelivery records nothing


def test_missing_chunks_name_the_indexes_and_change_nothing(env):
    service, state, _, _ = env
    upload = service.create_upload("f.bin", 4)
    service.upload_chunk(upload.id, 1, b"x")
    commits = state.commits
    with pytest.raises(PermanentError, match="indexes 0, 2, 3"):
        service.merge_upload(upload.id)
    assert state.commits == commits and service.get_upload(upload.id).status is UploadStatus.UPLOADING


def test_a_mismatch_fails_the_upload_once_and_removes_everything(env):
    service, state, store, _ = env
    upload = service.create_upload("f.bin", 2, expected_sha256="0" * 64)
    service.upload_chunk(upload.id, 0, b"a" * 10)
    service.upload_chunk(upload.id, 1, b"b")
    with pytest.raises(ChecksumMismatch):
        service.merge_upload(upload.id)
    assert service.get_upload(upload.id).status is UploadStatus.FAILED
    assert store.objects == {}
    assert [e.type for e in state.events] == ["upload.failed"]


def test_a_store_outage_mid_merge_is_transient_and_the_retry_completes(env):
    service, _, store, _ = env
    upload_id, data = _upload(service, [b"a" * 10, b"b"])
    real = store.compose

    def down(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise TransientError("connection refused")

    store.compose = down  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        service.merge_upload(upload_id)
    assert service.get_upload(upload_id).status is UploadStatus.MERGING
    store.compose = real  # type: ignore[method-assign]
    assert service.merge_upload(upload_id).status is UploadStatus.COMPLETED


def test_gc_collects_idle_uploads_in_batches_and_counts_them(env, metrics):
    service, state, store, clock = env
    ids = []
    for _ in range(5):
        upload = service.create_upload("g.bin", 2)
        service.upload_chunk(upload.id, 0, b"a")
        ids.append(upload.id)
    clock.current = T0 + timedelta(hours=20)
    service.upload_chunk(ids[4], 1, b"b")  # activity: the last one is not idle
    clock.current = T0 + timedelta(hours=24, seconds=1)
    commits = state.commits
    assert service.collect_abandoned() == 4
    assert state.commits - commits == 2  # batches of 2
    assert [service.get_upload(i).failure_reason for i in ids] == ["abandoned"] * 4 + [None]
    assert sorted(k.split("/")[1] for k in store.objects) == [ids[4], ids[4]]
    assert metrics.read(COLLECTED_METRIC) == {(): 4.0}
