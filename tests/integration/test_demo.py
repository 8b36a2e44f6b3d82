"""The README's first command runs the real actors on the embedded default."""

from tests import services


def test_demo_generates_and_processes_images(tmp_path):
    env = services.subprocess_env()
    result = services.run_cli(["demo", "--workdir", str(tmp_path / "demo")], env, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("status=READY") == 3, out
    assert "not-an-image.jpg" in out and out.count("status=FAILED") == 1
    assert "reason: not an image" in out
    thumbs = list((tmp_path / "demo" / "objects" / "thumbnails").rglob("*.webp"))
    assert len(thumbs) == 9


def test_demo_on_a_folder(tmp_path):
    from entrypoints.samples import make_image

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(make_image(300, 200, fmt="PNG"))
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    result = services.run_cli(["demo", str(folder), "--workdir", str(tmp_path / "demo")],
                              services.subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "a.png" in result.stdout and "status=READY" in result.stdout
    assert "notes.txt" not in result.stdout
