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


# --- media: thumbnails benchmark and quality test ---
def make_photo(width: int = 4000, height: int = 3000, *, seed: int = 0, quality: int = 90) -> bytes:
    """A photo-sized JPEG with fine detail everywhere (noise and a fractal over the gradient), so
    downscaling shortcuts show up in a pixel comparison; 4000x3000 is a 12-megapixel camera."""
    base = Image.open(io.BytesIO(make_image(width, height, seed=seed, quality=100))).convert("RGB")
    noise = Image.effect_noise((width, height), 40 + seed % 20).convert("RGB")
    fractal = Image.effect_mandelbrot((width, height), (-2.0 + 0.01 * seed, -1.2, 1.0, 1.2), 64).convert("RGB")
    im = Image.blend(Image.blend(base, noise, 0.25), fractal, 0.25)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
