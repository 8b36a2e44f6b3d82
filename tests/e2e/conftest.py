from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services


@pytest.fixture(params=sorted(services.BROKERS))
def broker_env(request, base_env, pg_url, s3_server) -> Iterator[dict[str, str]]:
    """Environment for a real worker and producer: a real broker (Redis, then RabbitMQ),
    PostgreSQL, and moto's S3 server; queues and bucket unique to the test."""
    env = dict(base_env)
    env.update({
        "BROKER_URL": services.BROKERS[request.param],
        "DATABASE_URL": pg_url,
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
