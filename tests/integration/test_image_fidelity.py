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
from PIL import ExifTags, Image, ImageCms

from adapters.imaging import PillowImageProcessor
from domain.errors import InvalidImage, PermanentError
from tests.imaging_support import (
    DISPLAY_P3,
    DISPLAY_P3_ICC,
    PROPHOTO,
    PROPHOTO_ICC,
    SIZE,
    H,
    W,
    colourful,
    gradient,
    grey_profile,
    heic,
    heic_samples,
    mad,
    save,
    srgb_decode,
    srgb_encode,
    thumbnail_reference,
    wide_to_srgb,
)

BOUND = 2.0  # of 255; every case measured well under it (see docs/media-fidelity.md)


@pytest.fixture(scope="module")
def proc() -> PillowImageProcessor:
    return PillowImageProcessor(max_pixels=20_000_000)


# --- references (the rest: tests/imaging_support.py) -------------------------------------------

def rendered(proc: PillowImageProcessor, data: bytes, size: int = SIZE) -> np.ndarray:
    thumb = proc.render(data, (size,), "jpeg", 100).thumbnails[0]
    return np.asarray(Image.open(io.BytesIO(thumb.data)).convert("RGB")).astype(float)


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


# --- 2. colour management ------------------------------------------------------------------------
#
# Wide-gamut profiles (ICC v2 matrix/TRC, as Apple's Display P3 and ProPhoto RGB are) and the numpy
# reference conversion to sRGB: tests/imaging_support.py.


def _gamma(g: float):  # type: ignore[no-untyped-def]
    return lambda v: v ** (int(round(g * 256)) / 256)  # the u8Fixed8 gamma the profile stores


def _prophoto_jpeg() -> tuple[bytes, np.ndarray]:
    samples = colourful()
    data = save(Image.fromarray(samples), "JPEG", quality=100, icc_profile=PROPHOTO_ICC)
    decoded = np.asarray(Image.open(io.BytesIO(data)))  # the JPEG's own samples, before colour management
    return data, wide_to_srgb(decoded, PROPHOTO, _gamma(1.8))


def _display_p3_jpeg() -> tuple[bytes, np.ndarray]:
    samples = colourful()
    data = save(Image.fromarray(samples), "JPEG", quality=100, icc_profile=DISPLAY_P3_ICC)
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    return data, wide_to_srgb(decoded, DISPLAY_P3, srgb_decode)


def _display_p3_png_alpha() -> tuple[bytes, np.ndarray]:
    samples = colourful(alpha=True)
    data = save(Image.fromarray(samples, "RGBA"), "PNG", icc_profile=DISPLAY_P3_ICC)
    return data, wide_to_srgb(samples, DISPLAY_P3, srgb_decode)


def _prophoto_png16() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    samples = np.rint(65535 * np.stack([x, y, 1 - x], axis=2)).astype(np.uint16)
    png = png16(samples, 2)
    chunk = b"iCCP" + b"ProPhoto\0\0" + zlib.compress(PROPHOTO_ICC)  # iCCP goes right after IHDR
    png = png[:33] + struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]
    return png, wide_to_srgb(samples / 257, PROPHOTO, _gamma(1.8))


def _linear_grey_jpeg() -> tuple[bytes, np.ndarray]:
    x, y = gradient(H, W)
    samples = np.rint(255 * x * (0.5 + 0.5 * y)).astype(np.uint8)
    data = save(Image.fromarray(samples, "L"), "JPEG", quality=100, icc_profile=grey_profile("Grey linear", 1.0))
    decoded = np.asarray(Image.open(io.BytesIO(data))) / 255.0
    return data, 255 * srgb_encode(decoded)  # linear grey: its values are the luminance


def _lab_tiff() -> tuple[bytes, np.ndarray]:
    from PIL import ImageCms

    samples = colourful()
    lab = ImageCms.profileToProfile(Image.fromarray(samples), ImageCms.createProfile("sRGB"),
                                    ImageCms.createProfile("LAB"), outputMode="LAB")
    return save(lab, "TIFF"), samples.astype(float)


COLOUR_CASES = {
    "ProPhoto RGB JPEG": _prophoto_jpeg,
    "Display P3 JPEG": _display_p3_jpeg,
    "Display P3 PNG with alpha": _display_p3_png_alpha,
    "ProPhoto RGB 16-bit PNG (iCCP)": _prophoto_png16,
    "grey JPEG with a linear grey profile": _linear_grey_jpeg,
    "CIELab TIFF": _lab_tiff,
}


