"""Thumbnails per second: atelier's Pillow processor against naive Pillow, in the same run.

    .venv/bin/python bench/thumbnails.py [--images 6] [--heic-images 3] [--rounds 3] [--sizes 128,256,512]

Inputs: generated 12-megapixel JPEGs (4000x3000, fine detail everywhere; entrypoints.samples.make_photo).
Both sides produce the same thing: every size, EXIF-upright, encoded as WebP quality 80.

Then a HEIC round: the first --heic-images pictures as an iPhone writes them (HEVC in 512x512 grid
tiles, a Display P3 profile, an embedded 320 thumbnail; pillow-heif's encoder); naive Pillow reads
them through the same pillow-heif plugin.

- naive: for every size, open the original, decode it fully, ``thumbnail()`` from the original.
- atelier: ``PillowImageProcessor.render``: one decode at reduced scale (JPEG draft mode), each
  smaller size from the next larger one, resizing with reducing_gap.

It also prints the mean absolute pixel difference (0-255) of each side's thumbnails against a
reference (full decode, LANCZOS straight from the original, no shortcuts), so speed is not
bought with bad thumbnails; for HEIC the reference is converted from the file's profile to sRGB
(ImageCms), which naive Pillow does not do. Rounds alternate the two sides; the best round counts.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageChops, ImageCms, ImageOps, ImageStat  # noqa: E402

from adapters.imaging import PillowImageProcessor  # noqa: E402
from entrypoints.samples import make_photo  # noqa: E402


def naive(data: bytes, sizes: list[int]) -> list[bytes]:
    out = []
    for size in sizes:
        im = Image.open(io.BytesIO(data))
        im.load()  # full decode
        im = ImageOps.exif_transpose(im)
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "WEBP", quality=80, method=4)
        out.append(buf.getvalue())
    return out


def atelier(proc: PillowImageProcessor, data: bytes, sizes: list[int]) -> list[bytes]:
    return [t.data for t in proc.render(data, sizes, "webp", 80).thumbnails]


def reference(data: bytes, size: int) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    icc = im.info.get("icc_profile")
    im = ImageOps.exif_transpose(im.convert("RGB"))
    if icc:
        im = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                       ImageCms.createProfile("sRGB"), outputMode="RGB")
    scale = size / max(im.size)
    target = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(target, Image.Resampling.LANCZOS)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    a, b = a.convert("RGB"), b.convert("RGB")
    if a.size != b.size:
        b = b.resize(a.size, Image.Resampling.LANCZOS)
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def timed(fn, inputs) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for data in inputs:
        fn(data)
    return len(inputs) / (time.perf_counter() - started)


def as_iphone_heic(jpeg: bytes, icc: bytes) -> bytes:
    """The picture as an iPhone stores it: HEVC in 512x512 grid tiles, a profile, a 320 thumbnail."""
    import pillow_heif

    pillow_heif.options.GRID_TILE_SIZE = 512
    try:
        heif = pillow_heif.from_pillow(Image.open(io.BytesIO(jpeg)))
        buf = io.BytesIO()
        heif.save(buf, quality=85, icc_profile=icc, thumbnails=[320])
    finally:
        pillow_heif.options.GRID_TILE_SIZE = 0
    return buf.getvalue()


def display_p3() -> bytes:
    """A Display P3 ICC profile: sRGB's curve, P3 primaries, D65 white (adapted to D50)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
    from test_image_fidelity import DISPLAY_P3_ICC

    return DISPLAY_P3_ICC


def compare(label: str, inputs: list[bytes], proc: PillowImageProcessor, sizes: list[int], rounds: int) -> None:
    best = {"naive": 0.0, "atelier": 0.0}
    for r in range(rounds):
        for name, fn in (("naive", lambda d: naive(d, sizes)), ("atelier", lambda d: atelier(proc, d, sizes))):
            rate = timed(fn, inputs)
            best[name] = max(best[name], rate)
            print(f"  {label} round {r + 1} {name:<8} {rate:6.2f} images/s")

    diffs: dict[str, list[float]] = {"naive": [], "atelier": []}
    for data in inputs[:2]:
        outputs = {"naive": naive(data, sizes), "atelier": atelier(proc, data, sizes)}
        for i, size in enumerate(sizes):
            ref = reference(data, size)
            for name, thumbs in outputs.items():
                diffs[name].append(mean_abs_diff(ref, Image.open(io.BytesIO(thumbs[i]))))

    print()
    print(f"| {label}: figure | naive Pillow | atelier | ratio |")
    print("|---|---|---|---|")
    print(f"| images/s (3 sizes each, best round) | {best['naive']:.2f} | {best['atelier']:.2f} | "
          f"{best['atelier'] / best['naive']:.2f}x |")
    print(f"| thumbnails/s | {best['naive'] * len(sizes):.1f} | {best['atelier'] * len(sizes):.1f} | |")
    print(f"| mean abs. pixel difference to reference (0-255), worst size | {max(diffs['naive']):.2f} | "
          f"{max(diffs['atelier']):.2f} | |")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--heic-images", type=int, default=3, help="0 skips the HEIC round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="128,256,512")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    proc = PillowImageProcessor()

    inputs = [make_photo(4000, 3000, seed=s) for s in range(args.images)]
    print(f"{args.images} JPEGs 4000x3000 (12 MP, {sum(map(len, inputs)) / len(inputs) / 1e6:.1f} MB each), "
          f"sizes {sizes}, WebP q80, {args.rounds} rounds")
    compare("JPEG 12 MP", inputs, proc, sizes, args.rounds)

    if args.heic_images:
        icc = display_p3()
        heics = [as_iphone_heic(data, icc) for data in inputs[:args.heic_images]]
        print(f"{len(heics)} HEICs 4000x3000 (12 MP, {sum(map(len, heics)) / len(heics) / 1e6:.1f} MB each: "
              f"512 grid tiles, Display P3, 320 thumbnail), same sizes")
        compare("HEIC 12 MP", heics, proc, sizes, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
