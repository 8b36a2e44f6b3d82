"""`atelier search`, `atelier reindex` and the demo's embedding step, as subprocesses on the
embedded default (stub broker, SQLite, local store, Qdrant local mode) with the tiny model."""

from __future__ import annotations

import json

import pytest

from tests import services
from tests.clip_support import tiny_env


@pytest.fixture(scope="module")
def clip_env(tmp_path_factory):
    return tiny_env(tmp_path_factory.mktemp("clip"))


def test_demo_embeds_and_searches_with_weights_at_hand(tmp_path, clip_env):
    env = services.subprocess_env(**{k: v for k, v in clip_env.items() if k != "QDRANT_PATH"})
    result = services.run_cli(["demo", "--workdir", str(tmp_path / "demo")], env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "embeddings: 3 images in Qdrant" in result.stdout, result.stdout
    line = [x for x in result.stdout.splitlines() if "search --like" in x][0]
    first = line.split("search --like ")[1].split(":")[0]
    assert line.split(": ", 1)[1].startswith(f"{first} 1.000"), line  # an image finds itself first


def test_demo_without_weights_says_so(tmp_path, clip_env):
    env = services.subprocess_env(CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED=str(tmp_path / "nowhere.pt"))
    result = services.run_cli(["demo", "--workdir", str(tmp_path / "demo")], env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "embeddings: skipped, CLIP_PRETRAINED file" in result.stdout and "does not exist" in result.stdout
    assert result.stdout.count("status=READY") == 3


def test_images_add_reindex_and_search(tmp_path, clip_env):
    from entrypoints.samples import make_image

    env = services.subprocess_env(**{**clip_env, "QDRANT_PATH": str(tmp_path / "qdrant")},
                                  DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}",
                                  LOCAL_STORE_DIR=str(tmp_path / "objects"))
    assert services.run_cli(["migrate"], env).returncode == 0
    # Register and process through the service in one process (the stub broker has no worker).
    script = (
        "import sys, actors\n"
        "from bootstrap import get_container\n"
        "m = get_container().media\n"
        "for p in sys.argv[1:]:\n"
        "    i = m.register_image(open(p, 'rb').read(), 'image/jpeg', owner='ann' if '/a' in p else 'bob')\n"
        "    m.process_image(i.id); print(i.id)\n"
    )
    files = []
    for n, name in enumerate(["a1.jpg", "a2.jpg", "b3.jpg"]):
        (tmp_path / name).write_bytes(make_image(900, 700, seed=n))
        files.append(str(tmp_path / name))
    import subprocess
    import sys

    made = subprocess.run([sys.executable, "-c", script, *files], env=env, cwd=services.ROOT, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    ids = made.stdout.split()

    dry = services.run_cli(["reindex", "--dry-run", "--owner", "ann"], env)
    assert dry.stdout.strip() == "2 READY images would be embedded", dry.stdout + dry.stderr
    done = services.run_cli(["reindex", "--quiet"], env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3 images embedded"

    like = services.run_cli(["search", "--like", ids[2], "--limit", "3", "--json"], env, timeout=300)
    assert like.returncode == 0, like.stderr
    rows = [json.loads(line) for line in like.stdout.splitlines()]
    assert rows[0]["image_id"] == ids[2] and rows[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["owner"] == "bob" and len(rows) == 3

    text = services.run_cli(["search", "a red bicycle", "--limit", "10", "--owner", "ann"], env, timeout=300)
    assert text.returncode == 0, text.stderr
    found = [line.split()[1] for line in text.stdout.splitlines()]
    assert sorted(found) == sorted(ids[:2])

    # An example file: the 512 thumbnail of the first image finds that image first.
    thumb = tmp_path / "objects" / "thumbnails" / ids[0] / "512.webp"
    by_image = services.run_cli(["search", "--image", str(thumb), "--limit", "1"], env, timeout=300)
    assert by_image.stdout.split()[1] == ids[0], by_image.stdout + by_image.stderr

    bad = services.run_cli(["search", "--image", str(tmp_path / "a1.jpg"), "x"], env)
    assert bad.returncode == 2 and "give one of" in bad.stderr
