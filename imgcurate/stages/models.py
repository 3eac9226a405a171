"""The model stages: CLIP embeddings, and LAION's aesthetic and NSFW heads as score filters."""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

from ..common import columns as C
from ..common.errors import PipelineError, check_on_error
from ..ops.filters import AESTHETIC_SCALE
from .base import Context, Stage, accept_engine_options


class ImageEmbeddingStage(Stage):
    """CLIP image embeddings (default: OpenAI's ViT-L/14, the model LAION's heads were trained on).

    ``model_dir``: where the CLIP weights are looked up (and downloaded to, when online): open_clip's
    cache directory for the model. ``remove_image_data=True`` drops image bytes the frame holds
    once embedded (the writer copies them from the source shards).
    """

    name = "embed"
    provides = (C.EMBEDDING,)
    failure_reasons = ("no_image", "unreadable_image", "decode_error", "image_too_large")

    def __init__(self, model_name: str = "ViT-L-14", pretrained: str | None = "openai", batch_size: int | None = None,
                 device: str | None = None, precision: str | None = None, on_error: str = "report",
                 model_inference_batch_size: int | None = None, model_dir: str | None = None,
                 remove_image_data: bool | None = None, verbose: bool = False, name: str | None = None, **engine_options):
        accept_engine_options(self, engine_options, name)
        self.model_name = model_name
        self.pretrained = pretrained
        self.batch_size = batch_size or model_inference_batch_size
        self.device = device
        self.precision = precision
        self.on_error = on_error
        self.model_dir = model_dir
        self.remove_image_data = remove_image_data
        self.verbose = verbose
        self._embedder = None

    def embedder(self):
        if self._embedder is None:
            from ..models import CLIPImageEmbedder

            self._embedder = CLIPImageEmbedder(self.model_name, self.pretrained, device=self.device,
                                               batch_size=self.batch_size, precision=self.precision,
                                               cache_dir=self.model_dir)
        return self._embedder

    def validate(self, context: Context) -> None:
        try:
            check_on_error(self.on_error)
            embedder = self.embedder()
            embedder.check_weights()
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise PipelineError(f"{type(self).__name__}: {exc}") from exc
        description = embedder.describe()
        context.clip = embedder
        context.models.append({"stage": self.name, **description})
        context.random_weights |= bool(description.get("random_weights"))

    def apply(self, df, context: Context):
        from ..dataframe import embed

        df = embed(df, self.embedder(), on_error=self.on_error, storage_options=context.storage_options)
        if self.remove_image_data and C.IMAGE in df.columns:
            df = df.drop(columns=[C.IMAGE])
        return df


class _ScoreFilterStage(Stage):
    """Score with a LAION head, then mark the rows the threshold rejects (scores are kept either way).

    ``model_dir``: where the head's weight file is looked up: LAION's file name in that directory,
    or NeMo Curator's layout under it (``ttj/sac-logos-ava1-l14-linearMSE/model.safetensors``,
    ``laion/clip-autokeras-binary-nsfw/clip_autokeras_binary_nsfw.pth``).
    """

    requires = (C.EMBEDDING,)
    kind: ClassVar[str]  # the head (models.heads.HEADS) and the keep rule (ops.filters.KEEP_RULES)
    score_column: ClassVar[str]
    scale: ClassVar[tuple[float, float]]

    def __init__(self, score_threshold: float | None = None, weights: str | None = None, device: str | None = None,
                 model_dir: str | None = None, model_inference_batch_size: int | None = None, verbose: bool = False,
                 name: str | None = None, **engine_options):
        accept_engine_options(self, engine_options, name)
        self.score_threshold = score_threshold
        self.weights = weights
        self.device = device
        self.model_dir = model_dir
        self.model_inference_batch_size = model_inference_batch_size
        self.verbose = verbose
        self._scorer = None

    def scorer(self):
        """The LAION head of this stage's kind (built once, on first use)."""
        if self._scorer is None:
            from ..models.heads import HEADS

            head = HEADS[self.kind]
            options = {"batch_size": self.model_inference_batch_size} if self.model_inference_batch_size else {}
            self._scorer = head(self.weights or head.in_directory(self.model_dir), device=self.device, **options)
        return self._scorer

    def score(self, df):
        """``df`` with this head's score column."""
        from ..dataframe import score_with

        return score_with(df, self.scorer(), self.score_column)

    def validate(self, context: Context) -> None:
        if self.score_threshold is not None:
            if not isinstance(self.score_threshold, (int, float)) or isinstance(self.score_threshold, bool) \
                    or not math.isfinite(self.score_threshold):
                raise PipelineError(f"{type(self).__name__}: score_threshold must be a number, got {self.score_threshold!r}")
            low, high = self.scale
            if not low <= self.score_threshold <= high:
                warnings.warn(self.scale_warning(), UserWarning, stacklevel=4)
        try:
            scorer = self.scorer()
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise PipelineError(f"{type(self).__name__}: {exc}") from exc
        context.models.append({"stage": self.name, **scorer.describe()})

    def scale_warning(self) -> str:
        low, high = self.scale
        return (f"{type(self).__name__}: score_threshold={self.score_threshold} is outside the score's range "
                f"{low:g}–{high:g}, so the filter keeps everything or nothing")

    def apply(self, df, context: Context):
        from .. import dataframe

        df = self.score(df)
        if self.score_threshold is None:
            return df
        return dataframe.mark_below_threshold(df, self.score_column, self.kind, self.score_threshold, self.name)


class ImageAestheticFilterStage(_ScoreFilterStage):
    """LAION aesthetic score; keeps images scoring at least ``score_threshold`` (LAION's ~1–10 scale)."""

    name = kind = "aesthetic"
    score_column = C.AESTHETIC_SCORE
    scale = AESTHETIC_SCALE

    def scale_warning(self) -> str:
        if self.score_threshold < self.scale[0]:
            return (f"ImageAestheticFilterStage: score_threshold={self.score_threshold} is below LAION's aesthetic "
                    f"scale (about 1–10), so almost every image is kept; thresholds such as 4.5–6 are usual")
        return super().scale_warning()


class ImageNSFWFilterStage(_ScoreFilterStage):
    """LAION NSFW score in [0, 1]; keeps images scoring below ``score_threshold``."""

    name = kind = "nsfw"
    score_column = C.NSFW_SCORE
    scale = (0.0, 1.0)

    def __init__(self, score_threshold: float | None = None, weights: str | None = None, *args,
                 weights_path: str | None = None, **kwargs):
        # NeMo Curator declares weights_path and never reads it; here it names the weight file
        super().__init__(score_threshold, weights or weights_path, *args, **kwargs)