@pytest.mark.parametrize("case", list(COLOUR_CASES))
def test_embedded_profiles_are_converted_to_srgb(proc, case):
    data, pixels = COLOUR_CASES[case]()
    assert mad(rendered(proc, data), thumbnail_reference(pixels)) <= BOUND, case


@pytest.mark.parametrize("case, off_by", [("ProPhoto RGB JPEG", 20), ("Display P3 JPEG", 6)])
def test_the_measure_tells_a_thumbnail_that_ignored_the_profile(case, off_by):
    """The defect as reported: the samples kept, the profile dropped (about 26/255 for ProPhoto)."""
    data, pixels = COLOUR_CASES[case]()
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
    assert mad(np.asarray(im, float), thumbnail_reference(pixels)) > off_by


def test_thumbnails_carry_no_profile_and_metadata_names_the_original_one(proc):
    data, _ = _display_p3_jpeg()
    out = proc.render(data, (128,), "webp", 80)
    assert "icc_profile" not in Image.open(io.BytesIO(out.thumbnails[0].data)).info  # sRGB, untagged
    assert out.metadata["color_profile"] == "Display P3 (generated)"


def test_the_clip_input_is_converted_too(proc):
    data, pixels = _display_p3_jpeg()
    im, _ = proc.decode(data, longest_side=224)  # what the embedder decodes (JPEG draft: 1/1 here)
    assert mad(np.asarray(im, float), thumbnail_reference(pixels, max(im.size))) <= BOUND


# --- 3. HEIC (pillow-heif) and AVIF (Pillow) -----------------------------------------------------
#
# Written with pillow-heif's own API (libheif + x265) and Pillow's AVIF encoder; references are
# the files decoded by pillow_heif.open_heif / Pillow without colour management, then converted
# in numpy as above.

def _heic_p3() -> tuple[bytes, np.ndarray]:
    data = heic(Image.fromarray(colourful()), icc_profile=DISPLAY_P3_ICC)
    return data, wide_to_srgb(heic_samples(data), DISPLAY_P3, srgb_decode)


def _heic_srgb_alpha() -> tuple[bytes, np.ndarray]:
    data = heic(Image.fromarray(colourful(alpha=True), "RGBA"))
    return data, heic_samples(data).astype(float)


def _heic_10bit() -> tuple[bytes, np.ndarray]:
    import pillow_heif

    x, y = gradient(H, W)
    samples = np.rint(65535 * np.stack([0.1 + 0.5 * x, y, 0.2 + 0 * x], axis=2)).astype(np.uint16)
    buf = io.BytesIO()
    pillow_heif.from_bytes("RGB;16", (W, H), samples.tobytes()).save(buf, quality=100, chroma=444)
    return buf.getvalue(), samples / 257


def _avif_p3() -> tuple[bytes, np.ndarray]:
    data = save(Image.fromarray(colourful()), "AVIF", quality=95, subsampling="4:4:4", icc_profile=DISPLAY_P3_ICC)
    return data, wide_to_srgb(np.asarray(Image.open(io.BytesIO(data))), DISPLAY_P3, srgb_decode)


def _avif_alpha() -> tuple[bytes, np.ndarray]:
    data = save(Image.fromarray(colourful(alpha=True), "RGBA"), "AVIF", quality=95, subsampling="4:4:4")
    return data, np.asarray(Image.open(io.BytesIO(data))).astype(float)


FORMAT_CASES = {
    "HEIC, Display P3 profile (as iPhones write)": _heic_p3,
    "HEIC with alpha": _heic_srgb_alpha,
    "HEIC 10-bit": _heic_10bit,
    "AVIF, Display P3 profile": _avif_p3,
    "AVIF with alpha": _avif_alpha,
}


@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_heic_and_avif_render_like_the_original(proc, case):
    data, pixels = FORMAT_CASES[case]()
    assert mad(rendered(proc, data), thumbnail_reference(pixels)) <= BOUND, case


