"""Broker, retries, storage of record, object store and logs: what every capability runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bootstrap.settings.base import Group


class CoreSettings(Group):
    broker_url: str = Field("stub://", description="redis://, rediss://, amqp://, amqps:// or stub:// (in-process).")
    # A worker beats its heartbeat with every fetch, at least once per worker timeout (1 s by default).
    broker_heartbeat_timeout_ms: int = Field(
        60_000, ge=3_000, le=86_400_000,
        description="Redis broker: a worker process silent this long is taken for dead, and the messages it had "
                    "fetched go back to their queues (within a few seconds more). Longer than any stall of a live "
                    "worker; ignored on RabbitMQ.")
    queue_prefix: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$",
                              description="Prefix of every queue name, so runs and tenants can share a broker.")
    redis_url: str | None = Field(None, description="Redis for shared state (dedup, breakers, metrics); "
                                  "defaults to BROKER_URL when that is Redis; required with RabbitMQ.")
    retry_max_retries: int = Field(10, ge=0, description="Retries of a transient failure (actors may override).")
    retry_min_backoff_ms: int = Field(1000, ge=1, description="First retry delay; exponential with jitter.")
    # At most 15 minutes: RabbitMQ redelivers a delayed message its consumer holds past the server's
    # consumer_timeout (30 minutes by default), which would run it twice (brokers/park.py caps too).
    retry_max_backoff_ms: int = Field(300_000, ge=1, le=900_000, description="Longest retry delay (at most 15 min).")
    rabbitmq_consumer_timeout_s: float = Field(
        1800, gt=0,
        description="RabbitMQ's consumer_timeout (rabbitmq.conf; 30 min by default): a delivery left unacked longer "
                    "is taken back and its channel closed. A RabbitMQ worker refuses to start if an actor's time "
                    "limit (plus 5 min) or a delay it holds messages for (plus 1 min) would not fit.")
    database_url: str = Field("sqlite:///var/atelier.db", description="postgresql:// or sqlite:// database of record.")
    minio_endpoint: str | None = Field(None, description="host:port of MinIO/S3; unset = a local directory.")
    minio_access_key: str = Field("minioadmin", description="MinIO/S3 access key.")
    minio_secret_key: str = Field("minioadmin", description="MinIO/S3 secret key.")
    minio_bucket: str = Field("atelier", min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+$",
                              description="Bucket for images, thumbnails and uploads.")
    minio_secure: bool = Field(False, description="Use HTTPS to MinIO/S3.")
    minio_region: str | None = Field(None, description="S3 region, if the server needs one.")
    local_store_dir: Path = Field(Path("var/objects"),
                                  description="Object store directory when MINIO_ENDPOINT is unset.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field("INFO", description="Log level.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="json lines, console, or auto (console on a terminal, else json).")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "amqp://", "amqps://", "stub://")):
            raise ValueError("must start with redis://, rediss://, amqp://, amqps:// or stub://")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("is not a SQLAlchemy database URL") from None
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise ValueError("must be a postgresql:// or sqlite:// URL")
        if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
            # psycopg 3 is the driver we ship; plain postgresql:// would pick psycopg2.
            value = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _redis_default(self) -> CoreSettings:
        # A Redis broker already gives us a Redis: share it for state unless told otherwise.
        if self.redis_url is None and self.broker_url.startswith(("redis://", "rediss://")):
            self.redis_url = self.broker_url
        return self

    @property
    def broker_kind(self) -> str:
        """'redis', 'rabbitmq' or 'stub'."""
        scheme = self.broker_url.split("://", 1)[0]
        return {"rediss": "redis", "amqp": "rabbitmq", "amqps": "rabbitmq"}.get(scheme, scheme)

