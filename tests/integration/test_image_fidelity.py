"""Fidelity set: thumbnails look like the original for what phones, cameras and scanners produce.

Every input is generated here (no binary fixtures). Each case has a reference rendering made
independently of the code under test (numpy arithmetic on the pixel values the generator wrote,
or on a plain decode by the format's library), downscaled with LANCZOS to the thumbnail's size,
and a bound on the mean absolute difference (0-255, over pixels and channels) to the thumbnail
atelier renders. Thumbnails are JPEG q100 here (alpha flattened on white, as the service does for
JPEG), so the bound measures rendering, not WebP compression.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from adapters.imaging import PillowImageProcessor
from domain.errors import InvalidImage

BOUND = 2.0  # of 255; every case measured well under it (see docs/media-fidelity.md)
SIZE = 256


@pytest.fixture(scope="module")
def proc() -> PillowImageProcessor:
    return PillowImageProcessor(max_pixels=20_000_000)


# --- references --------------------------------------------------------------------------------

def gradient(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """0..1 ramps across (x) and down (y)."""
    y, x = np.mgrid[0:h, 0:w]
    return x / (w - 1), y / (h - 1)


def flatten_on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4] / 255.0
    return rgba[..., :3] * a + 255.0 * (1 - a)


def thumbnail_reference(pixels: np.ndarray, size: int = SIZE) -> np.ndarray:
    """The reference rendering (float 0-255, H x W x 3 or grey H x W) downscaled like a thumbnail."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if pixels.shape[2] == 4:  # resize with alpha as Pillow does (premultiplied), then flatten
        im = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGBA")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        return flatten_on_white(np.asarray(im).astype(float))
    im = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im).astype(float)


def rendered(proc: PillowImageProcessor, data: bytes, size: int = SIZE) -> np.ndarray:
    thumb = proc.render(data, (size,), "jpeg", 100).thumbnails[0]
    return np.asarray(Image.open(io.BytesIO(thumb.data)).convert("RGB")).astype(float)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).mean())


# --- encoders the tests need and Pillow lacks ----------------------------------------------------

