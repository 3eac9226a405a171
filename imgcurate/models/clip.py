"""CLIP image and text embeddings with open_clip.

:class:`CLIPModel` (also known as ``CLIPImageEmbedder``, the name the stage API uses) is a small,
picklable description of a model: name, weights, and the device, precision and batch size asked
for. The torch module it describes is built once per process (:func:`_load_model`) and reused by
every partition and call. Device, precision and batch size left as ``None`` are decided where the
model runs (:func:`~imgcurate.common.backend.model_runtime`), on the worker. Captions go through
open_clip's own tokenizer for the model (its context length, truncating as open_clip does).

OpenAI's CLIP weights were trained with QuickGELU. open_clip's plain ``ViT-L-14`` config uses
GELU and only warns when given ``pretrained="openai"``, which shifts every embedding and makes
LAION's heads mis-score. The embedder resolves activation from the pretrained tag's own record:
when the tag was trained with QuickGELU, the model is built with it, whether the user named
``ViT-L-14`` or ``ViT-L-14-quickgelu``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.pretrained import get_pretrained_cfg, has_hf_hub
from open_clip.transform import PreprocessCfg, merge_preprocess_dict

from ..common.backend import Runtime, check_precision, model_runtime
from ..common.errors import WeightsNotFoundError
from . import tiny  # noqa: F401  (registers imgcurate's tiny test/demo config with open_clip)
from .weights import MODEL_LOAD_LOCK, announce_random_weights, downloads_allowed, reachable, sha256_file

log = logging.getLogger("imgcurate")
QUICKGELU_SUFFIX = "-quickgelu"
RANDOM = "random"  # pretrained="random": random weights, for tests and demonstrations
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GPU_BATCH_SIZE, CPU_BATCH_SIZE = 256, 32


@dataclass(frozen=True)
class ResolvedModel:
    """What open_clip is asked to build."""

    config_name: str  # an open_clip model config
    pretrained: str | None  # a tag of that config, a checkpoint file, or None for random weights
    force_quick_gelu: bool

    @property
    def is_file(self) -> bool:
        return self.pretrained is not None and os.path.isfile(self.pretrained)


def resolve_model(model_name: str, pretrained: str | None, quick_gelu: bool | None = None) -> ResolvedModel:
    """Choose the open_clip config, tag and activation for a user's (model, pretrained) pair."""
    base = model_name[: -len(QUICKGELU_SUFFIX)] if model_name.endswith(QUICKGELU_SUFFIX) else model_name
    config = open_clip.get_model_config(model_name) or open_clip.get_model_config(base)
    if config is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
    config_name = model_name if open_clip.get_model_config(model_name) else base
    config_quick = bool(config.get("quick_gelu"))
    tag_record: dict[str, Any] = {}
    if pretrained is not None and not os.path.isfile(pretrained):
        for name in dict.fromkeys((model_name, base)):
            tag_record = get_pretrained_cfg(name, pretrained)
            if tag_record:
                config_name = name
                config_quick = bool((open_clip.get_model_config(name) or {}).get("quick_gelu"))
                break
        else:
            tags = open_clip.list_pretrained_tags_by_model(base) or open_clip.list_pretrained_tags_by_model(model_name)
            raise ValueError(
                f"pretrained={pretrained!r} is neither a file nor a known open_clip tag for {model_name}; "
                f"known tags: {', '.join(tags) or 'none'}"
            )
    if quick_gelu is None:
        quick_gelu = bool(tag_record.get("quick_gelu")) or model_name.endswith(QUICKGELU_SUFFIX) or config_quick
    force = quick_gelu and not config_quick
    if force and tag_record.get("quick_gelu"):
        log.info("%s with pretrained=%r: the weights were trained with QuickGELU, building the model with it",
                 model_name, pretrained)
    return ResolvedModel(config_name, pretrained, force)


def cached_weights(resolved: ResolvedModel, cache_dir: str | None = None) -> str | None:
    """The local file open_clip would load for ``resolved`` (from ``cache_dir`` when given, as open_clip
    reads it, else its default caches), if it is already on this machine."""
    if resolved.pretrained is None:
        return None
    if resolved.is_file:
        return resolved.pretrained
    record = get_pretrained_cfg(resolved.config_name, resolved.pretrained)
    if record.get("hf_hub") and has_hf_hub():
        # open_clip then loads from the hub and never looks at its URL cache, so only the hub's cache counts
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(record["hf_hub"])  # "org/name/" names the repo's default file
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
        return None
    if record.get("url"):
        candidate = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(record["url"]))
        if os.path.isfile(candidate):
            return candidate
    return None


