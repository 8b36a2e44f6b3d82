"""images and thumbnails

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("original_key", sa.String(1024), nullable=False),
        sa.Column("content_type", sa.String(255)),
        sa.Column("owner", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_images_status", "images", ["status"])
    op.create_table(
        "thumbnails",
        sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("size", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("byte_size", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("thumbnails")
    op.drop_index("ix_images_status", table_name="images")
    op.drop_table("images")
