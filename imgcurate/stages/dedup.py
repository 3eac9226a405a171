"""The deduplication stage: exact, perceptual (pHash) or semantic (SemDeDup) duplicates, marked.

NeMo Curator deduplicates images in three runs: an embedding pipeline writes the embeddings to
Parquet, ``SemanticDeduplicationWorkflow(input_path, output_path, n_clusters, eps, which_to_keep,
…)`` writes the ids to remove, and a second read of the shards applies
``ImageDuplicatesRemovalStage(removal_parquets_dir, duplicate_id_field)`` before the writer. Here
one stage does all of it on the dataframe: ``ImageDeduplicationStage(method="semantic",
n_clusters=…, eps=…, which_to_keep=…)`` after ``ImageEmbeddingStage`` (or computing the
embeddings itself when no stage before it did) finds the duplicates (:func:`imgcurate.mark_duplicates`)
and marks them ``dropped_by="dedup_semantic"`` instead of deleting them, so the writer counts
them, ``keep_dropped`` writes them (with ``duplicate_of``) to ``_dropped/``, and no id list
or second read is needed. ``method="exact"`` and ``"phash"`` need no model.
"""

from __future__ import annotations

from typing import Any

from ..common import columns as C
from ..common.errors import PipelineError, check_on_error
from .base import Context, Stage, accept_engine_options

FETCH_REASONS = ("no_image", "unreadable_image", "image_too_large")
EMBED_REASONS = ("no_image", "unreadable_image", "decode_error", "image_too_large")


