from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services


@pytest.fixture(params=sorted(services.BROKERS))
def broker_env(request, base_env, pg_test_url, s3_server) -> Iterator[dict[str, str]]:
    """Environment for a real worker and producer: a real broker (Redis, then RabbitMQ),
    PostgreSQL, and moto's S3 server; queues and bucket unique to the test."""
    env = dict(base_env)
    env.update({
        "BROKER_URL": services.BROKERS[request.param],
        "DATABASE_URL": pg_test_url,
        "MINIO_ENDPOINT": s3_server,
        "MINIO_ACCESS_KEY": "testing",
        "MINIO_SECRET_KEY": "testing",
        "MINIO_REGION": "us-east-1",
        "MINIO_BUCKET": services.unique("e2e-"),
        "RETRY_MIN_BACKOFF_MS": "100",
        "RETRY_MAX_BACKOFF_MS": "1000",
        # Dedup windows and circuit breakers keep their state in Redis whatever the broker.
        "REDIS_URL": services.REDIS_URL,
    })
    yield env
    services.purge_queues(env["BROKER_URL"], env["QUEUE_PREFIX"], ("media", "default", "fallback"))


@pytest.fixture(scope="session")
def phone_photos():  # type: ignore[no-untyped-def]
    """What phones write (made once: x265 takes a second): a HEIC as an iPhone's (Display P3, EXIF
    orientation 6, camera fields) and an AVIF (Display P3, orientation 8). tests/imaging_support.py
    has each one's sRGB reference."""
    from tests.imaging_support import camera_exif, phone_photo

    return {
        "heic": phone_photo("HEIF", camera_exif("Apple", "iPhone 15 Pro", 6, "2025:06:01 12:30:00")),
        "avif": phone_photo("AVIF", camera_exif("Google", "Pixel 9", 8, "2025:07:02 08:15:00")),
    }
