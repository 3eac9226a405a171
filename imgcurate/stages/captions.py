"""The image–text stages: the CLIP score as a filter, DataComp's basic filter, and uid subsets.

``ImageTextAlignmentFilterStage`` scores each pair with the pipeline's CLIP model (the embedding
stage's, or its own) and keeps ``clip_score >= score_threshold`` or the exact ``top_fraction``;
``ImageTextBasicFilterStage`` is DataComp's basic filter; ``UidSubsetStage`` keeps the samples a
DataComp ``.npy`` lists and/or saves the uids of what was written.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

from ..common import columns as C
from ..common.errors import PipelineError, check_on_error
from .base import Context, Stage, accept_engine_options

log = logging.getLogger("imgcurate")
IMAGE_REASONS = ("no_image", "unreadable_image", "decode_error", "image_too_large")
DEFAULT_MODEL = ("ViT-L-14", "openai")  # DataComp's top-30 % baseline scores with OpenAI's ViT-L/14


def _pipeline_error(stage: Stage, exc: Exception) -> PipelineError:
    return PipelineError(f"{type(stage).__name__}: {exc}")


class ImageTextAlignmentFilterStage(Stage):
    """CLIP image–text score (``clip_score``, plain cosine in [-1, 1]); keeps ``clip_score >= score_threshold``,
    or the top ``top_fraction`` of the scored pairs over the whole dataset (DataComp's ``get_threshold``, exact).
    Neither: scores only. The model is the embedding stage's unless ``model_name`` names one (they must agree);
    without an embedding stage the images are embedded here (default: OpenAI's ViT-L/14)."""

    name = "clip_score"
    # the image embeddings it makes without an embedding stage are not advertised: a stage that needs them
    # (the LAION heads) asks for ImageEmbeddingStage, whose model this stage then uses
    provides = (C.CLIP_SCORE, C.CAPTION_PROBLEM)
    failure_reasons = IMAGE_REASONS  # when it embeds the images itself

    def __init__(self, score_threshold: float | None = None, top_fraction: float | None = None,
                 model_name: str | None = None, pretrained: str | None = None, batch_size: int | None = None,
                 device: str | None = None, precision: str | None = None, keep_text_embedding: bool = False,
                 on_error: str = "report", verbose: bool = False, name: str | None = None, **engine_options):
        accept_engine_options(self, engine_options, name)
        self.score_threshold = score_threshold
        self.top_fraction = top_fraction
        self.model_name = model_name
        self.pretrained = pretrained
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.keep_text_embedding = keep_text_embedding
        self.on_error = on_error
        self.verbose = verbose
        self._clip = None
        self._threshold = None  # what a top fraction came to, for the manifest

    def _check_cut(self) -> None:
        from ..dataframe.captions import _check_fraction, _check_threshold

        if self.score_threshold is not None and self.top_fraction is not None:
            raise PipelineError(f"{type(self).__name__}: give score_threshold or top_fraction, not both")
        try:
            if self.score_threshold is not None:
                _check_threshold(self.score_threshold)
            if self.top_fraction is not None:
                _check_fraction(self.top_fraction)
        except ValueError as exc:
            raise _pipeline_error(self, exc) from exc
        if self.score_threshold is not None and not -1 <= self.score_threshold <= 1:
            warnings.warn(f"{type(self).__name__}: score_threshold={self.score_threshold} is outside the CLIP score's range "
                          "-1..1 (a plain cosine, not x100: DataComp's ViT-B/32 baseline keeps >= 0.3, LAION kept >= 0.28), "
                          "so the filter keeps everything or nothing", UserWarning, stacklevel=4)

    def validate(self, context: Context) -> None:
        from ..models import CLIPModel

        self._check_cut()
        try:
            check_on_error(self.on_error)
            if self.model_name is not None or context.clip is None:
                name, pretrained = (self.model_name, self.pretrained) if self.model_name is not None else DEFAULT_MODEL
                self._clip = CLIPModel(name, pretrained if pretrained is not None or self.model_name is None else "openai",
                                       device=self.device, batch_size=self.batch_size, precision=self.precision)
                self._clip.check_weights()
            else:
                self._clip = context.clip
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise _pipeline_error(self, exc) from exc
        if context.clip is not None and context.clip.model_id != self._clip.model_id:
            raise PipelineError(f"{type(self).__name__}: the embeddings are made by {context.clip.model_id} but the "
                                f"score would use {self._clip.model_id}; vectors of two models cannot be compared "
                                "(leave model_name unset to use the embedding stage's model)")
        if self._clip is not context.clip:
            description = self._clip.describe()
            context.models.append({"stage": self.name, **description})
            context.random_weights |= bool(description.get("random_weights"))
            context.clip = self._clip

    def apply(self, df, context: Context):
        from .. import dataframe

        df = dataframe.clip_score(df, self._clip, keep_text_embedding=self.keep_text_embedding, on_error=self.on_error,
                                  storage_options=context.storage_options)
        if self.score_threshold is not None:
            return dataframe.filter_clip_score(df, threshold=self.score_threshold, stage=self.name)
        if self.top_fraction is None:
            return df
        # every score is needed before any row can be kept: compute them once, keep the frame, find the threshold
        df = df.persist()
        self._threshold = dataframe.clip_score_threshold(df, self.top_fraction, progress=self.verbose)
        log.info("%s: the top %g of %d scored pairs is clip_score >= %s", self.name, self.top_fraction,
                 self._threshold.scored, self._threshold.threshold)
        threshold = self._threshold.threshold if self._threshold.threshold is not None else math.inf
        return dataframe.filter_clip_score(df, threshold=threshold, stage=self.name)

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self._threshold is not None:
            described["threshold_used"] = self._threshold.describe()
        elif self.score_threshold is not None:
            described["threshold_used"] = {"threshold": self.score_threshold}
        return described


class ImageTextBasicFilterStage(Stage):
    """DataComp's basic filter: English caption (fastText lid.176), more than 2 words and 5 characters, smaller
    image side >= 200 px, aspect ratio <= 3; each rule marks what it removes as ``basic_filter:<rule>``."""

    name = "basic_filter"
    provides = (C.CAPTION_LANGUAGE,)
    failure_reasons = IMAGE_REASONS  # an image whose header cannot be read (when no earlier stage decoded it)

    def __init__(self, language: str | None = "en", min_caption_words: int = 3, min_caption_chars: int = 6,
                 min_image_side: int = 200, max_aspect_ratio: float = 3.0, on_error: str = "report",
                 verbose: bool = False, name: str | None = None, **engine_options):
        accept_engine_options(self, engine_options, name)
        self.language = language
        self.min_caption_words = min_caption_words
        self.min_caption_chars = min_caption_chars
        self.min_image_side = min_image_side
        self.max_aspect_ratio = max_aspect_ratio
        self.on_error = on_error
        self.verbose = verbose

    def _options(self) -> dict[str, Any]:
        return dict(language=self.language, min_caption_words=self.min_caption_words,
                    min_caption_chars=self.min_caption_chars, min_image_side=self.min_image_side,
                    max_aspect_ratio=self.max_aspect_ratio, stage=self.name, on_error=self.on_error)

    def validate(self, context: Context) -> None:
        from ..ops.captions import language_model

        try:
            check_on_error(self.on_error)
            for name in ("min_caption_words", "min_caption_chars", "min_image_side", "max_aspect_ratio"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    raise ValueError(f"{name} must be a number >= 0, got {value!r}")
            if self.language is not None:
                language_model()
        except (ValueError, ImportError, OSError) as exc:
            raise _pipeline_error(self, exc) from exc

    def apply(self, df, context: Context):
        from .. import dataframe

        return dataframe.basic_filter(df, **self._options(), storage_options=context.storage_options)


class UidSubsetStage(Stage):
    """DataComp uid subsets: with ``select_uids`` (a ``.npy`` of ``u8,u8`` pairs) keeps exactly the samples it
    lists (listed uids missing from the input are counted and listed in the manifest); with ``save_uids``
    writes the uids of the written samples in the same format once the writer is done. Either way a sample
    whose uid is missing or not 32 hexadecimal digits is a failure (``no_uid``, ``bad_uid``)."""

    name = "select_uids"
    failure_reasons = ("no_uid", "bad_uid")

    def __init__(self, select_uids: str | None = None, save_uids: str | None = None, on_error: str = "report",
                 storage_options: dict | None = None, verbose: bool = False, name: str | None = None, **engine_options):
        accept_engine_options(self, engine_options, name)
        self.select_uids = select_uids
        self.save_uids = save_uids
        self.on_error = on_error
        self.storage_options = storage_options
        self.verbose = verbose
        self._misses = None
        self.saved = None  # what save_uids wrote, after the run

    def validate(self, context: Context) -> None:
        from ..ops.uids import check_uid_file

        if self.select_uids is None and self.save_uids is None:
            raise PipelineError(f"{type(self).__name__}: give select_uids (a subset to keep) and/or save_uids (where to "
                                "save the kept uids)")
        try:
            check_on_error(self.on_error)
            if self.select_uids is not None:
                check_uid_file(self.select_uids, self.storage_options)
        except (ValueError, FileNotFoundError) as exc:
            raise _pipeline_error(self, exc) from exc

    def apply(self, df, context: Context):
        from .. import dataframe

        if self.select_uids is None:
            return dataframe.check_uids(df, on_error=self.on_error)
        df = dataframe.select_uids(df, self.select_uids, stage=self.name, on_error=self.on_error,
                                   storage_options=self.storage_options)
        self._misses = dataframe.uid_subset_misses(df, self.select_uids, storage_options=self.storage_options,
                                                   progress=self.verbose)
        if self._misses.missing:
            log.warning("%s: %d of the %d distinct uids in %s are not in the input (listed in the manifest)", self.name,
                        self._misses.missing, self._misses.found + self._misses.missing, self.select_uids)
        return df

    def after_write(self, result, context: Context) -> None:
        if self.save_uids is None:
            return
        self.saved = save_written_uids(result.output_dir, self.save_uids, storage_options=self.storage_options,
                                       progress=self.verbose)
        log.debug("wrote %d uids to %s", self.saved.uids, self.save_uids)  # the command line prints the result

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self._misses is not None:
            described["subset"] = self._misses.describe()
        return described


def save_written_uids(output_dir: str, path: str, *, storage_options: dict | None = None, progress: bool = False):
    """Save the uids of the samples an imgcurate output directory holds (its Parquet metadata, ``uid`` only)."""
    import dask.dataframe as dd

    from .. import dataframe
    from ..app.display import shard_files

    files = shard_files(output_dir, storage_options)
    if not files:  # nothing was written: an empty subset
        import pandas as pd

        frame = dd.from_pandas(pd.DataFrame({C.UID: pd.Series([], dtype="string[pyarrow]")}), npartitions=1)
    else:
        frame = dd.read_parquet(files, columns=[C.UID], storage_options=storage_options)
    return dataframe.save_uids(frame, path, storage_options=storage_options, progress=progress)