class ImageDeduplicationStage(Stage):
    """Mark duplicates (``dropped_by="dedup_<method>"``); parameters as :func:`imgcurate.mark_duplicates`.

    ``which_to_keep`` is NeMo's name for ``keep`` (``"hard"``, ``"easy"``, ``"random"``);
    ``random_state`` its name for ``seed``. The run's summary (counts, distances, the threshold
    curve, example pairs) goes into ``_manifest.json`` under ``dedup`` and into the report.
    """

    requires = ()
    provides = (C.IS_DUPLICATE, C.DUPLICATE_OF)

    def __init__(self, method: str = "phash", max_distance: int | None = None, eps: float | None = None,
                 n_clusters: int | None = None, keep: str | None = None, ascending: bool = True, seed: int | None = None,
                 max_iter: int | None = None, pairwise_batch_size: int = 256, max_cluster_rows: int | None = None,
                 model_name: str = "ViT-L-14",
                 pretrained: str | None = "openai", batch_size: int | None = None, device: str | None = None,
                 on_error: str = "report", which_to_keep: str | None = None, random_state: int | None = None,
                 verbose: bool = False, name: str | None = None, **engine_options):
        accept_engine_options(self, engine_options, name)
        from ..dataframe.duplicates import DEFAULT_EPS, DEFAULT_MAX_CLUSTER_ROWS, DEFAULT_MAX_DISTANCE, DEFAULT_MAX_ITER

        if keep is not None and which_to_keep is not None and keep != which_to_keep:
            raise TypeError("give keep or which_to_keep (NeMo's name for it), not both")
        if seed is not None and random_state is not None and seed != random_state:
            raise TypeError("give seed or random_state (NeMo's name for it), not both")
        self.method = method
        self.max_distance = DEFAULT_MAX_DISTANCE if max_distance is None else max_distance
        self.eps = DEFAULT_EPS if eps is None else eps
        self.n_clusters = n_clusters
        self.keep = keep or which_to_keep or "first"
        self.ascending = ascending
        self.seed = 42 if seed is None and random_state is None else (seed if seed is not None else random_state)
        self.max_iter = DEFAULT_MAX_ITER if max_iter is None else max_iter
        self.pairwise_batch_size = pairwise_batch_size
        self.max_cluster_rows = DEFAULT_MAX_CLUSTER_ROWS if max_cluster_rows is None else max_cluster_rows
        self.model_name = model_name
        self.pretrained = pretrained
        self.batch_size = batch_size
        self.device = device
        self.on_error = on_error
        self.verbose = verbose
        self._first_image_stage = False  # set by validate: no ImageEmbeddingStage before this one
        self._embedder = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"dedup_{self.method}"

    @property
    def failure_reasons(self) -> tuple[str, ...]:  # type: ignore[override]
        if self.method == "semantic":
            return EMBED_REASONS if self._first_image_stage else ()
        hashing = ("hash_decode_error",) if self.method == "phash" else ()
        return hashing + (FETCH_REASONS if self._first_image_stage else ())

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`imgcurate.mark_duplicates` this stage passes."""
        return dict(keep=self.keep, ascending=self.ascending, seed=self.seed, max_distance=self.max_distance,
                    eps=self.eps, n_clusters=self.n_clusters, max_iter=self.max_iter,
                    pairwise_batch_size=self.pairwise_batch_size, max_cluster_rows=self.max_cluster_rows,
                    on_error=self.on_error)

    def method_parameters(self) -> dict[str, Any]:
        """The parameters that decide this method's result (for the manifest's ``dedup`` entry)."""
        names = {"exact": (), "phash": ("max_distance",),
                 "semantic": ("eps", "n_clusters", "max_iter", "model_name", "pretrained")}[self.method]
        return {"keep": self.keep, "ascending": self.ascending, "seed": self.seed,
                **{name: getattr(self, name) for name in names}}

    def embedder(self):
        if self._embedder is None:
            from ..models import CLIPImageEmbedder

            self._embedder = CLIPImageEmbedder(self.model_name, self.pretrained, device=self.device, batch_size=self.batch_size)
        return self._embedder

    def validate(self, context: Context) -> None:
        from ..dataframe.duplicates import check_options

        try:
            check_on_error(self.on_error)
            check_options(self.method, self.keep, self.ascending, self.seed, self.max_distance, self.eps, self.n_clusters,
                          self.max_iter, self.pairwise_batch_size, self.max_cluster_rows)
        except ValueError as exc:
            raise PipelineError(f"{type(self).__name__}: {exc}") from exc
        # an ImageEmbeddingStage validated before this one has already failed the rows without a
        # usable image, and (for semantic) added the embedding
        self._first_image_stage = not any(model.get("stage") == "embed" for model in context.models)
        if self.method == "semantic" and self._first_image_stage:
            try:
                embedder = self.embedder()
                embedder.check_weights()
            except (ValueError, FileNotFoundError, RuntimeError) as exc:
                raise PipelineError(f"{type(self).__name__}: {exc}") from exc
            description = embedder.describe()
            context.models.append({"stage": self.name, **description})
            context.random_weights |= bool(description.get("random_weights"))

    def apply(self, df, context: Context):
        from ..dataframe import embed, mark_dropped
        from ..dataframe.duplicates import dedup_summary, mark_duplicates

        if self.keep not in ("first", "random", "hard", "easy") and self.keep not in df.columns:
            raise PipelineError(f"{type(self).__name__}: keep={self.keep!r} is not a column at this point of the pipeline")
        if self.method == "semantic" and C.EMBEDDING not in df.columns:
            df = embed(df, self.embedder(), on_error=self.on_error, storage_options=context.storage_options)
        try:
            marked = mark_duplicates(df, self.method, storage_options=context.storage_options, **self.options())
        except ValueError as exc:
            raise PipelineError(f"{type(self).__name__}: {exc}") from exc
        # computed once: the summary below and the writer both read the marked rows
        marked = marked.persist()
        summary = dedup_summary(marked, self.method, max_distance=self.max_distance, eps=self.eps,
                                parameters=self.method_parameters(), progress=self.verbose)
        context.manifest.setdefault("dedup", []).append({"stage": self.name, **summary})
        return mark_dropped(marked, ~marked[C.IS_DUPLICATE], self.name)

