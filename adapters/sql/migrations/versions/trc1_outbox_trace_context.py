"""outbox events keep the trace context of the transaction that recorded them

Revision ID: trc1
Revises: mta1
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "trc1"
down_revision = "mta1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites nothing, and events recorded untraced keep NULL.
    op.add_column("outbox_events", sa.Column("trace_context", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:  # SQLite rebuilds the table
        batch.drop_column("trace_context")