def _oriented(make: str, orientation: int = 6) -> tuple[Image.Image, Image.Exif]:
    """600x400 grey with a red block top left; EXIF says: turn 90 degrees clockwise to show."""
    im = Image.new("RGB", (600, 400), (128, 128, 128))
    im.paste((220, 20, 20), (0, 0, 150, 100))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = make, f"{make} One"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2025:06:01 12:30:00"
    return im, exif


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_orientation_and_camera_fields(proc, fmt):
    im, exif = _oriented("Apple" if fmt == "HEIF" else "Google")
    data = heic(im, exif=exif) if fmt == "HEIF" else save(im, "AVIF", quality=90, exif=exif.tobytes())
    out = proc.render(data, (256,), "jpeg", 95)
    m = out.metadata
    assert (m["format"], m["width"], m["height"]) == (fmt, 400, 600)  # as shown: portrait
    assert m["exif"]["orientation"] == 6
    assert m["exif"]["make"] == exif[ExifTags.Base.Make] and m["exif"]["model"] == exif[ExifTags.Base.Model]
    assert m["exif"]["taken_at"] == "2025:06:01 12:30:00"
    thumb = Image.open(io.BytesIO(out.thumbnails[0].data))
    assert thumb.size == (171, 256)  # upright, and turned once only
    r, g, b = thumb.getpixel((thumb.width - 10, 10))  # the red block is now top right
    assert r > 180 and g < 70 and b < 70
    assert thumb.getpixel((10, 10))[0] < 160  # and not top left


def test_heic_embedded_thumbnail_feeds_a_small_decode(proc):
    data = heic(Image.fromarray(colourful()), icc_profile=DISPLAY_P3_ICC, thumbnails=[256])
    full = wide_to_srgb(heic_samples(data), DISPLAY_P3, srgb_decode)
    im, meta = proc.decode(data, longest_side=160)  # as the embedder asks: the 256 thumbnail will do
    assert im.size == (256, 192) and (meta["width"], meta["height"]) == (W, H)
    assert mad(np.asarray(im, float), thumbnail_reference(full, 256)) <= 2 * BOUND  # its own encoding
    im, _ = proc.decode(data, longest_side=300)  # larger than the thumbnail: the image itself
    assert im.size == (W, H)


def test_heic_and_avif_embed_as_their_pixels_do(tmp_path, proc):
    from adapters.clip import ClipEmbedder, load_clip
    from tests.clip_support import TINY_MODEL, make_tiny_clip

    configs, checkpoint = make_tiny_clip(tmp_path)
    loaded = load_clip(TINY_MODEL, str(checkpoint), model_config=configs)
    embedder = ClipEmbedder(lambda: loaded, lambda data, side: proc.decode(data, longest_side=side)[0],
                            model_id="tiny", max_batch_size=1)
    for make in (_heic_p3, _avif_p3):
        data, pixels = make()
        as_png = save(Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)), "PNG")
        a, b = np.array(embedder.embed_image(data)), np.array(embedder.embed_image(as_png))
        assert float(a @ b) > 0.995, make.__name__  # unit vectors: cosine similarity


@pytest.mark.parametrize("data, media_type", [
    (lambda: heic(Image.new("RGB", (64, 48))), "image/heic"),
    (lambda: save(Image.new("RGB", (64, 48)), "AVIF"), "image/avif"),
    (lambda: save(Image.new("RGB", (8, 8)), "JPEG"), "image/jpeg"),
    (lambda: save(Image.new("RGB", (8, 8)), "PNG"), "image/png"),
    (lambda: save(Image.new("RGB", (8, 8)), "WEBP"), "image/webp"),
    (lambda: save(Image.new("RGB", (8, 8)), "TIFF"), "image/tiff"),
    (lambda: save(Image.new("P", (8, 8)), "GIF"), "image/gif"),
    (lambda: save(Image.new("RGB", (8, 8)), "BMP"), "image/bmp"),
    (lambda: save(Image.new("L", (8, 8)), "PPM"), "image/x-portable-anymap"),
    (lambda: b"this is text, not a JPEG\n", None),
    (lambda: b"", None),
])
def test_content_decides_the_media_type(data, media_type):
    from adapters.imaging import sniff_media_type

    assert sniff_media_type(data()) == media_type


