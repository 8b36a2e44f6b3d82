"""A tiny open_clip model for tests: a config registered like any custom model and a random-init
checkpoint saved to a file, then loaded through the production path (CLIP_MODEL_CONFIG,
CLIP_MODEL, CLIP_PRETRAINED=<file>). No weights are downloaded."""

from __future__ import annotations

import json
from pathlib import Path

TINY_MODEL = "atelier-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the config (folder/configs/atelier-tiny.json) and a checkpoint; return both paths."""
    import open_clip
    import torch

    configs = folder / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(configs)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    checkpoint = folder / "atelier-tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return configs, checkpoint


def tiny_env(folder: Path) -> dict[str, str]:
    """Settings that make a worker or the CLI load the tiny model through the production path."""
    configs, checkpoint = make_tiny_clip(folder)
    return {"CLIP_MODEL": TINY_MODEL, "CLIP_MODEL_CONFIG": str(configs), "CLIP_PRETRAINED": str(checkpoint),
            "QDRANT_PATH": str(folder / "qdrant")}
