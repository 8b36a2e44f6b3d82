import subprocess
import sys

import pytest

from bootstrap.settings import ConfigError, load_settings
from tests import services


def test_defaults_are_the_embedded_setup(monkeypatch):
    for var in ("BROKER_URL", "DATABASE_URL", "MINIO_ENDPOINT", "REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.broker_kind == "stub"
    assert s.database_url.startswith("sqlite:///")
    assert s.minio_endpoint is None
    assert s.thumbnail_sizes == (128, 256, 512)


def test_lists_and_urls_are_parsed(monkeypatch):
    monkeypatch.setenv("THUMBNAIL_SIZES", "512, 64,256")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/atelier")
    monkeypatch.setenv("BROKER_URL", "redis://r:6379/0")
    monkeypatch.delenv("REDIS_URL", raising=False)
    s = load_settings()
    assert s.thumbnail_sizes == (64, 256, 512)
    assert s.database_url == "postgresql+psycopg://u@db/atelier"
    assert s.redis_url == "redis://r:6379/0"  # state shares the broker's Redis by default
    assert s.broker_kind == "redis"


@pytest.mark.parametrize("var,value", [
    ("BROKER_URL", "kafka://x"),
    ("THUMBNAIL_SIZES", "big"),
    ("THUMBNAIL_FORMAT", "gif"),
    ("MINIO_SECURE", "maybe"),
    ("DATABASE_URL", "mysql://x/y"),
    ("MAX_IMAGE_PIXELS", "-1"),
    ("LOG_FORMAT", "xml"),
])
def test_bad_value_names_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith(f"configuration error: {var}:")
    assert info.value.code == 2


def test_cli_start_up_stops_with_one_line(tmp_path):
    env = services.subprocess_env(THUMBNAIL_QUALITY="300")
    result = subprocess.run([sys.executable, "-m", "entrypoints.cli", "migrate"], env=env, capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: THUMBNAIL_QUALITY:"), result.stderr


def test_retry_backoff_stays_below_rabbitmqs_consumer_timeout(monkeypatch):
    monkeypatch.setenv("RETRY_MAX_BACKOFF_MS", "3600000")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.message.startswith("configuration error: RETRY_MAX_BACKOFF_MS:")
    monkeypatch.setenv("RETRY_MAX_BACKOFF_MS", "900000")
    assert load_settings().retry_max_backoff_ms == 900_000