def preprocess_config(resolved: ResolvedModel) -> dict[str, Any]:
    """open_clip's preprocessing for a model and tag (size, mean, std, interpolation, resize_mode),
    worked out from its records as ``create_model`` does, without building the model."""
    config = open_clip.get_model_config(resolved.config_name)
    merged = asdict(PreprocessCfg())
    merged = merge_preprocess_dict(merged, config.get("preprocess_cfg", {}))
    if resolved.pretrained is not None and not resolved.is_file:
        merged = merge_preprocess_dict(merged, get_pretrained_cfg(resolved.config_name, resolved.pretrained))
    size = config["vision_cfg"].get("image_size", merged["size"])
    merged["size"] = size if isinstance(size, int) else tuple(size)
    return merged


def weights_help(model_name: str, pretrained: str, cache_dir: str | None = None) -> str:
    if cache_dir:
        where = (f"in model_dir {cache_dir} (open_clip's cache for them). On a machine with internet access run: "
                 f"python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{pretrained}', "
                 f"cache_dir='model_weights')\" and copy model_weights/ to {cache_dir}")
    else:
        where = ("on this machine and cannot be downloaded here. On a machine with internet access run: "
                 f"python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{pretrained}')\" "
                 "and copy ~/.cache/clip and ~/.cache/huggingface to this machine")
    return (f"CLIP weights for {model_name} pretrained={pretrained!r} are not {where}, or pass a checkpoint file: "
            f"--pretrained /path/to/weights.pt (pretrained='/path/to/weights.pt').")


