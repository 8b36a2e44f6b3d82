"""Pillow image processor: safe decoding, metadata, fast thumbnails, faithful colours.

Formats: what Pillow reads (AVIF included) and HEIC/HEIF through pillow-heif; the content
decides, never a name. Every mode is brought to 8 bits with its tones (to_8bit), then to sRGB
from the embedded ICC profile (to_srgb). docs/media-fidelity.md says what is kept and refused.

Speed: a JPEG is decoded at reduced scale (draft mode) when the largest thumbnail
allows it, each smaller size is derived from the next larger one, and resizing uses
reducing_gap, which lets Pillow shrink by whole factors before the final filter.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import logging
import math
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from PIL import ExifTags, Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from domain.errors import InvalidImage
from domain.models import RenderedImage, RenderedThumbnail

log = logging.getLogger(__name__)

try:  # HEIC/HEIF (iPhone photos) through libheif; AVIF is Pillow's own (Pillow >= 11.3 wheels)
    import pillow_heif
except ImportError:  # pragma: no cover - a declared dependency; without it HEIC is refused, not crashed on
    pillow_heif = None
    log.warning("pillow-heif is not installed: HEIC/HEIF images will be refused as unreadable")
else:
    # Its own AVIF opener is not registered: Pillow's reads AVIF. Embedded HEIF thumbnails stay on:
    # draft() uses one for a small decode (the embedder's) when it is large enough.
    pillow_heif.register_heif_opener()

# Truncated files must fail, not decode to a grey half.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_ROTATED = {5, 6, 7, 8}
REDUCING_GAP = 3.0


def _declared_bits(im: Image.Image) -> int | None:
    """Bits per sample the file declares, where Pillow keeps it (TIFF's BitsPerSample)."""
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, int) and bits > 0 else None


def _scaled_to_l(im: Image.Image, white: float) -> Image.Image:
    """A one-band integer or float image scaled so that ``white`` is 255, rounded, clipped."""
    if im.mode != "F":
        im = im.convert("I")
    return im.point(lambda v: v * (255.0 / white) + 0.5).convert("L")


def _float_white(im: Image.Image) -> float:
    # A float image declares no range: 0..1 is the usual convention (TIFF, HDR tools); Pillow's own
    # float images are 0..255. Take the smallest usual range that holds the image's largest value.
    high = im.getextrema()[1]
    if not math.isfinite(high):  # NaN or infinity: the usual range, clipped
        return 1.0
    for white in (1.0, 255.0, 65535.0):
        if high <= white:
            return white
    return float(high)


def _int_white(im: Image.Image) -> float:
    bits = _declared_bits(im)
    if bits in (8, 16, 32):
        return float(2**31 - 1 if bits == 32 else 2**bits - 1)  # Pillow's "I" is signed 32-bit
    return 65535.0 if im.getextrema()[1] <= 65535 else float(2**31 - 1)


def to_8bit(im: Image.Image, *, source_format: str | None = None) -> Image.Image:
    """Bring any Pillow mode to 8 bits per sample, keeping tones and alpha.

    The result is L, LA, RGB, RGBA or CMYK (colour conversion comes after, see to_srgb). Pillow's
    own ``convert`` clips 16- and 32-bit samples at 255 (a dark 16-bit grey becomes white), so
    those are scaled: 16-bit by 65535, 32-bit integers by the file's declared depth, floats by
    the range their values fit (0..1 usually).
    """
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        if mode == "CMYK" and source_format == "JPEG" and "adobe" not in im.info:
            # Pillow reads every CMYK JPEG as Photoshop writes them (inverted, with an Adobe
            # APP14 marker). Without the marker the samples are stored plain: undo the inversion.
            im = im.point(lambda v: 255 - v)
        return im
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16"):
        return _scaled_to_l(im, 65535.0)
    if mode == "I":
        return _scaled_to_l(im, _int_white(im))
    if mode == "F":
        return _scaled_to_l(im, _float_white(im))
    if mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if mode in ("PA", "RGBa", "La"):
        return im.convert("RGBA" if mode != "La" else "LA")
    if mode == "LAB":
        return im  # CIELab: to_srgb converts it through a Lab profile
    return im.convert("RGB")  # RGBX, YCbCr, HSV and the rest Pillow can convert


