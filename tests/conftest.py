from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import services


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    from adapters.sql.migrate import upgrade

    url = services.create_pg_database()
    upgrade(url)
    yield url
    services.drop_pg_database(url)


@pytest.fixture
def pg_test_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of this test's own: workers and producers of one
    end-to-end test share it, and nothing another test left due (an outbox event) reaches them."""
    from adapters.sql.migrate import upgrade

    url = services.create_pg_database()
    upgrade(url)
    yield url
    services.drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox_db(request: pytest.FixtureRequest) -> str:
    """SQLite, then a PostgreSQL database of the test's own: a relay claims every due event in
    the table, so no other test's events may be there."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_test_url")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from adapters.sql.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'atelier.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; yields its host:port endpoint."""
    from moto.server import ThreadedMotoServer

    port = services.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def minio_store(s3_server: str):  # type: ignore[no-untyped-def]
    from adapters.objectstore.minio import MinioObjectStore, make_client

    client = make_client(s3_server, "testing", "testing", secure=False, region="us-east-1")
    return MinioObjectStore(client, services.unique("bucket-"))


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses: this checkout importable, JSON logs, a unique queue prefix."""
    return services.subprocess_env(
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        QUEUE_PREFIX=services.unique("t") + "_",
        LOCAL_STORE_DIR=str(tmp_path / "objects"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'atelier.db'}",
    )


@pytest.fixture
def redis_ns() -> Iterator[tuple[Any, str]]:
    """A client of the local Redis and a key namespace of this test's own, deleted afterwards."""
    import redis

    client = redis.Redis.from_url(services.REDIS_URL)
    ns = f"atelier:{services.unique('st')}_"
    yield client, ns
    keys = list(client.scan_iter(f"{ns}*"))
    if keys:
        client.delete(*keys)
    client.close()
