"""Test images and their references, shared by the fidelity set
(tests/integration/test_image_fidelity.py) and the media end-to-end tests (tests/e2e).

Every input is generated (no binary fixtures). A reference rendering is made independently of the
code under test: numpy arithmetic on the pixel values the generator wrote, or on a plain decode by
the format's library, downscaled with LANCZOS to a thumbnail's size.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image

SIZE = 256  # the default reference thumbnail size
H, W = 300, 400  # the default test image size


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


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).mean())


def save(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


# --- colour management ----------------------------------------------------------------------------
#
# ImageCms.createProfile makes sRGB, LAB and XYZ only. Wide-gamut profiles are written here as
# ICC v2 matrix/TRC display profiles (the structure of Apple's Display P3 and of ProPhoto RGB
# profiles): a header, desc/cprt/wtpt, the three colorants (the D50-adapted RGB-to-XYZ matrix's
# columns) and a tone curve per channel. The reference conversion is done in numpy from the same
# primaries, white points and curves: decode the curve, matrix to XYZ (D50), Bradford-adapted
# sRGB matrix back, clip, sRGB curve.

D50 = np.array([0.9642, 1.0, 0.8249])
D65_XY = (0.3127, 0.3290)
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz(primaries: list[tuple[float, float]], white: tuple[float, float]) -> np.ndarray:
    columns = np.column_stack([_xyz(*p) for p in primaries])
    return columns * np.linalg.solve(columns, _xyz(*white))


def to_d50(matrix: np.ndarray, white: tuple[float, float]) -> np.ndarray:
    src, dst = BRADFORD @ _xyz(*white), BRADFORD @ D50
    return np.linalg.inv(BRADFORD) @ np.diag(dst / src) @ BRADFORD @ matrix


PROPHOTO = rgb_to_xyz([(0.7347, 0.2653), (0.1596, 0.8404), (0.0366, 0.0001)], (0.3457, 0.3585))  # D50 white
DISPLAY_P3 = to_d50(rgb_to_xyz([(0.680, 0.320), (0.265, 0.690), (0.150, 0.060)], D65_XY), D65_XY)
SRGB_D50 = to_d50(rgb_to_xyz([(0.64, 0.33), (0.30, 0.60), (0.15, 0.06)], D65_XY), D65_XY)


def srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_encode(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1)
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _curve(trc: float | np.ndarray) -> bytes:
    if isinstance(trc, float):  # a pure gamma, as u8Fixed8
        return b"curv\0\0\0\0" + struct.pack(">IH", 1, int(round(trc * 256))) + b"\0\0"
    table = np.rint(np.asarray(trc) * 65535).astype(">u2").tobytes()
    return b"curv\0\0\0\0" + struct.pack(">I", len(trc)) + table


def icc_profile(description: str, space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2 display ('mntr') profile with the given colour space and tags."""
    text = description.encode("ascii") + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 70
    tags = [(b"desc", desc), (b"cprt", b"text\0\0\0\0generated\0"),
            (b"wtpt", b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in D50)), *tags]
    body, table, offset = b"", b"", 128 + 4 + 12 * len(tags)
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntr" + space
              + b"XYZ " + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 24
              + struct.pack(">I", 0) + b"".join(_s15(c) for c in D50) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def rgb_profile(description: str, matrix_d50: np.ndarray, trc: float | np.ndarray) -> bytes:
    colorants = [(name, b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in matrix_d50[:, i]))
                 for i, name in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))]
    curve = _curve(trc)
    return icc_profile(description, b"RGB ", [*colorants, (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)])


def grey_profile(description: str, gamma: float) -> bytes:
    return icc_profile(description, b"GRAY", [(b"kTRC", _curve(gamma))])


SRGB_TRC = srgb_decode(np.linspace(0, 1, 1024))
PROPHOTO_ICC = rgb_profile("ProPhoto RGB (generated)", PROPHOTO, 1.8)
DISPLAY_P3_ICC = rgb_profile("Display P3 (generated)", DISPLAY_P3, SRGB_TRC)


