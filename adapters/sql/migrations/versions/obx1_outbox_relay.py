"""outbox relay: partial index of due events, NOTIFY on insert (PostgreSQL)

Revision ID: obx1
Revises: 0002
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "obx1"
down_revision = "0002"
branch_labels = None
depends_on = None

# The relay loop LISTENs on this channel; the trigger fires in the inserting transaction, so
# PostgreSQL delivers the notification only once that transaction commits.
NOTIFY_CHANNEL = "atelier_outbox"


def upgrade() -> None:
    # Only undelivered rows are indexed: the claim query stays fast however many events were
    # published.
    op.create_index("ix_outbox_pending", "outbox_events", ["next_attempt_at"],
                    postgresql_where=sa.text("published_at IS NULL AND dead = false"),
                    sqlite_where=sa.text("published_at IS NULL AND dead = 0"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION atelier_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
                RETURN NULL;
            END $$;
        """)
        # Per statement: a bulk insert sends one notification, and identical notifications in
        # one transaction are folded into one by PostgreSQL.
        op.execute("""
            CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events
            FOR EACH STATEMENT EXECUTE FUNCTION atelier_outbox_notify();
        """)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS outbox_events_notify ON outbox_events")
        op.execute("DROP FUNCTION IF EXISTS atelier_outbox_notify()")
    op.drop_index("ix_outbox_pending", table_name="outbox_events")
