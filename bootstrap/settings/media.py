"""Media: thumbnails, metadata, CLIP embeddings and the vector index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from bootstrap.settings.base import Group, empty_is_unset


class MediaSettings(Group):
    thumbnail_sizes: Annotated[tuple[int, ...], NoDecode] = Field(
        (128, 256, 512), description="Thumbnail longest sides, comma-separated, each 8-8192.")
    thumbnail_format: Literal["webp", "jpeg"] = Field("webp", description="Thumbnail format.")
    thumbnail_quality: int = Field(80, ge=1, le=100, description="Thumbnail encoder quality.")
    max_image_pixels: int = Field(50_000_000, gt=0, description="Larger images are refused (decompression bombs).")
    metadata_include_gps: bool = Field(False, description="Keep GPS EXIF in metadata (privacy: off by default).")
    clip_model: str = Field("ViT-B-32", min_length=1, description="An open_clip model name.")
    clip_pretrained: str = Field(
        "laion2b_s34b_b79k", min_length=1,
        description="A pretrained tag (downloaded to the Hugging Face cache on first load), a checkpoint file, "
                    "or 'random' (tests and benchmarks only: the embeddings mean nothing).")
    clip_pretrained_tag: str | None = Field(
        None, description="The tag a CLIP_PRETRAINED file was published under: its normalisation and quick_gelu apply.")
    clip_model_config: Path | None = Field(
        None, description="Extra open_clip model config (a JSON file or a folder of them).")
    clip_device: Literal["cpu", "cuda"] = Field("cpu", description="Torch device for the CLIP model.")
    clip_torch_threads: int = Field(0, ge=0, le=512, description="Torch intra-op threads; 0 = torch's default.")
    embed_batch_max_size: int = Field(16, ge=1, le=1024,
                                      description="Images per model call; 1 = no batching, one call per message.")
    embed_batch_max_wait_ms: float = Field(50.0, ge=0, le=10_000, description="How long a batch waits to fill.")
    qdrant_url: str | None = Field(None, description="A Qdrant server; unset = embedded local mode at QDRANT_PATH.")
    qdrant_api_key: str | None = Field(None, description="Qdrant API key.")
    qdrant_path: Path = Field(Path("var/qdrant"), description="Local-mode Qdrant directory.")
    qdrant_collection: str = Field("atelier_images", pattern=r"^[A-Za-z0-9_.-]{1,128}$",
                                   description="Qdrant collection of image embeddings.")
    qdrant_timeout_s: float = Field(10.0, gt=0, le=600, description="Timeout of one Qdrant call.")

    @field_validator("thumbnail_sizes", mode="before")
    @classmethod
    def _parse_sizes(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                value = tuple(int(p) for p in parts)
            except ValueError:
                raise ValueError("must be a comma-separated list of integers, e.g. 128,256,512") from None
        return value

    @field_validator("thumbnail_sizes")
    @classmethod
    def _check_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("needs at least one size")
        if any(s < 8 or s > 8192 for s in value):
            raise ValueError("each size must be between 8 and 8192")
        return tuple(sorted(set(value)))

    @field_validator("clip_pretrained_tag", "clip_model_config", "qdrant_url", "qdrant_api_key", mode="before")
    @classmethod
    def _media_empty_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)

    @field_validator("qdrant_url")
    @classmethod
    def _check_qdrant_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value
