"""`atelier uploads ...` and `atelier gc` as subprocesses, on SQLite and the local store."""

import hashlib
import json
import os
import urllib.request

from adapters.objectstore.local import LocalObjectStore
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.services.uploads import UploadService
from tests import services


def test_create_show_merge_and_gc_from_the_shell(base_env, tmp_path):
    env = dict(base_env, BROKER_URL="stub://")
    assert services.run_cli(["migrate"], env).returncode == 0
    data = os.urandom(5000)
    (tmp_path / "notes.bin").write_bytes(data)

    created = services.run_cli(["uploads", "create", str(tmp_path / "notes.bin"), "--chunk-size", "2k",
                                "--no-merge"], env)
    assert created.returncode == 0, created.stderr
    kept = created.stdout.strip()
    shown = json.loads(services.run_cli(["uploads", "show", kept, "--json"], env).stdout)
    assert (shown["status"], shown["total_chunks"], shown["chunks_registered"]) == ("UPLOADING", 3, 3)
    assert shown["expected_sha256"] == hashlib.sha256(data).hexdigest() and shown["download_url"] is None

    # Merged by a service on the same database and store (the stub broker has no worker here).
    engine = make_engine(env["DATABASE_URL"])
    UploadService(uow_factory(engine), LocalObjectStore(env["LOCAL_STORE_DIR"])).merge_upload(kept)
    engine.dispose()
    shown = services.run_cli(["uploads", "show", kept], env)
    assert shown.returncode == 0 and f"{kept}  COMPLETED  notes.bin  0/3 chunks" in shown.stdout
    url = next(line.split(": ", 1)[1] for line in shown.stdout.splitlines() if "download_url" in line)
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == data

    abandoned = services.run_cli(["uploads", "create", str(tmp_path / "notes.bin"), "--no-merge"], env).stdout.strip()
    gc = services.run_cli(["gc"], {**env, "GC_RETENTION_HOURS": "0.0000001"})
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout.strip() == "collected 1 abandoned uploads"
    shown = json.loads(services.run_cli(["uploads", "show", abandoned, "--json"], env).stdout)
    assert (shown["status"], shown["failure_reason"], shown["chunks_registered"]) == ("FAILED", "abandoned", 0)
    assert not list(LocalObjectStore(env["LOCAL_STORE_DIR"]).list(f"upload-chunks/{abandoned}/"))


def test_bad_arguments_are_refused_with_a_message(base_env, tmp_path):
    env = dict(base_env, BROKER_URL="stub://")
    bad_size = services.run_cli(["uploads", "create", "x", "--chunk-size", "0"], env)
    assert bad_size.returncode == 2 and "not a positive size" in bad_size.stderr
    assert services.run_cli(["migrate"], env).returncode == 0
    missing = services.run_cli(["uploads", "show", "0b5c3c1e-8f0e-4a9a-9d43-2f5a3f1f2d10"], env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    bad_id = services.run_cli(["uploads", "show", "nope"], env)
    assert bad_id.returncode == 1 and "must be a UUID" in bad_id.stderr