def test_the_demo_takes_files_by_content(tmp_path):
    try:  # the CLI is moving from adapters/ to entrypoints/: test it where this checkout has it
        from adapters.cli import _demo_inputs
    except ImportError:
        from entrypoints.cli import _demo_inputs

    (tmp_path / "IMG_0001.HEIC").write_bytes(heic(Image.new("RGB", (64, 48))))
    (tmp_path / "photo.avif").write_bytes(save(Image.new("RGB", (64, 48)), "AVIF"))
    (tmp_path / "IMG_0002").write_bytes(heic(Image.new("RGB", (64, 48))))  # no suffix at all
    (tmp_path / "broken.jpg").write_bytes(b"not a JPEG")  # offered: its failure is reported
    (tmp_path / "notes.txt").write_text("not an image")
    names = [p.name for p in _demo_inputs(str(tmp_path), tmp_path / "work")]
    assert names == ["IMG_0001.HEIC", "IMG_0002", "broken.jpg", "photo.avif"]


# --- 4. hostile input: a bad profile never fails an image; an undecodable file is a permanent error

def _patch_ispe(data: bytes, width: int, height: int) -> bytes:
    """Make a HEIF/AVIF file declare other dimensions in its image spatial extents box."""
    at = data.index(b"ispe") + 8  # after the box type and its version/flags
    return data[:at] + struct.pack(">II", width, height) + data[at + 8:]


def _small_heic() -> bytes:
    return heic(Image.fromarray(colourful(96, 128)))


def _small_avif() -> bytes:
    return save(Image.fromarray(colourful(96, 128)), "AVIF", quality=80)


