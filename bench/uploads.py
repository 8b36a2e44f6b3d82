"""Upload merge benchmark: server-side compose against streaming through the worker, on S3.

    python bench/uploads.py [--size-mib 256] [--chunk-mib 5]

One upload of --size-mib in --chunk-mib chunks per mode, on moto's S3 server on 127.0.0.1 (run by
this process) through the MinIO adapter, with a SQLite database. Each merge runs in a fresh
subprocess (the "worker"), which reports:
  - time of UploadService.merge_upload (status changes, merge, verification, chunk deletion);
  - peak memory: the process's peak RSS (VmHWM: unlike ru_maxrss it is not inherited from the
    forking parent), and how far it rose above the RSS just before the merge;
  - bytes through the worker: counted at the object-store port (bytes read + written).
Modes:
  - stream (baseline): chunks read and written back as one multipart upload, sha256 on the way;
  - compose: S3 server-side copy (UploadPartCopy), size checked with a HEAD, no sha256 expected;
  - compose+sha256: the same, then one streamed read of the result to verify the expected sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.objectstore.minio import MinioObjectStore, make_client  # noqa: E402
from adapters.sql.engine import make_engine  # noqa: E402
from adapters.sql.migrate import upgrade  # noqa: E402
from adapters.sql.uow import uow_factory  # noqa: E402
from domain.services.uploads import COMPOSE_MIN_PART, UploadPolicy, UploadService  # noqa: E402

MiB = 1024 * 1024
MODES = ("stream", "compose", "compose+sha256")


class CountingStore:
    """The real store, counting the bytes that pass through this process."""

    def __init__(self, store: MinioObjectStore) -> None:
        self._store = store
        self.read = 0
        self.written = 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._store, name)

    def get(self, key: str) -> bytes:
        data = self._store.get(key)
        self.read += len(data)
        return data

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.written += len(data)
        self._store.put(key, data, content_type)

    def read_stream(self, key: str, chunk_size: int = 1 << 20):  # type: ignore[no-untyped-def]
        for piece in self._store.read_stream(key, chunk_size):
            self.read += len(piece)
            yield piece

    def put_stream(self, key: str, chunks, content_type: str = "application/octet-stream") -> int:  # type: ignore[no-untyped-def]
        size = self._store.put_stream(key, chunks, content_type)
        self.written += size
        return size


def _store(endpoint: str, bucket: str) -> MinioObjectStore:
    return MinioObjectStore(make_client(endpoint, "bench", "bench", secure=False, region="us-east-1"), bucket)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(mode: str, upload_id: str, endpoint: str, bucket: str, database_url: str) -> None:
    store = CountingStore(_store(endpoint, bucket))
    min_part = 1 << 62 if mode == "stream" else COMPOSE_MIN_PART
    service = UploadService(uow_factory(make_engine(database_url)), store, UploadPolicy(compose_min_part=min_part))
    service.get_upload(upload_id)  # connections and imports warm, before measuring
    rss_before = _status_kib("VmRSS")
    started = time.perf_counter()
    upload = service.merge_upload(upload_id)
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "mode": mode, "status": upload.status.value, "seconds": elapsed,
        "peak_rss_mib": _status_kib("VmHWM") / 1024,
        "rss_growth_mib": (_status_kib("VmHWM") - rss_before) / 1024,
        "port_bytes": store.read + store.written,
        "sha256": upload.sha256,
    }))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--chunk-mib", type=int, default=5)
    parser.add_argument("--child", nargs=5, metavar=("MODE", "UPLOAD", "ENDPOINT", "BUCKET", "DB"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"127.0.0.1:{server._server.server_port}"
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    database_url = f"sqlite:///{workdir / 'bench.db'}"
    upgrade(database_url)
    store = _store(endpoint, bucket)
    service = UploadService(uow_factory(make_engine(database_url)), store)
    size, chunk = args.size_mib * MiB, args.chunk_mib * MiB
    total = -(-size // chunk)
    piece = os.urandom(chunk)  # the same random chunk each time: the content does not matter to S3
    digest = hashlib.sha256()
    for index in range(total):
        digest.update(piece[: min(chunk, size - index * chunk)])
    expected = digest.hexdigest()

    print(f"merging {args.size_mib} MiB in {total} chunks of {args.chunk_mib} MiB on moto S3 ({endpoint}); "
          f"each merge in a fresh worker process", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    results = {}
    for mode in MODES:
        upload = service.create_upload(f"{mode}.bin", total, expected_size=size,
                                       expected_sha256=None if mode == "compose" else expected)
        for index in range(total):
            service.upload_chunk(upload.id, index, piece[: min(chunk, size - index * chunk)])
        out = subprocess.run([sys.executable, __file__, "--child", mode, upload.id, endpoint, bucket, database_url],
                             env=env, capture_output=True, text=True, check=True)
        results[mode] = result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["status"] == "COMPLETED", result
        assert result["sha256"] in (None, expected), result
        store.delete(service.get_upload(upload.id).final_key)  # keep moto's memory in check
        print(f"  {mode:<15} {result['seconds']:7.2f} s   peak RSS {result['peak_rss_mib']:6.1f} MiB "
              f"(+{result['rss_growth_mib']:5.1f} during the merge)   through the worker: "
              f"{result['port_bytes'] / MiB:6.1f} MiB", flush=True)

    base = results["stream"]
    for mode in ("compose", "compose+sha256"):
        r = results[mode]
        print(f"{mode} against stream: {base['seconds'] / r['seconds']:.1f}x faster, "
              f"peak RSS {r['peak_rss_mib']:.0f} vs {base['peak_rss_mib']:.0f} MiB, "
              f"bytes through the worker {r['port_bytes'] / MiB:.0f} vs {base['port_bytes'] / MiB:.0f} MiB")
    server.stop()


if __name__ == "__main__":
    main()
