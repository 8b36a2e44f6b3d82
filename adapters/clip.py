"""open_clip embedder: CLIP image and text vectors, L2-normalised, with dynamic batching.

The model is loaded once per process, lazily, on the first embedding (never at import: a
worker that never embeds never pays for torch). Weights come from a pretrained tag
(downloaded to the Hugging Face cache), a local checkpoint file, or "random".

A checkpoint file carries weights only. The tag it was published under also fixes the image
normalisation (mean, std, interpolation, resize mode) and the activation (QuickGELU for the
OpenAI and LAION-400M ViT-B-32 weights): a file loaded as a plain path would silently get
the defaults and produce wrong vectors. So for a file the metadata comes from, in order:
CLIP_PRETRAINED_TAG, the tag whose download URL has the file's name, an open_clip_config.json
beside the file (Hugging Face layout), and only then the defaults (logged).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.batching import DynamicBatcher
from domain.errors import ModelUnavailable

log = logging.getLogger(__name__)

RANDOM = "random"
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


@dataclass
class LoadedClip:
    model: Any  # open_clip CLIP module, eval mode
    preprocess: Callable[[Any], Any]  # PIL image -> CHW tensor
    tokenizer: Callable[[list[str]], Any]
    image_size: int  # the model's input side; decodes need at least this
    device: str
    description: str  # what was loaded, for logs
    metadata: dict[str, Any] = field(default_factory=dict)  # quick_gelu and preprocessing used

    def encode_images(self, tensors: Sequence[Any]) -> list[list[float]]:
        import torch

        with torch.inference_mode():
            batch = torch.stack(list(tensors)).to(self.device)
            return self.model.encode_image(batch, normalize=True).float().cpu().tolist()

    def encode_texts(self, texts: Sequence[str]) -> list[list[float]]:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return self.model.encode_text(tokens, normalize=True).float().cpu().tolist()


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))


def tag_metadata(model_name: str, tag: str) -> dict[str, Any]:
    """quick_gelu and preprocessing of a published tag; {} when the tag is unknown."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        return {}
    return {"quick_gelu": bool(cfg.get("quick_gelu", False)), "tag": tag,
            **{k: cfg[k] for k in _PREPROCESS_KEYS if cfg.get(k) is not None}}


def file_metadata(model_name: str, path: Path, tag: str | None) -> dict[str, Any]:
    """What the weights in ``path`` need besides the weights (see the module docstring)."""
    import open_clip

    if tag:
        meta = tag_metadata(model_name, tag)
        if not meta:
            known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise ModelUnavailable(f"CLIP_PRETRAINED_TAG={tag!r} is not a tag of {model_name} (known: {known})")
        return meta
    for known_tag in open_clip.list_pretrained_tags_by_model(model_name):
        url = open_clip.get_pretrained_cfg(model_name, known_tag).get("url") or ""
        if url and url.rsplit("/", 1)[-1] == path.name:
            return tag_metadata(model_name, known_tag)
    config = path.parent / "open_clip_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        pre = data.get("preprocess_cfg", {})
        meta = {"quick_gelu": bool(data.get("model_cfg", {}).get("quick_gelu", False)), "config": str(config)}
        meta.update({k: pre[k] for k in _PREPROCESS_KEYS if pre.get(k) is not None})
        return meta
    log.warning("CLIP checkpoint %s: no CLIP_PRETRAINED_TAG, no known file name, no open_clip_config.json "
                "beside it; using %s's defaults (GELU, OpenAI normalisation)", path, model_name)
    return {}