def png16(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB, RGBA or grey+alpha)."""
    h, w = samples.shape[:2]
    rows = samples.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def save(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def strip_adobe_marker(jpeg: bytes) -> bytes:
    """Remove the APP14 'Adobe' segment (the one that says CMYK samples are stored inverted)."""
    out, i = bytearray(jpeg[:2]), 2
    while i < len(jpeg):
        marker, length = jpeg[i + 1], struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        segment = jpeg[i:i + 2 + length]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += jpeg[i:]
            break
        if not (marker == 0xEE and segment[4:9] == b"Adobe"):
            out += segment
        i += 2 + length
    return bytes(out)


# --- 1. modes and bit depths ---------------------------------------------------------------------

H, W = 300, 400


def _grey16_dark() -> tuple[bytes, np.ndarray]:
    value = 0x3000  # a dark grey: 48 of 255
    samples = np.full((H, W), value, np.uint16)
    return save(Image.fromarray(samples), "PNG"), np.full((H, W), value / 257)


def _grey16_ramp() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    samples = np.rint(65535 * (0.7 * x + 0.3 * y)).astype(np.uint16)
    return save(Image.fromarray(samples), "PNG"), samples / 257


def _grey16_tiff() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    samples = np.rint(65535 * x * y).astype(np.uint16)
    return save(Image.fromarray(samples), "TIFF"), samples / 257


def _rgb16() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    samples = np.rint(65535 * np.stack([x, y, 1 - x * y], axis=2)).astype(np.uint16)
    return png16(samples, 2), samples / 257


def _rgba16() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    samples = np.rint(65535 * np.stack([x, 0.2 + 0 * x, y, 0.25 + 0.75 * x], axis=2)).astype(np.uint16)
    return png16(samples, 6), samples / 257


def _la16() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    samples = np.rint(65535 * np.stack([0.1 + 0.3 * y, 0.3 + 0.7 * x], axis=2)).astype(np.uint16)
    grey, alpha = samples[..., 0] / 257, samples[..., 1] / 257
    return png16(samples, 4), np.stack([grey, grey, grey, alpha], axis=2)


def _int32_full_range() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    samples = np.rint((2**31 - 1) * (0.5 * x + 0.5 * y)).astype(np.int32)
    return save(Image.fromarray(samples), "TIFF"), samples / (2**31 - 1) * 255


def _float32_unit() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    samples = (0.05 + 0.6 * x * (1 - 0.5 * y)).astype(np.float32)
    return save(Image.fromarray(samples), "TIFF"), samples.astype(float) * 255


def _la8() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    grey, alpha = np.rint(40 + 100 * x), np.rint(255 * y)
    samples = np.stack([grey, alpha], axis=2).astype(np.uint8)
    return save(Image.fromarray(samples, "LA"), "PNG"), np.stack([grey, grey, grey, alpha], axis=2)


def _palette_alpha() -> tuple[bytes, np.ndarray]:
    palette = np.array([[200, 30, 40, 255], [20, 90, 200, 128], [0, 0, 0, 0], [250, 240, 20, 255]], np.uint8)
    index = ((np.arange(W)[None, :] // 100 + np.arange(H)[:, None] // 75) % 4).astype(np.uint8)
    pa = Image.fromarray(index, "L").convert("P")
    pa.putpalette(palette[:, :3].flatten().tolist())
    pa = Image.merge("PA", (pa.getchannel(0), Image.fromarray(palette[index, 3], "L")))
    pa.putpalette(palette[:, :3].flatten().tolist())
    return save(pa, "TIFF"), palette[index].astype(float)


def _palette_trns() -> tuple[bytes, np.ndarray]:
    palette = np.array([[200, 30, 40], [20, 90, 200], [0, 0, 0], [250, 240, 20]], np.uint8)
    index = ((np.arange(W)[None, :] // 100 + np.arange(H)[:, None] // 75) % 4).astype(np.uint8)
    p = Image.fromarray(index, "L").convert("P")
    p.putpalette(palette.flatten().tolist())
    alpha = np.where(index == 2, 0, 255)
    return save(p, "PNG", transparency=2), np.concatenate([palette[index], alpha[..., None]], axis=2).astype(float)


def _bilevel() -> tuple[bytes, np.ndarray]:
    bits = ((np.arange(W)[None, :] // 50 + np.arange(H)[:, None] // 50) % 2).astype(bool)
    return save(Image.fromarray(bits), "PNG"), bits * 255.0


def _cmyk_values() -> np.ndarray:
    x, y = gradient(H, W)
    return np.rint(255 * np.stack([x, y, 0.5 * (1 - x), 0.3 * x * y], axis=2)).astype(np.uint8)


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """Uncalibrated CMYK (no profile): each channel (1 - ink) * (1 - black)."""
    c = cmyk.astype(float) / 255
    return 255 * (1 - c[..., :3]) * (1 - c[..., 3:4])


def _cmyk_adobe() -> tuple[bytes, np.ndarray]:
    cmyk = _cmyk_values()
    # Pillow writes CMYK JPEGs as Photoshop does: samples inverted, and an Adobe marker saying so.
    return save(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100), _cmyk_to_rgb(cmyk)


def _cmyk_plain() -> tuple[bytes, np.ndarray]:
    cmyk = _cmyk_values()
    # Stored as is, with no Adobe marker: give Pillow the inverse, so its inverted write stores cmyk.
    data = strip_adobe_marker(save(Image.fromarray(255 - cmyk, "CMYK"), "JPEG", quality=100))
    assert b"Adobe" not in data[:200]
    return data, _cmyk_to_rgb(cmyk)


MODE_CASES = {
    "grey16 dark uniform (PNG)": _grey16_dark,
    "grey16 ramp (PNG)": _grey16_ramp,
    "grey16 (TIFF)": _grey16_tiff,
    "RGB 16-bit (PNG)": _rgb16,
    "RGBA 16-bit (PNG)": _rgba16,
    "grey+alpha 16-bit (PNG)": _la16,
    "32-bit int (TIFF)": _int32_full_range,
    "32-bit float 0..1 (TIFF)": _float32_unit,
    "LA (PNG)": _la8,
    "PA (TIFF)": _palette_alpha,
    "P + tRNS (PNG)": _palette_trns,
    "1-bit (PNG)": _bilevel,
    "CMYK JPEG, Adobe inverted": _cmyk_adobe,
    "CMYK JPEG, no Adobe marker": _cmyk_plain,
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_modes_render_with_the_originals_tones(proc, case):
    data, pixels = MODE_CASES[case]()
    got = rendered(proc, data)
    assert mad(got, thumbnail_reference(pixels)) <= BOUND, case


def test_the_measure_tells_the_white_grey16_thumbnail(proc):
    """The defect as reported: Pillow's own conversion clips I;16 and gives white."""
    data, pixels = _grey16_dark()
    naive = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE * H // W))).astype(float)
    assert mad(naive, thumbnail_reference(pixels)) > 100


def test_alpha_survives_in_webp(proc):
    for make in (_la8, _la16, _rgba16, _palette_alpha, _palette_trns):
        data, pixels = make()
        thumb = proc.render(data, (SIZE,), "webp", 90).thumbnails[0]
        im = Image.open(io.BytesIO(thumb.data))
        assert im.mode == "RGBA", make.__name__
        ref = Image.fromarray(np.clip(np.rint(pixels[..., 3]), 0, 255).astype(np.uint8), "L").resize(im.size)
        assert mad(np.asarray(im.getchannel("A"), float), np.asarray(ref, float)) <= BOUND, make.__name__


def test_decode_gives_the_clip_input_the_same_pixels(proc):
    data, pixels = _grey16_dark()
    im, meta = proc.decode(data, longest_side=224)
    assert im.mode == "RGB" and meta["mode"] == "I;16"
    assert abs(np.asarray(im, float).mean() - 0x3000 / 257) < 1
