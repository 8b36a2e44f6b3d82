"""uploads and upload_chunks

Revision ID: upl1
Revises: obx1
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "upl1"
down_revision = "obx1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(255)),
        sa.Column("owner", sa.String(255)),
        sa.Column("total_chunks", sa.Integer, nullable=False),
        sa.Column("expected_size", sa.BigInteger),
        sa.Column("expected_sha256", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text),
        sa.Column("final_key", sa.String(1024)),
        sa.Column("size", sa.BigInteger),
        sa.Column("sha256", sa.String(64)),
        sa.Column("image_id", sa.String(36)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
    )
    # The collector's claim: UPLOADING rows idle since a cut-off.
    op.create_index("ix_uploads_status_updated", "uploads", ["status", "updated_at"])
    op.create_table(
        "upload_chunks",
        sa.Column("upload_id", sa.String(36), sa.ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("etag", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upload_chunks")
    op.drop_index("ix_uploads_status_updated", table_name="uploads")
    op.drop_table("uploads")
