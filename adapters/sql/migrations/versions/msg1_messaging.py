"""messaging: outbound messages and their per-channel deliveries

Revision ID: msg1
Revises: upl1
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "msg1"
down_revision = "upl1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbound_messages",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("conversation_id", sa.String(255)),
        sa.Column("sender", sa.String(255)),
        sa.Column("recipient", sa.String(255), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("text", sa.Text),
        sa.Column("media_url", sa.String(2048)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_outbound_messages_conversation_id", "outbound_messages", ["conversation_id"])
    op.create_index("ix_outbound_messages_status", "outbound_messages", ["status"])
    op.create_table(
        "message_deliveries",
        sa.Column("message_id", sa.String(36), sa.ForeignKey("outbound_messages.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("provider_message_id", sa.String(255)),
        sa.Column("last_error", sa.Text),
        # A run's lease on the delivery while it calls the channel (see MessagingService.deliver).
        sa.Column("sending_until", sa.DateTime(timezone=True)),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Delivery reports name the channel's message id.
    op.create_index("ix_message_deliveries_provider", "message_deliveries", ["channel", "provider_message_id"])
    # The pending-deliveries gauge.
    op.create_index("ix_message_deliveries_status", "message_deliveries", ["status", "channel"])


def downgrade() -> None:
    op.drop_index("ix_message_deliveries_status", table_name="message_deliveries")
    op.drop_index("ix_message_deliveries_provider", table_name="message_deliveries")
    op.drop_table("message_deliveries")
    op.drop_index("ix_outbound_messages_status", table_name="outbound_messages")
    op.drop_index("ix_outbound_messages_conversation_id", table_name="outbound_messages")
    op.drop_table("outbound_messages")