def reduce_for(im: Image.Image, longest_side: int) -> Image.Image:
    """Shrink by the whole factor that ``thumbnail(..., reducing_gap=REDUCING_GAP)`` would use
    for a ``longest_side`` thumbnail anyway, so that what follows (colour conversion) works on
    fewer pixels; formats without a draft mode (HEIF without a thumbnail, PNG, AVIF) gain most."""
    w, h = im.size
    scale = longest_side / max(w, h)
    if scale >= 1:
        return im
    target_w, target_h = max(1, round(w * scale)), max(1, round(h * scale))
    factor = int(min(w / target_w, h / target_h) / REDUCING_GAP)
    if factor < 2:
        return im
    if im.mode in ("LA", "RGBA"):  # average premultiplied, as Pillow's resize does
        premultiplied = {"LA": "La", "RGBA": "RGBa"}[im.mode]
        return im.convert(premultiplied).reduce(factor).convert(im.mode)
    return im.reduce(factor)


# --- colour management: embedded ICC profile -> sRGB ---
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
#: The ICC colour space a profile must have to describe samples of each mode.
_PROFILE_SPACE = {"RGB": "RGB", "L": "GRAY", "CMYK": "CMYK", "LAB": "Lab"}
_MAX_DESCRIPTION = 120


class ProfileError(Exception):
    """An embedded profile that cannot be used for this image (unreadable, or the wrong colour space)."""


_TRANSFORMS: collections.OrderedDict[tuple[bytes, str], tuple[ImageCms.ImageCmsTransform, str]] = (
    collections.OrderedDict())
_TRANSFORMS_MAX = 32
_TRANSFORMS_LOCK = threading.Lock()
MAX_PROFILE_BYTES = 8 << 20  # real CMYK press profiles reach 2-4 MB


def srgb_transform(icc: bytes, mode: str) -> tuple[ImageCms.ImageCmsTransform, str]:
    """The transform from ``icc`` (for samples of ``mode``: RGB, L, CMYK or LAB) to sRGB, and the
    profile's description. Raises ProfileError for an unreadable profile or one of another colour
    space. Cached by the profile's digest (a library holds few distinct profiles: Display P3,
    sRGB...), so the cache never keeps a hostile file's profile bytes alive."""
    if len(icc) > MAX_PROFILE_BYTES:
        raise ProfileError(f"ICC profile of {len(icc)} bytes, above {MAX_PROFILE_BYTES}")
    key = (hashlib.sha256(icc).digest(), mode)
    with _TRANSFORMS_LOCK:
        if key in _TRANSFORMS:
            _TRANSFORMS.move_to_end(key)
            return _TRANSFORMS[key]
    found = _build_srgb_transform(icc, mode)
    with _TRANSFORMS_LOCK:
        _TRANSFORMS[key] = found
        while len(_TRANSFORMS) > _TRANSFORMS_MAX:
            _TRANSFORMS.popitem(last=False)
    return found


def _build_srgb_transform(icc: bytes, mode: str) -> tuple[ImageCms.ImageCmsTransform, str]:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = (profile.profile.profile_description or "").strip()[:_MAX_DESCRIPTION] or "unnamed"
        space = (profile.profile.xcolor_space or "").strip()
    except Exception as exc:  # lcms says why in many ways (PyCMSError, OSError, ValueError)
        raise ProfileError(f"unreadable ICC profile: {exc}") from None
    if space != _PROFILE_SPACE[mode]:
        raise ProfileError(f"ICC profile {description!r} describes {space or 'unknown'} samples, "
                           f"the image has {mode}")
    try:
        transform = ImageCms.buildTransform(
            profile, _SRGB, mode, "RGB", renderingIntent=ImageCms.Intent.PERCEPTUAL,
            # lcms's one-pixel cache is per transform; transforms are shared by worker threads.
            flags=ImageCms.Flags.NOCACHE)
    except Exception as exc:
        raise ProfileError(f"ICC profile {description!r} cannot be used: {exc}") from None
    return transform, description


@functools.lru_cache(maxsize=1)
def _lab_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # D50, as TIFF's CIELab