def wide_to_srgb(samples: np.ndarray, matrix_d50: np.ndarray, decode) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Reference: 8-bit samples in a matrix/TRC space to sRGB (relative colorimetric, clipped)."""
    linear = decode(samples[..., :3] / 255.0) @ matrix_d50.T @ np.linalg.inv(SRGB_D50).T
    out = 255 * srgb_encode(linear)
    return np.concatenate([out, samples[..., 3:].astype(float)], axis=2) if samples.shape[2] == 4 else out


def colourful(h: int = H, w: int = W, alpha: bool = False) -> np.ndarray:
    """Saturated colours: hues around the circle across, saturation and value down."""
    x, y = gradient(h, w)
    hsv = np.stack([x * 255, 255 - 120 * y, 255 - 60 * y * x], axis=2).astype(np.uint8)
    rgb = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    if alpha:
        rgb = np.concatenate([rgb, np.rint(255 * (0.3 + 0.7 * y))[..., None].astype(np.uint8)], axis=2)
    return rgb


# --- HEIC (pillow-heif) ----------------------------------------------------------------------------
#
# Written with pillow-heif's own API (libheif + x265); references are the files decoded by
# pillow_heif.open_heif without colour management, then converted in numpy as above.

def heic(im: Image.Image, *, exif: Image.Exif | None = None, **kwargs: object) -> bytes:
    import pillow_heif

    heif = pillow_heif.from_pillow(im)
    buf = io.BytesIO()
    heif.save(buf, quality=kwargs.pop("quality", 95), chroma=444,
              **({"exif": exif.tobytes()} if exif is not None else {}), **kwargs)
    return buf.getvalue()


def heic_samples(data: bytes) -> np.ndarray:
    import pillow_heif

    return np.asarray(pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True))


# --- a phone's photo: HEIC or AVIF, Display P3, EXIF orientation and camera fields ----------------

#: np.rot90's k that shows pixels stored under an EXIF orientation upright (no mirrored ones here).
UPRIGHT_TURNS = {1: 0, 3: 2, 6: -1, 8: 1}


def camera_exif(make: str, model: str, orientation: int = 1, taken_at: str | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = make, model
    if taken_at:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = taken_at
    return exif


@dataclass(frozen=True)
class PhonePhoto:
    data: bytes
    srgb: np.ndarray  # the reference: upright, converted to sRGB from Display P3 (float 0-255)
    untagged: np.ndarray  # the same samples taken as sRGB, as a renderer ignoring the profile shows them


def phone_photo(fmt: str, exif: Image.Exif, h: int = 600, w: int = 800) -> PhonePhoto:
    """colourful() as a HEIC (pillow-heif) or an AVIF (Pillow), tagged Display P3, with ``exif``."""
    im = Image.fromarray(colourful(h, w))
    if fmt == "HEIF":
        data = heic(im, exif=exif, icc_profile=DISPLAY_P3_ICC, quality=90)
        samples = heic_samples(data)  # pillow-heif writes the orientation as irot, libheif applies it
    elif fmt == "AVIF":
        data = save(im, "AVIF", quality=90, subsampling="4:4:4", icc_profile=DISPLAY_P3_ICC, exif=exif.tobytes())
        samples = np.rot90(np.asarray(Image.open(io.BytesIO(data))), UPRIGHT_TURNS[exif[ExifTags.Base.Orientation]])
    else:
        raise ValueError(fmt)
    turned = exif[ExifTags.Base.Orientation] in (6, 8)
    assert samples.shape[:2] == ((w, h) if turned else (h, w)), samples.shape  # upright, as a viewer shows it
    return PhonePhoto(data, wide_to_srgb(samples, DISPLAY_P3, srgb_decode), samples.astype(float))