@pytest.mark.parametrize("make", [_small_heic, _small_avif], ids=["HEIC", "AVIF"])
def test_truncated_heic_and_avif_are_permanent_errors(proc, make):
    data = make()
    for cut in (12, 40, len(data) // 3, len(data) // 2, len(data) - 200, len(data) - 1):
        with pytest.raises(InvalidImage) as caught:
            proc.render(data[:cut], (128,), "webp", 80)
        assert isinstance(caught.value, PermanentError)


@pytest.mark.parametrize("make", [_small_heic, _small_avif], ids=["HEIC", "AVIF"])
def test_corrupt_heic_and_avif_payload_fails_only_as_invalid_image(proc, make):
    data = bytearray(make())
    rng = np.random.default_rng(7)
    start = len(data) // 2
    for _ in range(5):
        corrupt = bytearray(data)
        corrupt[start:] = rng.integers(0, 256, len(data) - start, np.uint8).tobytes()
        try:
            out = proc.render(bytes(corrupt), (128,), "webp", 80)
        except InvalidImage:
            continue
        assert out.thumbnails[0].width == 128  # decoded garbage is still an image of the right size


@pytest.mark.parametrize("make", [_small_heic, _small_avif], ids=["HEIC", "AVIF"])
@pytest.mark.parametrize("width, height", [(8000, 6000), (60000, 60000), (2**31 - 1, 2**31 - 1)])
def test_a_bomb_declared_in_heif_dimensions_is_refused_before_decoding(proc, make, width, height):
    with pytest.raises(InvalidImage, match="above the limit|bomb|not a readable image|cannot be decoded"):
        proc.render(_patch_ispe(make(), width, height), (128,), "webp", 80)


def _with_profile(icc: bytes, mode: str = "RGB") -> bytes:
    samples = colourful()
    im = Image.fromarray(samples) if mode == "RGB" else Image.fromarray(samples).convert(mode)
    return save(im, "JPEG", quality=95, icc_profile=icc)


def _class_patched(icc: bytes, profile_class: bytes) -> bytes:
    return icc[:12] + profile_class + icc[16:]


BAD_PROFILES = {
    "random bytes": lambda: _with_profile(bytes(np.random.default_rng(1).integers(0, 256, 600, np.uint8))),
    "truncated profile": lambda: _with_profile(DISPLAY_P3_ICC[:200]),
    "header only": lambda: _with_profile(DISPLAY_P3_ICC[:128]),
    "tag table pointing past the end": lambda: _with_profile(DISPLAY_P3_ICC[:-64]),
    "grey profile on RGB samples": lambda: _with_profile(grey_profile("Grey", 2.2)),
    "RGB profile on grey samples": lambda: _with_profile(DISPLAY_P3_ICC, "L"),
    "RGB profile on CMYK samples": lambda: _with_profile(DISPLAY_P3_ICC, "CMYK"),
    "Lab profile on RGB samples": lambda: _with_profile(
        ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()),
    "abstract profile class": lambda: _with_profile(_class_patched(DISPLAY_P3_ICC, b"abst")),
    "device link profile class": lambda: _with_profile(_class_patched(DISPLAY_P3_ICC, b"link")),
}


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_an_unusable_profile_is_ignored_and_logged(proc, case, caplog):
    data = BAD_PROFILES[case]()
    untagged = save(Image.open(io.BytesIO(data)), "TIFF")  # the same samples, no profile
    with caplog.at_level("WARNING", logger="adapters.imaging"):
        out = proc.render(data, (SIZE,), "jpeg", 100)
    assert out.metadata["color_profile_error"], case
    assert "colour profile ignored" in caplog.text
    got = np.asarray(Image.open(io.BytesIO(out.thumbnails[0].data)).convert("RGB"), float)
    assert mad(got, rendered(proc, untagged)) <= 0.5, case  # rendered as a browser would: as sRGB


ONE_PIXEL = {
    "PNG 16-bit grey": lambda: save(Image.fromarray(np.full((1, 1), 0x3000, np.uint16)), "PNG"),
    "PNG 16-bit RGBA": lambda: png16(np.full((1, 1, 4), 0x8000, np.uint16), 6),
    "TIFF float": lambda: save(Image.fromarray(np.full((1, 1), 0.5, np.float32)), "TIFF"),
    "TIFF 32-bit int": lambda: save(Image.fromarray(np.full((1, 1), 2**30, np.int32)), "TIFF"),
    "PNG 1-bit": lambda: save(Image.new("1", (1, 1), 1), "PNG"),
    "JPEG with a P3 profile": lambda: save(Image.new("RGB", (1, 1), (200, 10, 10)), "JPEG",
                                           icc_profile=DISPLAY_P3_ICC),
    "JPEG CMYK": lambda: save(Image.new("CMYK", (1, 1), (10, 200, 10, 0)), "JPEG"),
    "HEIC": lambda: heic(Image.new("RGB", (1, 1), (200, 10, 10))),
    "AVIF": lambda: save(Image.new("RGB", (1, 1), (200, 10, 10)), "AVIF"),
}


@pytest.mark.parametrize("case", list(ONE_PIXEL))
def test_one_pixel_images(proc, case):
    out = proc.render(ONE_PIXEL[case](), (128, 256), "webp", 80)
    assert [(t.width, t.height) for t in out.thumbnails] == [(1, 1), (1, 1)], case
    im, _ = proc.decode(ONE_PIXEL[case](), longest_side=224)
    assert im.size == (1, 1) and im.mode in ("RGB", "RGBA")


def test_an_empty_file_is_a_permanent_error(proc):
    with pytest.raises(InvalidImage, match="not an image"):
        proc.render(b"", (128,), "webp", 80)


def test_a_heic_that_cannot_be_read_says_so(proc):
    with pytest.raises(InvalidImage, match="image/heic"):
        proc.render(_small_heic()[:300], (128,), "webp", 80)


def test_an_oversized_profile_is_ignored(proc, monkeypatch):
    import adapters.imaging

    monkeypatch.setattr(adapters.imaging, "MAX_PROFILE_BYTES", len(DISPLAY_P3_ICC) - 1)
    out = proc.render(_display_p3_jpeg()[0], (64,), "webp", 80)
    assert "above" in out.metadata["color_profile_error"]


def test_a_shared_transform_gives_the_same_pixels_on_concurrent_threads(proc):
    from concurrent.futures import ThreadPoolExecutor

    data = _display_p3_jpeg()[0]
    alone = proc.decode(data)[0].tobytes()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: proc.decode(data)[0].tobytes(), range(16)))
    assert all(r == alone for r in results)


def test_only_an_embedded_profile_is_recorded(proc):
    lab = Image.open(io.BytesIO(_lab_tiff()[0]))
    assert lab.info.pop("icc_profile")  # ImageCms tagged it; without: converted by the built-in Lab profile
    out = proc.render(save(lab, "TIFF"), (SIZE,), "jpeg", 100)
    assert out.metadata["color_profile"] is None and "color_profile_error" not in out.metadata
    got = np.asarray(Image.open(io.BytesIO(out.thumbnails[0].data)), float)
    assert mad(got, thumbnail_reference(colourful().astype(float))) <= BOUND
    assert proc.render(_linear_grey_jpeg()[0], (64,), "webp", 80).metadata["color_profile"] == "Grey linear"