def to_srgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, dict[str, Any]]:
    """An 8-bit image (to_8bit's modes) as RGB or RGBA in sRGB, converted from its embedded
    profile; alpha is kept as is. A profile that cannot be used is ignored (the samples are then
    taken as sRGB, as a browser does) and logged: it never fails the image. Returns the image and
    what to record: ``color_profile`` (the description) and ``color_profile_error`` if ignored."""
    meta: dict[str, Any] = {"color_profile": None}
    alpha = im.getchannel("A") if im.mode in ("LA", "RGBA") else None
    base = im.convert(im.mode[:-1]) if alpha is not None else im  # LA -> L, RGBA -> RGB
    embedded = bool(icc)
    if base.mode == "LAB" and not icc:
        icc = _lab_profile()
    if icc:
        try:
            transform, description = srgb_transform(bytes(icc), base.mode)
            out = transform.apply(base)
            if embedded:
                meta["color_profile"] = description
        except ProfileError as exc:
            meta["color_profile_error"] = str(exc)
            log.warning("colour profile ignored, samples taken as sRGB: %s", exc)
        else:
            out.info.pop("icc_profile", None)
            if alpha is not None:
                out.putalpha(alpha)
            return out, meta
    if base.mode == "LAB":  # only if the Lab profile itself failed
        base = ImageCms.applyTransform(base, ImageCms.buildTransform(_lab_profile(), _SRGB, "LAB", "RGB"))
    out = base if base.mode == "RGB" else base.convert("RGB")
    if alpha is not None:
        out.putalpha(alpha)
    out.info.pop("icc_profile", None)
    return out, meta


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.strip("\x00 ").strip() or None
    return value


def _gps(exif: Image.Exif) -> dict[str, Any] | None:
    gps = exif.get_ifd(_GPS_IFD)
    if not gps:
        return None
    out: dict[str, Any] = {}
    for tag, value in gps.items():
        name = ExifTags.GPSTAGS.get(tag, str(tag))
        if isinstance(value, tuple):
            value = [float(v) if not isinstance(v, str | bytes) else _text(v) for v in value]
        elif not isinstance(value, str | int | float | bytes):
            value = float(value)
        out[name] = _text(value)
    return out


def extract_metadata(im: Image.Image, *, include_gps: bool) -> dict[str, Any]:
    exif = im.getexif()
    sub = exif.get_ifd(_EXIF_IFD)
    orientation = exif.get(ExifTags.Base.Orientation)
    width, height = im.size
    if "original_orientation" in im.info:
        # HEIF: libheif turns the pixels (irot/imir) and pillow-heif sets EXIF's tag to 1 so that
        # nothing turns them again; the size is already as shown. Report what the camera wrote.
        orientation = im.info["original_orientation"] or orientation
    elif orientation in _ROTATED:
        width, height = height, width
    meta: dict[str, Any] = {
        "format": im.format,
        "width": width,
        "height": height,
        "mode": im.mode,
        "exif": {
            "make": _text(exif.get(ExifTags.Base.Make)),
            "model": _text(exif.get(ExifTags.Base.Model)),
            "taken_at": _text(sub.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)),
            "orientation": int(orientation) if orientation else None,
        },
    }
    if include_gps:
        meta["exif"]["gps"] = _gps(exif)
    return meta


# --- content decides the format, never the file name ---
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"mif1", b"msf1", b"mif2", b"miaf"}


