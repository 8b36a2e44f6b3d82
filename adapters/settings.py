"""Configuration from environment variables (pydantic-settings).

A bad value stops start-up with one line naming the variable: see ``load_settings``.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ConfigError(SystemExit):
    """Raised with a one-line message naming the bad variable; exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Messaging
    broker_url: str = "stub://"
    queue_prefix: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$")
    redis_url: str | None = None
    # Retries (Dramatiq's exponential backoff with jitter); actors may override.
    retry_max_retries: int = Field(10, ge=0)
    retry_min_backoff_ms: int = Field(1000, ge=1)
    # At most 15 minutes: RabbitMQ redelivers a delayed message its consumer holds past the server's
    # consumer_timeout (30 minutes by default), which would run it twice (middleware/park.py caps too).
    retry_max_backoff_ms: int = Field(300_000, ge=1, le=900_000)

    # Storage of record
    database_url: str = "sqlite:///var/atelier.db"

    # Object store: MinIO/S3 when MINIO_ENDPOINT is set, else a local directory.
    minio_endpoint: str | None = None
    minio_access_key: str = "minioadmin"
    minio_secret_key: str = "minioadmin"
    minio_bucket: str = Field("atelier", min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+$")
    minio_secure: bool = False
    minio_region: str | None = None
    local_store_dir: Path = Path("var/objects")

    # Media
    thumbnail_sizes: Annotated[tuple[int, ...], NoDecode] = (128, 256, 512)
    thumbnail_format: Literal["webp", "jpeg"] = "webp"
    thumbnail_quality: int = Field(80, ge=1, le=100)
    max_image_pixels: int = Field(50_000_000, gt=0)

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    # --- operations ---
    # HTTP basic auth (both set) and/or a bearer token protect every ops endpoint but /healthz.
    ops_username: str | None = None
    ops_password: str | None = None
    ops_token: str | None = Field(None, min_length=16)
    # Each readiness check gets this long before it counts as failed.
    ops_check_timeout_s: float = Field(2.0, gt=0, le=60)
    # Where /dashboard points when the broker is RabbitMQ (default: the broker host, port 15672).
    rabbitmq_management_url: str | None = None

    # --- outbox ---
    outbox_batch_size: int = Field(100, ge=1, le=10_000)  # events claimed per relay transaction
    outbox_max_retries: int = Field(3, ge=0)  # failed relays of one event before it is marked dead
    outbox_backoff_ms: int = Field(1000, ge=1)  # first retry delay; doubles per attempt
    outbox_poll_interval_ms: int = Field(500, ge=10)  # relay_outbox tick and the relay loop's poll
    outbox_relay_budget_ms: int = Field(5000, ge=10)  # one relay run stops claiming after this
    outbox_dedup_window: int = Field(86_400, ge=1)  # seconds a subscriber's dedup key is remembered
    outbox_relay_loop: bool = True  # `python -m schedules` also runs the low-latency relay loop

    # --- scheduler ---
    gc_cron: str = "0 2 * * *"  # collect_abandoned_uploads, crontab syntax, UTC
    fallback_poll_interval: float = Field(10.0, gt=0)  # seconds between drain_fallback ticks

    # --- uploads ---
    gc_retention_hours: float = Field(24.0, gt=0)  # an UPLOADING upload idle this long is abandoned
    gc_batch_size: int = Field(100, ge=1, le=10_000)  # uploads collected per transaction
    upload_url_expiry_s: int = Field(3600, ge=1, le=604_800)  # presigned download URLs (S3 max: 7 days)
    # --- messaging ---
    # Chat channel APIs (the defaults are Meta's; compose points them at the mock channels).
    whatsapp_base_url: str = "https://graph.facebook.com/v21.0"
    whatsapp_token: str | None = None
    whatsapp_phone_number_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$")
    instagram_base_url: str = "https://graph.instagram.com/v21.0"
    instagram_token: str | None = None
    channel_timeout_s: float = Field(10.0, gt=0, le=300)  # connect/read/write timeout of one channel call
    # How long a delivery stays claimed by the run sending it; a run that died mid-send blocks its
    # delivery this long before another run takes over. Keep it above the longest channel call.
    message_send_lease_s: float = Field(60.0, gt=0)
    # Delivery-status webhooks (`atelier messages webhooks`): Meta's verification token and the app
    # secret that signs each POST (X-Hub-Signature-256); unset secret = signatures not checked.
    channel_webhook_verify_token: str | None = None
    channel_webhook_secret: str | None = None
    # --- middleware ---
    dedup_default_window: int = Field(86_400, ge=1)  # seconds, for actors that give a key but no window
    circuit_failure_threshold: int = Field(5, ge=1)  # dependency failures within the window that open it
    circuit_window_s: float = Field(60.0, gt=0)  # seconds over which failures are counted
    circuit_reset_timeout_s: float = Field(30.0, gt=0)  # open this long, then half-open
    circuit_half_open_trials: int = Field(1, ge=1)  # messages let through while half-open
    fallback_batch_size: int = Field(50, ge=1, le=10_000)  # parked messages one drain moves per circuit
    dlq_replay_dedup_window: int = Field(86_400, ge=1)  # seconds a replayed letter's key is remembered
    # --- media: metadata, embeddings, search ---
    metadata_include_gps: bool = False  # privacy: GPS EXIF is left out unless asked for
    clip_model: str = Field("ViT-B-32", min_length=1)  # an open_clip model name
    # A pretrained tag (downloaded to the Hugging Face cache on first load), a checkpoint file,
    # or "random" (random weights: tests and benchmarks only, the embeddings mean nothing).
    clip_pretrained: str = Field("laion2b_s34b_b79k", min_length=1)
    # The tag a CLIP_PRETRAINED file was published under: its normalisation and quick_gelu apply.
    clip_pretrained_tag: str | None = None
    clip_model_config: Path | None = None  # extra open_clip model config (a JSON file or a folder of them)
    clip_device: Literal["cpu", "cuda"] = "cpu"
    clip_torch_threads: int = Field(0, ge=0, le=512)  # torch intra-op threads; 0 = torch's default
    embed_batch_max_size: int = Field(16, ge=1, le=1024)  # 1 = no batching, one model call per message
    embed_batch_max_wait_ms: float = Field(50.0, ge=0, le=10_000)  # how long a batch waits to fill
    qdrant_url: str | None = None  # a Qdrant server; unset = embedded local mode at QDRANT_PATH
    qdrant_api_key: str | None = None
    qdrant_path: Path = Path("var/qdrant")
    qdrant_collection: str = Field("atelier_images", pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    qdrant_timeout_s: float = Field(10.0, gt=0, le=600)

    @field_validator("gc_cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"must be a crontab expression like '0 2 * * *' ({exc})") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("thumbnail_sizes", mode="before")
    @classmethod
    def _parse_sizes(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                value = tuple(int(p) for p in parts)
            except ValueError:
                raise ValueError("must be a comma-separated list of integers, e.g. 128,256,512") from None
        return value

    @field_validator("thumbnail_sizes")
    @classmethod
    def _check_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("needs at least one size")
        if any(s < 8 or s > 8192 for s in value):
            raise ValueError("each size must be between 8 and 8192")
        return tuple(sorted(set(value)))

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

    @field_validator("ops_username", "ops_password", "ops_token", "rabbitmq_management_url",
                     "clip_pretrained_tag", "clip_model_config", "qdrant_url", "qdrant_api_key",
                     "whatsapp_token", "whatsapp_phone_number_id", "instagram_token",
                     "channel_webhook_verify_token", "channel_webhook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose passes unset variables as empty strings.
        return None if value == "" else value

    @field_validator("qdrant_url")
    @classmethod
    def _check_qdrant_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _ops_auth_pair(self) -> Settings:
        if (self.ops_username is None) != (self.ops_password is None):
            missing = "OPS_PASSWORD" if self.ops_password is None else "OPS_USERNAME"
            raise ValueError(f"{missing} must be set too: basic auth needs OPS_USERNAME and OPS_PASSWORD")
        return self

    @model_validator(mode="after")
    def _redis_default(self) -> Settings:
        # A Redis broker already gives us a Redis: share it for state unless told otherwise.
        if self.redis_url is None and self.broker_url.startswith(("redis://", "rediss://")):
            self.redis_url = self.broker_url
        return self

    # --- messaging ---
    @field_validator("whatsapp_base_url", "instagram_base_url")
    @classmethod
    def _check_channel_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> Settings:
        if self.message_send_lease_s <= self.channel_timeout_s:
            raise ValueError(f"MESSAGE_SEND_LEASE_S ({self.message_send_lease_s:g}) must be longer than "
                             f"CHANNEL_TIMEOUT_S ({self.channel_timeout_s:g})")
        return self

    @property
    def breaker_policy(self):  # type: ignore[no-untyped-def]
        """The circuit breakers' defaults (actors may override them)."""
        from domain.resilience import BreakerPolicy

        return BreakerPolicy(failure_threshold=self.circuit_failure_threshold,
                             window_ms=int(self.circuit_window_s * 1000),
                             reset_timeout_ms=int(self.circuit_reset_timeout_s * 1000),
                             half_open_trials=self.circuit_half_open_trials)

    @property
    def broker_kind(self) -> str:
        """'redis', 'rabbitmq' or 'stub'."""
        scheme = self.broker_url.split("://", 1)[0]
        return {"rediss": "redis", "amqp": "rabbitmq", "amqps": "rabbitmq"}.get(scheme, scheme)


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    name = str(err["loc"][0]).upper() if err["loc"] else "configuration"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float) and not any(
        word in name for word in ("SECRET", "PASSWORD", "TOKEN")) else ""
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"configuration error: {name}: {msg}{shown}{more}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ConfigError naming the variable on a bad value."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; a bad value prints one line to stderr and exits 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        raise
