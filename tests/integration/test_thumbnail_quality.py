"""Fast thumbnails stay good thumbnails: on a detailed 12-megapixel JPEG, each size is within a
small mean absolute pixel difference of a reference made the slow way (full decode, LANCZOS
straight from the original). A crude shortcut (nearest neighbour) lands far outside the bound."""

import io

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from adapters.imaging import PillowImageProcessor
from entrypoints.samples import make_photo

BOUND = 2.0  # of 255, mean over pixels and channels; measured 0.8-1.4 (JPEG q100 included)


def _reference(original: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return original.resize(size, resample)


def _mad(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


@pytest.fixture(scope="module")
def photo():
    data = make_photo(4000, 3000, seed=5)
    original = ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB"))
    return data, original


def test_thumbnails_are_close_to_the_slow_reference(photo):
    data, original = photo
    rendered = PillowImageProcessor().render(data, (128, 256, 512), "jpeg", 100)
    for thumb in rendered.thumbnails:
        im = Image.open(io.BytesIO(thumb.data))
        reference = _reference(original, im.size, Image.Resampling.LANCZOS)
        assert reference.size == (thumb.size, thumb.size * 3 // 4)
        assert _mad(reference, im) <= BOUND, thumb.size
        crude = _reference(original, im.size, Image.Resampling.NEAREST)
        assert _mad(reference, crude) > 3 * BOUND  # the measure does tell a bad thumbnail


def test_the_jpeg_is_decoded_at_reduced_scale(photo):
    data, _ = photo
    im, meta = PillowImageProcessor().decode(data, longest_side=512)
    assert im.size == (1000, 750)  # 1/4 scale: still at least 512 on each side
    assert (meta["width"], meta["height"]) == (4000, 3000)  # metadata tells the original
