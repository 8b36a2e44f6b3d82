"""Table definitions. Alembic migrations in migrations/versions are the source of truth
for the schema; these must match them (a test compares the two)."""

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

images = Table(
    "images",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("original_key", String(1024), nullable=False),
    Column("content_type", String(255)),
    Column("owner", String(255)),
    Column("status", String(16), nullable=False, index=True),
    Column("failure_reason", Text),
    Column("metadata", JSON, nullable=False, default=dict),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

thumbnails = Table(
    "thumbnails",
    metadata,
    Column("image_id", String(36), ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("size", Integer, primary_key=True),
    Column("key", String(1024), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("format", String(16), nullable=False),
    Column("byte_size", Integer, nullable=False),
)

# The transactional outbox: events commit with the state change that caused them.
outbox_events = Table(
    "outbox_events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("type", String(128), nullable=False),
    Column("aggregate_type", String(64), nullable=False),
    Column("aggregate_id", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("correlation_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("dead", Boolean, nullable=False, default=False),
)

# Undelivered events by due time: the relay's claim (migration obx1; PostgreSQL adds a NOTIFY trigger).
Index("ix_outbox_pending", outbox_events.c.next_attempt_at,
      postgresql_where=text("published_at IS NULL AND dead = false"),
      sqlite_where=text("published_at IS NULL AND dead = 0"))

# --- dead letters ---
# Messages that failed for good (middleware/deadletters.py); `atelier dlq` lists and replays them.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("message_id", String(64), nullable=False),
    Column("actor", String(255), nullable=False, index=True),
    Column("queue", String(255), nullable=False),
    Column("args", JSON, nullable=False),
    Column("kwargs", JSON, nullable=False),
    Column("options", JSON, nullable=False),
    Column("error_type", String(255), nullable=False),
    Column("error", Text, nullable=False),
    Column("traceback", Text, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("correlation_id", String(64), index=True),
    Column("enqueued_at", DateTime(timezone=True), nullable=False),
    Column("failed_at", DateTime(timezone=True), nullable=False, index=True),
    Column("replayed_at", DateTime(timezone=True)),
    Column("replay_message_id", String(64)),
    # One letter per failure: a redelivered failure (crash after the write) is not stored twice.
    UniqueConstraint("message_id", "attempts", name="uq_dead_letters_message_attempt"),
)
