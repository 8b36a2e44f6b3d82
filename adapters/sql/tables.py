"""Table definitions. Alembic migrations in migrations/versions are the source of truth
for the schema; these must match them (a test compares the two)."""

from sqlalchemy import (
    JSON,
    BigInteger,
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
    # The recording transaction's W3C trace context (migration trc1); NULL when it was not traced.
    Column("trace_context", JSON(none_as_null=True)),
)

# Undelivered events by due time: the relay's claim (migration obx1; PostgreSQL adds a NOTIFY trigger).
Index("ix_outbox_pending", outbox_events.c.next_attempt_at,
      postgresql_where=text("published_at IS NULL AND dead = false"),
      sqlite_where=text("published_at IS NULL AND dead = 0"))

# --- uploads ---
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(255)),
    Column("owner", String(255)),
    Column("total_chunks", Integer, nullable=False),
    Column("expected_size", BigInteger),
    Column("expected_sha256", String(64)),
    Column("status", String(16), nullable=False),
    Column("failure_reason", Text),
    Column("final_key", String(1024)),
    Column("size", BigInteger),
    Column("sha256", String(64)),
    Column("image_id", String(36)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
)
# The collector's query: UPLOADING rows by last activity.
Index("ix_uploads_status_updated", uploads.c.status, uploads.c.updated_at)

upload_chunks = Table(
    "upload_chunks",
    metadata,
    Column("upload_id", String(36), ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("key", String(1024), nullable=False),
    Column("etag", String(128)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# --- messaging ---
# Outbound chat messages (migration msg1) and their deliveries, one per channel.
outbound_messages = Table(
    "outbound_messages",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("conversation_id", String(255), index=True),
    Column("sender", String(255)),
    Column("recipient", String(255), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("text", Text),
    Column("media_url", String(2048)),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # A WhatsApp template {"name", "language", "components"} (migration mta1).
    Column("template", JSON),
)

message_deliveries = Table(
    "message_deliveries",
    metadata,
    Column("message_id", String(36), ForeignKey("outbound_messages.id", ondelete="CASCADE"), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("provider_message_id", String(255)),
    Column("last_error", Text),
    Column("sending_until", DateTime(timezone=True)),
    Column("sent_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("read_at", DateTime(timezone=True)),  # migration mta1
)

# Delivery reports name the channel's message id.
Index("ix_message_deliveries_provider", message_deliveries.c.channel, message_deliveries.c.provider_message_id)
# The pending-deliveries gauge (atelier_message_deliveries_pending).
Index("ix_message_deliveries_status", message_deliveries.c.status, message_deliveries.c.channel)
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
