"""The stage API: each stage is a thin transform of the Dask DataFrame built by the I/O core.

Stage names and parameters follow NeMo Curator's image curation stages, so pipelines written
for it run here with only the import line changed. Parameters that only make sense for that
engine's scheduler (``num_gpus_per_worker``, ``task_batch_size``, ``num_threads``) are
accepted and have no effect: Dask schedules the work here.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from ..common import columns as C
from ..common.errors import PipelineError, check_on_error
from ..ops.filters import AESTHETIC_SCALE

log = logging.getLogger("imgcurate")
ENGINE_ONLY = ("num_gpus_per_worker", "task_batch_size", "num_threads", "num_workers_per_node")


@dataclass
class Context:
    """What earlier stages tell later ones while a pipeline is built."""

    shards: list[str] = field(default_factory=list)
    files_per_partition: int = 1
    storage_options: dict | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    random_weights: bool = False


class Stage:
    """A step of a :class:`~imgcurate.stages.Pipeline`."""

    name: ClassVar[str] = "stage"

    def validate(self, context: Context) -> None:
        """Check parameters and inputs; raise :class:`PipelineError`. Runs before any work."""

    def apply(self, df, context: Context):
        """Return the transformed Dask DataFrame (``df`` is None for the first stages)."""
        return df

    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def describe(self) -> dict[str, Any]:
        return {"stage": type(self).__name__, "name": self.name, "parameters": self.parameters()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"{type(self).__name__}({args})"


def _ignore_engine_options(stage: Stage, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(ENGINE_ONLY))
    if unknown:
        raise TypeError(f"{type(stage).__name__} got unexpected parameters: {', '.join(unknown)}")
    if options:
        log.debug("%s: %s have no effect here (Dask schedules the work)", type(stage).__name__, ", ".join(sorted(options)))


class FilePartitioningStage(Stage):
    """Find the input shards; ``files_per_partition`` shards become one partition."""

    name = "partition"

    def __init__(self, file_paths: str | Sequence[str], files_per_partition: int = 1,
                 file_extensions: Sequence[str] = (".tar",), storage_options: dict | None = None, **engine_options):
        _ignore_engine_options(self, engine_options)
        self.file_paths = file_paths
        self.files_per_partition = files_per_partition
        self.file_extensions = tuple(file_extensions)
        self.storage_options = storage_options

    def validate(self, context: Context) -> None:
        from ..io.paths import expand_shards

        if not isinstance(self.files_per_partition, int) or self.files_per_partition < 1:
            raise PipelineError(f"files_per_partition must be a positive integer, got {self.files_per_partition!r}")
        try:
            context.shards = expand_shards(self.file_paths, self.storage_options, suffixes=self.file_extensions)
        except (FileNotFoundError, ValueError) as exc:
            raise PipelineError(f"input: {exc}") from exc
        context.files_per_partition = self.files_per_partition
        context.storage_options = self.storage_options


class ImageReaderStage(Stage):
    """Read the shards into the dataframe (image bytes stay in the shards unless ``with_images``)."""

    name = "read"

    def __init__(self, with_images: bool = False, sidecar_parquet: bool | str = "auto", on_error: str = "report",
                 verbose: bool = False, **engine_options):
        _ignore_engine_options(self, engine_options)
        self.with_images = with_images
        self.sidecar_parquet = sidecar_parquet
        self.on_error = on_error
        self.verbose = verbose

    def validate(self, context: Context) -> None:
        try:
            check_on_error(self.on_error)
        except ValueError as exc:
            raise PipelineError(str(exc)) from exc

    def apply(self, df, context: Context):
        from ..io.reader import read_webdataset

        df = read_webdataset(context.shards, with_images=self.with_images, sidecar_parquet=self.sidecar_parquet,
                             storage_options=context.storage_options, on_error=self.on_error)
        if context.files_per_partition > 1:
            df = df.repartition(npartitions=math.ceil(df.npartitions / context.files_per_partition))
        return df


class ImageEmbeddingStage(Stage):
    """CLIP image embeddings (default: OpenAI's ViT-L/14, the model LAION's heads were trained on)."""

    name = "embed"

    def __init__(self, model_name: str = "ViT-L-14", pretrained: str | None = "openai", batch_size: int | None = None,
                 device: str | None = None, precision: str | None = None, on_error: str = "report",
                 model_inference_batch_size: int | None = None, model_dir: str | None = None,
                 remove_image_data: bool | None = None, verbose: bool = False, **engine_options):
        _ignore_engine_options(self, engine_options)
        self.model_name = model_name
        self.pretrained = pretrained
        self.batch_size = batch_size or model_inference_batch_size
        self.device = device
        self.precision = precision
        self.on_error = on_error
        self.model_dir = model_dir
        self.verbose = verbose
        self._embedder = None

    def embedder(self):
        if self._embedder is None:
            from ..models import CLIPImageEmbedder

            self._embedder = CLIPImageEmbedder(self.model_name, self.pretrained, device=self.device,
                                               batch_size=self.batch_size, precision=self.precision)
        return self._embedder

    def validate(self, context: Context) -> None:
        try:
            check_on_error(self.on_error)
            embedder = self.embedder()
            embedder.check_weights()
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise PipelineError(f"{type(self).__name__}: {exc}") from exc
        description = embedder.describe()
        context.models.append({"stage": self.name, **description})
        context.random_weights |= bool(description.get("random_weights"))

    def apply(self, df, context: Context):
        from ..dataframe import embed

        return embed(df, self.embedder(), on_error=self.on_error, storage_options=context.storage_options)


class _ScoreFilterStage(Stage):
    """Score with a LAION head, then mark the rows the threshold rejects (scores are kept either way)."""

    score_column: ClassVar[str]
    scale: ClassVar[tuple[float, float]]

    def __init__(self, score_threshold: float | None = None, weights: str | None = None, device: str | None = None,
                 model_dir: str | None = None, model_inference_batch_size: int | None = None, verbose: bool = False,
                 **engine_options):
        _ignore_engine_options(self, engine_options)
        self.score_threshold = score_threshold
        self.weights = weights
        self.device = device
        self.model_dir = model_dir
        self.verbose = verbose
        self._scorer = None

    def scorer(self):
        """The LAION head named like the stage (built once, on first use)."""
        if self._scorer is None:
            from ..models.heads import HEADS

            head = HEADS[self.name]
            self._scorer = head(self.weights or _in_dir(self.model_dir, head), device=self.device)
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
        return dataframe.mark_below_threshold(df, self.score_column, self.name, self.score_threshold, self.name)


class ImageAestheticFilterStage(_ScoreFilterStage):
    """LAION aesthetic score; keeps images scoring at least ``score_threshold`` (LAION's ~1–10 scale)."""

    name = "aesthetic"
    score_column = C.AESTHETIC_SCORE
    scale = AESTHETIC_SCALE

    def scale_warning(self) -> str:
        if self.score_threshold < self.scale[0]:
            return (f"ImageAestheticFilterStage: score_threshold={self.score_threshold} is below LAION's aesthetic "
                    f"scale (about 1–10), so almost every image is kept; thresholds such as 4.5–6 are usual")
        return super().scale_warning()


class ImageNSFWFilterStage(_ScoreFilterStage):
    """LAION NSFW score in [0, 1]; keeps images scoring below ``score_threshold``."""

    name = "nsfw"
    score_column = C.NSFW_SCORE
    scale = (0.0, 1.0)


def _in_dir(model_dir: str | None, scorer_class) -> str | None:
    """NeMo-style ``model_dir``: the weight file under that directory, if one is given."""
    if model_dir is None:
        return None
    import os

    return os.path.join(model_dir, scorer_class.WEIGHTS.filename)


class ImageWriterStage(Stage):
    """Write WebDataset shards of exactly ``images_per_tar`` samples plus Parquet metadata."""

    name = "write"

    def __init__(self, output_dir: str, images_per_tar: int = 1000, remove_image_data: bool = True, verbose: bool = False,
                 overwrite: bool = False, keep_dropped: bool = False, storage_options: dict | None = None,
                 deterministic_name: bool = True, **engine_options):
        _ignore_engine_options(self, engine_options)
        self.output_dir = output_dir
        self.images_per_tar = images_per_tar
        self.remove_image_data = remove_image_data
        self.verbose = verbose
        self.overwrite = overwrite
        self.keep_dropped = keep_dropped
        self.storage_options = storage_options
        self.deterministic_name = deterministic_name  # names are always deterministic here

    def validate(self, context: Context) -> None:
        from ..io.paths import filesystem
        from ..io.writer import check_output_dir

        if isinstance(self.images_per_tar, bool) or not isinstance(self.images_per_tar, int) or self.images_per_tar < 1:
            raise PipelineError(f"images_per_tar must be a positive integer, got {self.images_per_tar!r}")
        fs, root = filesystem(self.output_dir, self.storage_options)
        try:
            check_output_dir(fs, root, self.overwrite)
        except (FileExistsError, NotADirectoryError) as exc:
            raise PipelineError(str(exc)) from exc

    def write(self, df, context: Context, manifest_extra: dict[str, Any]):
        from ..io.writer import write_webdataset

        return write_webdataset(
            df, self.output_dir, images_per_tar=self.images_per_tar, remove_image_data=self.remove_image_data,
            overwrite=self.overwrite, storage_options=self.storage_options,
            source_storage_options=context.storage_options, keep_dropped=self.keep_dropped,
            progress=self.verbose, manifest_extra=manifest_extra,
        )
