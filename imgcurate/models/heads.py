"""LAION's two predictor heads on CLIP ViT-L/14 image embeddings.

* :class:`AestheticScorer`: the improved-aesthetic-predictor MLP (768→1024→128→64→16→1, linear
  layers with dropout between and no activations), trained on L2-normalised ViT-L/14 embeddings;
  scores on a ~1–10 scale. Its state dict keys are ``layers.{0,2,4,6,7}.{weight,bias}``, so
  LAION's ``sac+logos+ava1-l14-linearMSE.pth`` loads unchanged.
* :class:`NSFWScorer`: the CLIP-based-NSFW-Detector for ViT-L/14 in its PyTorch form
  (``clip_autokeras_binary_nsfw.pth``): a normalisation layer (``norm.mean``, ``norm.variance``),
  then 768→64→512→256 with ReLU and 256→1 with a sigmoid; scores in [0, 1].

A scorer object is a small picklable description (weights path, device); the torch module is
loaded once per process and reused. ``weights="random"`` builds a randomly initialised head for
demonstrations and tests, and says so in :meth:`describe`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..common.backend import torch_device
from ..common.errors import WeightsNotFoundError
from .weights import MODEL_LOAD_LOCK, WeightFile, announce_random_weights, resolve_weights, sha256_file

EMBEDDING_DIM = 768  # ViT-L/14, the embeddings both heads were trained on
RANDOM = "random"
KERAS_EPSILON = 1e-7  # keras.backend.epsilon()


class AestheticMLP(nn.Module):
    def __init__(self, dim: int = EMBEDDING_DIM):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)


class _KerasNormalization(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as Keras' Normalization layer: a zero variance divides by epsilon, not by zero
        return (x - self.mean) / self.variance.sqrt().clamp_min(KERAS_EPSILON)


class NSFWMLP(nn.Module):
    def __init__(self, dim: int = EMBEDDING_DIM):
        super().__init__()
        self.norm = _KerasNormalization(dim)
        self.linear_1 = nn.Linear(dim, 64)
        self.linear_2 = nn.Linear(64, 512)
        self.linear_3 = nn.Linear(512, 256)
        self.linear_4 = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.linear_1(self.norm(x)))
        x = torch.relu(self.linear_2(x))
        x = torch.relu(self.linear_3(x))
        return torch.sigmoid(self.linear_4(x)).squeeze(-1)


@lru_cache(maxsize=8)
def _load_head(kind: str, path: str | None, device: str) -> nn.Module:
    if path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same "random" head in every process, so demo runs are reproducible
            module = HEADS[kind].MODULE()
    else:
        module = HEADS[kind].MODULE()
        module.load_state_dict(read_weights(kind, path))
    return module.to(device).eval()


def read_weights(kind: str, path: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (a PyTorch file, or safetensors as NeMo Curator keeps the aesthetic
    head), checked against LAION's layout for the ``kind`` head, so that a wrong file fails by name
    where the scorer is made, not in a worker at the first batch."""
    head = HEADS[kind]
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways (pickle, zip, EOF) on a file that is not its own
        raise ValueError(f"{path} is not a PyTorch weight file {head.__name__} can read: {type(exc).__name__}: {exc}") from exc
    expected = {name: tuple(value.shape) for name, value in head.MODULE().state_dict().items()}
    found = {name: tuple(getattr(value, "shape", ())) for name, value in state.items()} if isinstance(state, dict) else {}
    if found != expected:
        missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        reshaped = sorted(name for name in expected.keys() & found.keys() if expected[name] != found[name])
        raise ValueError(
            f"{path} does not hold {head.WEIGHTS.description} weights in LAION's layout: missing keys {missing}, "
            f"unexpected keys {unexpected}, wrong shapes {reshaped} (expected {expected})"
        )
    return state


