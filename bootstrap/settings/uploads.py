"""Chunked uploads: merging and collecting abandoned ones."""

from __future__ import annotations

from pydantic import Field

from bootstrap.settings.base import Group


class UploadSettings(Group):
    gc_retention_hours: float = Field(24.0, gt=0, description="An UPLOADING upload idle this long is abandoned.")
    gc_batch_size: int = Field(100, ge=1, le=10_000, description="Uploads collected per transaction.")
    upload_url_expiry_s: int = Field(3600, ge=1, le=604_800,
                                     description="Presigned download URL lifetime (S3 max: 7 days).")
