"""dead_letters: messages that failed for good, queryable and replayable

Revision ID: dlq1
Revises: msg1
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "dlq1"
down_revision = "msg1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("kwargs", sa.JSON, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("error_type", sa.String(255), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("traceback", sa.Text, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("correlation_id", sa.String(64)),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True)),
        sa.Column("replay_message_id", sa.String(64)),
        sa.UniqueConstraint("message_id", "attempts", name="uq_dead_letters_message_attempt"),
    )
    op.create_index("ix_dead_letters_actor", "dead_letters", ["actor"])
    op.create_index("ix_dead_letters_correlation_id", "dead_letters", ["correlation_id"])
    op.create_index("ix_dead_letters_failed_at", "dead_letters", ["failed_at"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_failed_at", table_name="dead_letters")
    op.drop_index("ix_dead_letters_correlation_id", table_name="dead_letters")
    op.drop_index("ix_dead_letters_actor", table_name="dead_letters")
    op.drop_table("dead_letters")