class _Head:
    MODULE: ClassVar[type[nn.Module]]
    WEIGHTS: ClassVar[WeightFile]
    KIND: ClassVar[str]
    NEMO_PATH: ClassVar[str]  # where NeMo Curator keeps the same weights under its model_dir

    @classmethod
    def in_directory(cls, model_dir: str | os.PathLike | None) -> str | None:
        """The weight file in ``model_dir`` (LAION's file name, or NeMo Curator's layout); None without a directory."""
        if model_dir is None:
            return None
        candidates = [Path(model_dir) / cls.WEIGHTS.filename, Path(model_dir) / cls.NEMO_PATH]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        raise WeightsNotFoundError(
            f"{cls.WEIGHTS.description} weights are not in model_dir {model_dir}: looked for {candidates[0]} and "
            f"{candidates[1]} (NeMo Curator's layout). Download {cls.WEIGHTS.url} on a machine with internet access"
            + (f", unzip {cls.WEIGHTS.archive_member} from it," if cls.WEIGHTS.archive_member else "")
            + f" and put {cls.WEIGHTS.filename} in {model_dir}."
        )

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None, batch_size: int = 4096):
        self.random = weights == RANDOM
        self.path = None if self.random else str(resolve_weights(self.WEIGHTS, weights))
        if self.path is not None:
            read_weights(self.KIND, self.path)
        self.device = device  # None: CUDA when the machine that scores has it (decided there)
        self.batch_size = batch_size
        if self.random:
            announce_random_weights(f"{type(self).__name__} uses RANDOM weights: its scores mean nothing")

    def check_width(self, width: int) -> None:
        if width != EMBEDDING_DIM:
            raise ValueError(
                f"{type(self).__name__} expects ViT-L/14 image embeddings of width {EMBEDDING_DIM}, got width "
                f"{width}; embed with model ViT-L-14 (the model LAION's heads were trained on)"
            )

    def module(self, device: str | None = None) -> nn.Module:
        with MODEL_LOAD_LOCK:
            return _load_head(self.KIND, self.path, device or torch_device(self.device))

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Scores (float32) for an (n, 768) array of L2-normalised ViT-L/14 embeddings."""
        embeddings = np.require(embeddings, dtype=np.float32, requirements=["C", "W"])
        if embeddings.ndim != 2:
            raise ValueError(f"{type(self).__name__} expects a 2-d array of embeddings, got shape {embeddings.shape}")
        self.check_width(embeddings.shape[1])
        if len(embeddings) == 0:
            return np.zeros(0, dtype=np.float32)
        device = torch_device(self.device)
        module = self.module(device)
        out = []
        with torch.inference_mode():
            for start in range(0, len(embeddings), self.batch_size):
                batch = torch.from_numpy(embeddings[start : start + self.batch_size]).to(device)
                out.append(module(batch).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "model": type(self).__name__,
            "weights": self.path or RANDOM,
            "weights_sha256": sha256_file(self.path) if self.path else None,
            "random_weights": self.random,
            "device": self.device or "auto",
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.path or RANDOM!r}, device={self.device or 'auto'!r})"


class AestheticScorer(_Head):
    """LAION improved-aesthetic-predictor: ~1–10, higher is more aesthetic."""

    MODULE = AestheticMLP
    KIND = "aesthetic"
    NEMO_PATH = "ttj/sac-logos-ava1-l14-linearMSE/model.safetensors"
    WEIGHTS = WeightFile(
        filename="sac+logos+ava1-l14-linearMSE.pth",
        url="https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth",
        description="LAION aesthetic predictor (ViT-L/14)",
    )


class NSFWScorer(_Head):
    """LAION CLIP-based NSFW detector: 0–1, higher is more likely NSFW."""

    MODULE = NSFWMLP
    KIND = "nsfw"
    NEMO_PATH = "laion/clip-autokeras-binary-nsfw/clip_autokeras_binary_nsfw.pth"
    WEIGHTS = WeightFile(
        filename="clip_autokeras_binary_nsfw.pth",
        url="https://github.com/LAION-AI/CLIP-based-NSFW-Detector/files/10250461/clip_autokeras_binary_nsfw.zip",
        description="LAION NSFW detector (ViT-L/14)",
        archive_member="clip_autokeras_binary_nsfw.pth",
    )


HEADS: dict[str, type[_Head]] = {"aesthetic": AestheticScorer, "nsfw": NSFWScorer}