def _magic_media_type(data: bytes) -> str | None:
    """The media type the first bytes announce (without checking that the rest is readable)."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:2] == b"BM" and len(data) >= 26:
        return "image/bmp"
    if data[4:8] == b"ftyp":  # ISO base media file: the brands say which
        size = int.from_bytes(data[:4], "big")
        major = data[8:12]
        brands = {major} | {data[i:i + 4] for i in range(16, min(size, 256, len(data)) - 3, 4)}
        for kind, wanted in (("image/avif", _AVIF_BRANDS), ("image/heic", _HEIC_BRANDS)):
            if major in wanted:
                return kind
        for kind, wanted in (("image/avif", _AVIF_BRANDS), ("image/heic", _HEIC_BRANDS),
                             ("image/heif", _HEIF_BRANDS)):
            if brands & wanted:
                return kind
    return None


def sniff_media_type(data: bytes) -> str | None:
    """The image media type of ``data`` from its content (magic bytes, then Pillow's own
    identification for the other formats it reads); None if it is not an image Pillow knows."""
    found = _magic_media_type(data)
    if found or not data:
        return found
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return Image.MIME.get(im.format or "") or (f"image/x-{im.format.lower()}" if im.format else None)
    except Exception:  # any failure to identify means: not an image we know
        return None


class PillowImageProcessor:
    """Parameters: max_pixels (refuse larger images before decoding), include_gps."""

    def __init__(self, max_pixels: int = 50_000_000, *, include_gps: bool = False) -> None:
        self.max_pixels = max_pixels
        self.include_gps = include_gps

    def open_checked(self, data: bytes) -> Image.Image:
        """Open (header only) and refuse non-images and decompression bombs."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            announced = _magic_media_type(data)
            if announced is None:
                raise InvalidImage("not an image: the format is not recognised") from None
            if announced in ("image/heic", "image/heif") and pillow_heif is None:  # pragma: no cover
                raise InvalidImage(f"{announced} content, but pillow-heif is not installed") from None
            raise InvalidImage(f"not a readable image: {announced} content, truncated, corrupt or "
                               "beyond the decoder's limits") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise InvalidImage(f"decompression bomb refused: {exc}") from None
        except MemoryError:
            raise
        except Exception as exc:  # a decoder plugin failing on hostile bytes, whatever it raises
            raise InvalidImage(f"not a readable image: {type(exc).__name__}: {exc}") from None
        w, h = im.size
        if w * h > self.max_pixels:
            raise InvalidImage(
                f"image has {w}x{h} = {w * h} pixels, above the limit of {self.max_pixels}"
            )
        if w <= 0 or h <= 0:
            raise InvalidImage("image has no pixels")
        return im

    def decode(self, data: bytes, *, longest_side: int | None = None) -> tuple[Image.Image, dict[str, Any]]:
        """Decode to an upright sRGB RGB/RGBA image, at reduced scale when ``longest_side`` allows.

        Errors: InvalidImage (permanent) for bytes that are not an image or cannot be decoded,
        whatever the decoder raised; an unusable colour profile is not an error (see to_srgb).
        """
        im = self.open_checked(data)
        try:
            meta = extract_metadata(im, include_gps=self.include_gps)
        except MemoryError:
            raise
        except Exception as exc:  # unreadable EXIF: keep the pixels, say what was lost
            log.warning("image metadata unreadable: %s: %s", type(exc).__name__, exc)
            meta = {"format": im.format, "width": im.width, "height": im.height, "mode": im.mode, "exif": {},
                    "exif_error": f"{type(exc).__name__}: {exc}"}
        icc = im.info.get("icc_profile") or None  # read before draft/load, which may replace info
        try:
            if longest_side and im.format in ("JPEG", "HEIF"):
                # JPEG: draft() picks the largest 1/2, 1/4 or 1/8 scale still >= the request.
                # HEIF: the smallest embedded thumbnail >= the request, if the file has one.
                im.draft("RGB", (longest_side, longest_side))
            im.load()
            im = ImageOps.exif_transpose(im)
            im = to_8bit(im, source_format=im.format or meta["format"])
            if longest_side:
                im = reduce_for(im, longest_side)
        except MemoryError:
            raise
        except Exception as exc:  # OSError, ValueError, RuntimeError (libavif, libheif), SyntaxError...
            raise InvalidImage(f"image cannot be decoded: {type(exc).__name__}: {exc}") from None
        im, colour = to_srgb(im, icc)
        meta.update(colour)
        return im, meta

    def render(self, data: bytes, sizes: Sequence[int], fmt: str, quality: int) -> RenderedImage:
        if fmt not in ("webp", "jpeg"):
            raise ValueError(f"unsupported thumbnail format {fmt!r}")
        wanted = sorted(set(sizes), reverse=True)
        im, meta = self.decode(data, longest_side=wanted[0])
        thumbs = []
        current = im
        for size in wanted:
            # Derive each size from the previous (larger) one: far less work than from the original.
            thumb = current.copy()
            thumb.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
            current = thumb
            thumbs.append(
                RenderedThumbnail(size, self.encode(thumb, fmt, quality), thumb.width, thumb.height, fmt)
            )
        thumbs.reverse()
        return RenderedImage(thumbnails=thumbs, metadata=meta)

    @staticmethod
    def encode(im: Image.Image, fmt: str, quality: int) -> bytes:
        buf = io.BytesIO()
        if fmt == "jpeg":
            if im.mode == "RGBA":
                background = Image.new("RGB", im.size, (255, 255, 255))
                background.paste(im, mask=im.getchannel("A"))
                im = background
            im.save(buf, "JPEG", quality=quality)
        else:
            im.save(buf, "WEBP", quality=quality, method=4)
        return buf.getvalue()