class _WithoutRandomInitNotice(logging.Filter):
    """open_clip's root-logger line for a model built without weights: imgcurate says it already,
    once per model, in its own words (RANDOM weights)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@lru_cache(maxsize=4)
def _load_model(resolved: ResolvedModel, device: str, cache_dir: str | None = None) -> torch.nn.Module:
    """Build the model once per process and device: both towers, in eval mode."""
    notice = _WithoutRandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights (pretrained=None) must be the same model in every worker process
            model = open_clip.create_model(
                resolved.config_name, pretrained=resolved.pretrained, force_quick_gelu=resolved.force_quick_gelu,
                device="cpu", cache_dir=cache_dir,
            )
    finally:
        logging.getLogger().removeFilter(notice)
    # weights stay float32; lower precision comes from autocast, which keeps norms and softmax in float32
    return model.to(device=device).eval()


@lru_cache(maxsize=4)
def _load_tokenizer(config_name: str):
    return open_clip.get_tokenizer(config_name)


class CLIPModel:
    """L2-normalised float32 CLIP embeddings of images (:meth:`embed_pixels`) and of text (:meth:`embed_text`).

    ``pretrained``: an open_clip tag (downloaded to open_clip's cache when online), a local
    checkpoint file, or ``None`` / ``"random"`` for random weights (labelled as such in :meth:`describe`).
    ``device``, ``precision`` and ``batch_size`` left as ``None`` are chosen on the machine that runs
    the model: CUDA with bf16 and batches of 256 when it has a GPU, else CPU with fp32 and batches of 32.
    ``cache_dir``: where open_clip looks for (and downloads) a tag's weights, instead of its default caches.
    """

    def __init__(self, model_name: str = "ViT-L-14", pretrained: str | None = "openai", device: str | None = None,
                 batch_size: int | None = None, precision: str | None = None, quick_gelu: bool | None = None,
                 cache_dir: str | os.PathLike | None = None):
        if pretrained == RANDOM:
            pretrained = None
        check_precision(precision)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model_name = model_name
        self.pretrained = pretrained
        self.resolved = resolve_model(model_name, pretrained, quick_gelu)
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        config = open_clip.get_model_config(self.resolved.config_name)
        self.dim = int(config["embed_dim"])
        self.context_length = int(config.get("text_cfg", {}).get("context_length", 77))
        self.preprocess = preprocess_config(self.resolved)
        if pretrained is None:
            announce_random_weights(f"{type(self).__name__}({model_name}) has RANDOM weights: its embeddings mean nothing")

    # -- weights ------------------------------------------------------------------------

    def weights_available(self) -> bool:
        """True when the weights are local, or there are none to load (random weights)."""
        return self.pretrained is None or cached_weights(self.resolved, self.cache_dir) is not None

    def check_weights(self) -> None:
        """Raise :class:`WeightsNotFoundError` (saying what to do) when the weights can be neither found nor downloaded."""
        if self.weights_available():
            return
        record = get_pretrained_cfg(self.resolved.config_name, self.pretrained)
        source = "https://huggingface.co" if record.get("hf_hub") and has_hf_hub() else record.get("url")
        if not downloads_allowed() or not source or not reachable(source):
            raise WeightsNotFoundError(weights_help(self.model_name, self.pretrained, self.cache_dir))

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two models' embeddings comparable: the open_clip config, the weights and the activation."""
        return {"open_clip_config": self.resolved.config_name, "pretrained": self.pretrained,
                "quick_gelu": self.quick_gelu, "embedding_dim": self.dim}

    @property
    def model_id(self) -> str:
        """One string naming what made an embedding, e.g. ``ViT-L-14-quickgelu/openai``: the open_clip config
        (with ``-quickgelu`` where QuickGELU is forced) and the weights (a tag, a checkpoint's sha256, or ``random``).
        Embeddings with the same id are comparable; the id travels with them (column ``embedding_model``)."""
        config = self.resolved.config_name + (QUICKGELU_SUFFIX if self.resolved.force_quick_gelu else "")
        if self.pretrained is None:
            weights = RANDOM
        elif self.resolved.is_file:
            weights = "sha256:" + sha256_file(self.pretrained)
        else:
            weights = self.pretrained
        return f"{config}/{weights}"

    @property
    def quick_gelu(self) -> bool:
        return self.resolved.force_quick_gelu or bool(open_clip.get_model_config(self.resolved.config_name).get("quick_gelu"))

    # -- the model ----------------------------------------------------------------------

    def runtime(self) -> Runtime:
        """Device, precision and batch size on this machine (see the class docstring)."""
        return model_runtime(self.device, self.precision, self.batch_size,
                             gpu_batch_size=GPU_BATCH_SIZE, cpu_batch_size=CPU_BATCH_SIZE)

    def model(self, device: str) -> torch.nn.Module:
        with MODEL_LOAD_LOCK:
            return _load_model(self.resolved, device, self.cache_dir)

    def _autocast(self, runtime: Runtime):
        return torch.autocast(torch.device(runtime.device).type, dtype=TORCH_DTYPES[runtime.precision],
                              enabled=runtime.precision != "fp32")

    def normalise(self, batch: torch.Tensor, device: str) -> torch.Tensor:
        """uint8 NHWC (on any device) → normalised float NCHW on ``device``."""
        mean = torch.tensor(self.preprocess["mean"], device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess["std"], device=device).view(1, 3, 1, 1)
        x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - mean) / std

    def embed_pixels(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embeddings for preprocessed uint8 images (n, size, size, 3): float32 (n, dim), unit length."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        runtime = self.runtime()
        visual = self.model(runtime.device).visual
        batch = torch.as_tensor(pixels)
        out = []
        with torch.inference_mode(), self._autocast(runtime):
            for start in range(0, len(batch), runtime.batch_size):
                features = visual(self.normalise(batch[start : start + runtime.batch_size], runtime.device)).float()
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip's tokens for ``texts``: (n, context_length) int64, each cut to the model's context as open_clip cuts it."""
        return _load_tokenizer(self.resolved.config_name)(list(texts), context_length=self.context_length)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` by the text tower: float32 (n, dim), unit length."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        runtime = self.runtime()
        model = self.model(runtime.device)
        out = []
        with torch.inference_mode(), self._autocast(runtime):
            for start in range(0, len(texts), runtime.batch_size):
                tokens = self.tokenize(texts[start : start + runtime.batch_size]).to(runtime.device)
                features = model.encode_text(tokens).float()
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out)

    def describe(self) -> dict[str, Any]:
        weights = cached_weights(self.resolved, self.cache_dir)
        return {
            "model": type(self).__name__,
            "model_name": self.model_name,
            **self.identity,
            "random_weights": self.pretrained is None,
            "weights_sha256": sha256_file(weights) if weights else None,  # a checkpoint file, or a tag's cached file
            # what was asked for; "auto" is decided on each worker (CUDA, bf16, 256 with a GPU; CPU, fp32, 32 without)
            "device": self.device or "auto",
            "precision": self.precision or "auto",
            "batch_size": self.batch_size or "auto",
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.model_name!r}, pretrained={self.pretrained!r}, device={self.device or 'auto'!r}, "
                f"precision={self.precision or 'auto'!r})")


class CLIPImageEmbedder(CLIPModel):
    """:class:`CLIPModel` under the name the stage API and the seed's code use for it."""
