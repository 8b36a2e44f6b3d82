"""Generated sample images for the demo, tests and benchmarks (no data sets to download)."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw


def make_image(width: int = 640, height: int = 480, *, seed: int = 0, fmt: str = "JPEG",
               orientation: int | None = None, mode: str = "RGB", make: str | None = None,
               model: str | None = None, quality: int = 90) -> bytes:
    """A deterministic picture: a colour gradient with a few shapes, as encoded bytes."""
    rnd = random.Random(seed)
    base = Image.linear_gradient("L").resize((width, height))
    r, g = base, base.rotate(90).resize((width, height))
    b = Image.new("L", (width, height), rnd.randrange(256))
    im = Image.merge("RGB", (r, g, b))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rnd.randrange(width), rnd.randrange(height)
        x1, y1 = x0 + rnd.randrange(width // 3 + 1), y0 + rnd.randrange(height // 3 + 1)
        colour = tuple(rnd.randrange(256) for _ in range(3))
        if rnd.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(Image.linear_gradient("L").resize((width, height)))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    buf = io.BytesIO()
    kwargs: dict = {"exif": exif.tobytes()} if len(exif) else {}
    if fmt == "JPEG":
        kwargs["quality"] = quality
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()
