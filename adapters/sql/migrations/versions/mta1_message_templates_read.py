"""messaging: WhatsApp templates on outbound messages, read receipts on deliveries

Revision ID: mta1
Revises: dlq1
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "mta1"
down_revision = "dlq1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: existing rows are texts or images, and never read-reported.
    op.add_column("outbound_messages", sa.Column("template", sa.JSON))
    op.add_column("message_deliveries", sa.Column("read_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("message_deliveries") as batch:
        batch.drop_column("read_at")
    with op.batch_alter_table("outbound_messages") as batch:
        batch.drop_column("template")
