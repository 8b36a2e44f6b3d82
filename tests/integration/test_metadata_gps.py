"""GPS EXIF is private: left out of the metadata unless METADATA_INCLUDE_GPS is set."""

import io

from PIL import Image

from bootstrap import Container
from bootstrap.settings import load_settings


def _jpeg_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Atelier"
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 1.5), 3: "E", 4: (4.0, 53.0, 30.0)}
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 30, 30)).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_gps_only_when_configured(monkeypatch):
    data = _jpeg_with_gps()
    monkeypatch.delenv("METADATA_INCLUDE_GPS", raising=False)
    private = Container(load_settings()).imaging.render(data, (128,), "webp", 80).metadata
    assert private["exif"]["make"] == "Atelier" and "gps" not in private["exif"]
    assert "52" not in repr(private)

    monkeypatch.setenv("METADATA_INCLUDE_GPS", "true")
    shared = Container(load_settings()).imaging.render(data, (128,), "webp", 80).metadata
    gps = shared["exif"]["gps"]
    assert gps["GPSLatitudeRef"] == "N" and gps["GPSLatitude"] == [52.0, 22.0, 1.5]
    assert gps["GPSLongitudeRef"] == "E"