def load_clip(model_name: str, pretrained: str, *, pretrained_tag: str | None = None, device: str = "cpu",
              model_config: Path | None = None, torch_threads: int = 0) -> LoadedClip:
    """Build the model through open_clip; any failure raises ModelUnavailable with the reason."""
    try:
        import open_clip
        import torch
    except ImportError as exc:  # pragma: no cover - the dependencies are declared
        raise ModelUnavailable(f"open_clip/torch cannot be imported: {exc}") from None

    if torch_threads:
        torch.set_num_threads(torch_threads)
    if model_config is not None:
        if not model_config.exists():
            raise ModelUnavailable(f"CLIP_MODEL_CONFIG {model_config} does not exist")
        open_clip.add_model_config(model_config)
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("CLIP_DEVICE=cuda but torch sees no CUDA device")
    has_schema = model_name.startswith(("hf-hub:", "local-dir:"))
    if not has_schema and model_name not in open_clip.list_models():
        raise ModelUnavailable(f"CLIP_MODEL={model_name!r} is not an open_clip model (see open_clip.list_models())")

    meta: dict[str, Any] = {}
    weights: str | None
    if has_schema or pretrained == RANDOM:
        weights = None
    elif _looks_like_path(pretrained) or Path(pretrained).is_file():
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"CLIP_PRETRAINED file {path} does not exist")
        meta = file_metadata(model_name, path, pretrained_tag)
        weights = str(path)
    else:
        meta = tag_metadata(model_name, pretrained)
        if not meta:
            known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise ModelUnavailable(f"CLIP_PRETRAINED={pretrained!r} is neither a file nor a tag of {model_name} "
                                   f"(tags: {known})")
        weights = pretrained
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights, device=device,
            # open_clip only warns when a tag's activation differs from the config's: set it.
            force_quick_gelu=bool(meta.get("quick_gelu")),
            image_mean=meta.get("mean"), image_std=meta.get("std"),
            image_interpolation=meta.get("interpolation"), image_resize_mode=meta.get("resize_mode"),
        )
        tokenizer = open_clip.get_tokenizer(model_name)
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"cannot load CLIP {model_name} with weights {pretrained!r}: "
                               f"{type(exc).__name__}: {exc}") from None
    model.eval()
    size = model.visual.image_size
    side = max(size) if isinstance(size, tuple | list) else int(size)
    what = f"{model_name} ({'random weights' if weights is None and not has_schema else weights})"
    return LoadedClip(model, preprocess, tokenizer, side, device, what, meta)


class ClipEmbedder:
    """The ImageEmbedder port over open_clip.

    Parameters: ``loader`` builds the LoadedClip (called once, lazily; a failure is remembered
    for ``retry_after`` seconds, so a burst of messages does not reload); ``decode`` turns bytes
    into an upright RGB PIL image no smaller than a given side (the imaging adapter's checked,
    reduced-scale decode); ``max_batch_size`` (1 disables batching) and ``max_wait`` (seconds)
    for the dynamic batcher; ``model_id`` goes into every point's payload.
    """

    def __init__(self, loader: Callable[[], LoadedClip], decode: Callable[[bytes, int], Any], *,
                 model_id: str, max_batch_size: int = 16, max_wait: float = 0.01,
                 retry_after: float = 30.0) -> None:
        self._loader = loader
        self._decode = decode
        self._model_id = model_id
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._clip: LoadedClip | None = None
        self._failure: tuple[float, ModelUnavailable] | None = None
        self.batcher: DynamicBatcher[Any, list[float]] | None = None
        if max_batch_size > 1:
            self.batcher = DynamicBatcher(self._encode_batch, max_batch_size=max_batch_size, max_wait=max_wait,
                                          name="clip-batcher")

    @property
    def model_id(self) -> str:
        return self._model_id

    def load(self) -> LoadedClip:
        """The model, loading it on first use. Raises ModelUnavailable with the reason."""
        clip = self._clip
        if clip is not None:
            return clip
        with self._lock:
            if self._clip is not None:
                return self._clip
            if self._failure and time.monotonic() - self._failure[0] < self._retry_after:
                raise self._failure[1]
            started = time.perf_counter()
            try:
                self._clip = self._loader()
            except ModelUnavailable as exc:
                self._failure = (time.monotonic(), exc)
                # The one line an operator needs; the messages are retried, then dead-lettered with it.
                log.error("CLIP model unavailable: %s", exc)
                raise
            self._failure = None
            log.info("CLIP model loaded: %s on %s in %.1fs", self._clip.description, self._clip.device,
                     time.perf_counter() - started)
            return self._clip

    def _encode_batch(self, tensors: list[Any]) -> list[list[float]]:
        return self.load().encode_images(tensors)

    def embed_image(self, data: bytes) -> list[float]:
        clip = self.load()
        if self.batcher is None:
            return clip.encode_images([clip.preprocess(self._decode(data, clip.image_size))])[0]
        # Decoding and preprocessing run on the calling thread, in parallel; only the model batches.
        # The place is reserved first: a batch forming meanwhile waits for this image (max_wait).
        with self.batcher.reserve() as submit:
            tensor = clip.preprocess(self._decode(data, clip.image_size))
            return submit(tensor)

    def embed_text(self, text: str) -> list[float]:
        return self.load().encode_texts([text])[0]
