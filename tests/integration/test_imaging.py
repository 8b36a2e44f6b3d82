"""The Pillow adapter on generated images."""

import io

import pytest
from PIL import Image

from adapters.imaging import PillowImageProcessor
from domain.errors import InvalidImage
from entrypoints.samples import make_image


@pytest.fixture
def proc():
    return PillowImageProcessor(max_pixels=20_000_000)


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_sizes_and_formats(proc, fmt):
    out = proc.render(make_image(1600, 1000, seed=1), (128, 256, 512), fmt, 80)
    assert [t.size for t in out.thumbnails] == [128, 256, 512]
    for t in out.thumbnails:
        im = Image.open(io.BytesIO(t.data))
        assert im.format == ("WEBP" if fmt == "webp" else "JPEG")
        assert max(im.size) == t.size and im.size == (t.width, t.height)
        assert im.size[0] > im.size[1]


def test_exif_orientation_is_applied(proc):
    out = proc.render(make_image(1200, 800, seed=2, orientation=6), (256,), "webp", 80)
    t = out.thumbnails[0]
    assert (t.width, t.height) == (171, 256)  # rotated to portrait
    assert out.metadata["exif"]["orientation"] == 6
    assert (out.metadata["width"], out.metadata["height"]) == (800, 1200)


def test_metadata(proc):
    out = proc.render(make_image(640, 480, make="Canon", model="EOS"), (128,), "webp", 80)
    m = out.metadata
    assert (m["format"], m["width"], m["height"], m["mode"]) == ("JPEG", 640, 480, "RGB")
    assert m["exif"]["make"] == "Canon" and m["exif"]["model"] == "EOS"
    assert "gps" not in m["exif"]


def test_alpha_survives_webp_and_is_flattened_for_jpeg(proc):
    png = make_image(300, 300, fmt="PNG", mode="RGBA")
    assert Image.open(io.BytesIO(proc.render(png, (128,), "webp", 80).thumbnails[0].data)).mode == "RGBA"
    assert Image.open(io.BytesIO(proc.render(png, (128,), "jpeg", 80).thumbnails[0].data)).mode == "RGB"


def test_small_image_is_not_upscaled(proc):
    out = proc.render(make_image(100, 60), (128, 512), "webp", 80)
    assert [(t.width, t.height) for t in out.thumbnails] == [(100, 60), (100, 60)]


def test_not_an_image(proc):
    with pytest.raises(InvalidImage, match="not an image"):
        proc.render(b"hello, I am text", (128,), "webp", 80)


def test_truncated_file(proc):
    data = make_image(800, 600)
    with pytest.raises(InvalidImage, match="cannot be decoded"):
        proc.render(data[: len(data) // 2], (128,), "webp", 80)


def test_decompression_bomb_is_refused_before_decoding(proc):
    buf = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buf, "PNG")  # 36 MP in a few kB
    with pytest.raises(InvalidImage, match="above the limit"):
        proc.render(buf.getvalue(), (128,), "webp", 80)
