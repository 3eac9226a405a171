"""Deduplication as dataframe verbs: ``hash_images``, ``mark_duplicates``, ``dedup``.

The global steps are Dask operations on small *signature* rows (see :mod:`imgcurate.ops.dedup`),
never a gather of the dataset: exact duplicates are a shuffle on the hash; pHash near-duplicates
a shuffle of each distinct hash into ``max_distance + 1`` pigeonhole bands, verified inside each
bucket; semantic duplicates faiss k-means (trained on a bounded sample, in one task) followed by
a shuffle on the cluster and SemDeDup's rule within each cluster, in blocks. The marks found are
routed back to the partitions they belong to (a shuffle on the partition number) and written
into them, so the result has the input's partitions, rows and order. Every decision depends only
on the samples' values and their order, never on how the frame is partitioned.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..common import columns as C
from ..common.defaults import DEDUP_EPS, DEDUP_MAX_CLUSTER_ROWS, DEDUP_MAX_DISTANCE, DEDUP_MAX_ITER
from ..ops import dedup as D
from ..ops import semantic as S
from ..ops.hashing import DRAFT_SIDE

DEFAULT_MAX_DISTANCE, DEFAULT_EPS, DEFAULT_MAX_ITER = DEDUP_MAX_DISTANCE, DEDUP_EPS, DEDUP_MAX_ITER
DEFAULT_MAX_CLUSTER_ROWS = DEDUP_MAX_CLUSTER_ROWS
ROWS_PER_CLUSTER = 1000  # n_clusters=None: one cluster per this many samples
MAX_POINTS_PER_CENTROID = 256  # k-means trains on at most this many samples per cluster (faiss's own default)
METHOD_COLUMNS = {"exact": (C.IS_DUPLICATE, C.DUPLICATE_OF), "phash": (C.IS_DUPLICATE, C.DUPLICATE_OF, C.PHASH_DISTANCE),
                  "semantic": (C.IS_DUPLICATE, C.DUPLICATE_OF, C.CLUSTER, C.MAX_SIMILARITY)}


def hash_images(df, kinds=("sha256", "phash"), *, on_error: str = "report", storage_options: dict | None = None,
                draft_side: int | None = DRAFT_SIDE):
    """Add ``image_sha256`` (64 hex digits of the image member's bytes) and ``phash`` (16 hex
    digits, ``str(imagehash.phash(image))``'s format) to every row still in play.

    ``kinds``: which of ``"sha256"`` / ``"phash"``. Images come from the ``image`` column or, for a
    frame read with ``with_images=False``, by byte range from the source shards. JPEGs are decoded
    in draft mode at ``draft_side`` pixels or more (``None``: full size, ``imagehash``'s bits
    exactly). Images that cannot be fetched or decoded become failure rows under ``on_error``.
    """
    from ..common.errors import check_on_error
    from ..ops.hashing import check_kinds, hash_partition

    check_on_error(on_error)
    kinds = check_kinds(kinds)
    if draft_side is not None and (isinstance(draft_side, bool) or not isinstance(draft_side, int) or draft_side < 1):
        raise ValueError(f"draft_side must be a positive integer or None, got {draft_side!r}")
    options = dict(on_error=on_error, storage_options=storage_options, draft_side=draft_side)
    meta = hash_partition(df._meta, kinds, **options)
    return df.map_partitions(hash_partition, kinds, **options, meta=meta)


# ---------------------------------------------------------------------------------------
# Parameters, checked before anything is computed


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_options(method: str, keep: str, ascending: bool, seed: int, max_distance: int, eps: float,
                  n_clusters: int | None, max_iter: int, pairwise_batch_size: int,
                  max_cluster_rows: int = DEFAULT_MAX_CLUSTER_ROWS) -> None:
    """Raise ValueError naming the first bad parameter that needs no frame to check."""
    if method not in D.METHODS:
        raise ValueError(f"method must be one of {D.METHODS}, got {method!r}")
    if not _is_int(max_distance) or not 0 <= max_distance <= 32:
        raise ValueError(f"max_distance must be an integer from 0 to 32 (bits of the 64-bit pHash), got {max_distance!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1:
        raise ValueError(f"eps must be a number strictly between 0 and 1 (duplicates have cosine similarity >= 1 - eps), "
                         f"got {eps!r}")
    if n_clusters is not None and (not _is_int(n_clusters) or n_clusters < 1):
        raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    for name, value in (("max_iter", max_iter), ("pairwise_batch_size", pairwise_batch_size),
                        ("max_cluster_rows", max_cluster_rows)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(ascending, bool):
        raise ValueError(f"ascending must be True or False, got {ascending!r}")
    if not isinstance(keep, str):
        raise ValueError(f"keep must be 'first', 'random', 'hard', 'easy' or a column name, got {keep!r}")
    if keep in ("hard", "easy") and method != "semantic":
        raise ValueError(f"keep={keep!r} orders samples by their distance to a cluster centroid: method='semantic' only")


def check_frame(df, keep: str) -> None:
    """Raise ValueError when the frame lacks what the parameters name: the keep column, the source columns."""
    if keep not in D.KEEP_ORDERS:
        if keep not in df.columns:
            raise ValueError(f"keep must be 'first', 'random', 'hard', 'easy' or a column of the frame; "
                             f"there is no column {keep!r}")
        dtype = df._meta[keep].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            raise ValueError(f"keep={keep!r}: the column must hold numbers to order by, it holds {dtype}")
    missing = [name for name in (C.SOURCE_SHARD, C.SOURCE_INDEX) if name not in df.columns]
    if missing:
        raise ValueError(f"the frame has no {' or '.join(missing)} column, which name each sample in duplicate_of: "
                         "read it with imgcurate.read_webdataset (or keep those columns)")


def embedding_width(df, embedding_dim: int | None, embedder=None) -> int:
    """The width of the ``embedding`` column (or of what ``embedder`` will add), checked against
    ``embedding_dim`` and the embedder's; raises ValueError naming the parameter."""
    if embedding_dim is not None and (not _is_int(embedding_dim) or embedding_dim < 1):
        raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    expected = [(name, value) for name, value in (("embedding_dim", embedding_dim),
                                                  ("embedder", getattr(embedder, "dim", None))) if value is not None]
    if C.EMBEDDING in df.columns:
        dtype = df._meta[C.EMBEDDING].dtype
        arrow = getattr(dtype, "pyarrow_dtype", None)
        if arrow is None and dtype == object and expected:  # e.g. dask.dataframe.read_parquet's default: checked per partition
            return expected[0][1]
        if arrow is None or not (pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or pa.types.is_fixed_size_list(arrow)):
            raise ValueError(f"embedding: the column must hold float vectors (an Arrow list), it holds {dtype}; "
                             "read Parquet with dtype_backend='pyarrow', or pass embedding_dim=")
        if pa.types.is_fixed_size_list(arrow):
            width = arrow.list_size
            for name, value in expected:
                if value != width:
                    raise ValueError(f"embedding: the column is {width} wide but {name} is {value}; "
                                     "pass embeddings of the model they are to be compared with")
            if width < 2:
                raise ValueError(f"embedding: a {width}-wide embedding cannot be compared by cosine similarity")
            return width
        if not expected:
            raise ValueError("embedding_dim: the embedding column has no fixed width; pass embedding_dim=")
        return expected[0][1]
    if not expected:
        raise ValueError("the frame has no embedding column: pass embedder= (a CLIPImageEmbedder) to compute it")
    return expected[-1][1]


def count_rows(df) -> int:
    """The number of rows (computes the partitions' lengths, nothing else)."""
    return int(len(df))


# ---------------------------------------------------------------------------------------
# The global steps


def _signatures(df, method: str, keep: str, ascending: bool, seed: int, dim: int | None):
    options = dict(method=method, keep=keep, ascending=ascending, seed=seed, dim=dim)
    meta = D.signature_partition(df._meta, **options)
    return df.map_partitions(D.signature_partition, **options, meta=meta)


def _route(marks, destination, npartitions: int):
    """``marks`` moved to the partitions ``destination`` (a partition function setting ``_dest``) names:
    partition k of the result holds the marks destined to partition k (a shuffle of the marks only)."""
    destined = marks.map_partitions(destination, meta=destination(marks._meta))
    # partition k now holds what belongs to partition k of another frame: the frames are zipped by
    # position, and the result must keep that frame's divisions, not these
    return destined.set_index(D.DEST, divisions=list(range(npartitions + 1))).clear_divisions()


def _to_marked_sample(marks: pd.DataFrame) -> pd.DataFrame:
    return D.with_destination(marks, D.ROW)


def _shuffle(frame, column: str, npartitions: int):
    """``frame`` shuffled on ``column``. On a distributed cluster Dask's default (P2P); in-process,
    in memory (Dask's in-process default goes through files on disk, which doubled the semantic
    benchmark's time for signature rows that fit in memory anyway)."""
    from ..common.progress import active_client

    method = None if active_client() is not None else "tasks"
    return frame.shuffle(on=column, npartitions=npartitions, shuffle_method=method)


def _exact_groups(signatures, npartitions: int):
    return _shuffle(signatures[[D.ROW, D.ORDER, D.KEY]], D.KEY, npartitions)


def _exact_marks(signatures, npartitions: int):
    groups = _exact_groups(signatures, npartitions)
    return groups.map_partitions(D.exact_marks, meta=D.empty_marks())


def _phash_marks(signatures, npartitions: int, max_distance: int):
    import dask.dataframe as dd

    groups = _exact_groups(signatures, npartitions)
    copies = groups.map_partitions(D.exact_marks, meta=D.empty_marks())
    if max_distance == 0:
        return copies
    leaders = groups.map_partitions(D.exact_leaders, meta=D.exact_leaders(groups._meta))
    records = leaders.map_partitions(D.band_records, max_distance, meta=D.band_records(leaders._meta, max_distance))
    buckets = _shuffle(records, D.BUCKET, npartitions * (max_distance + 1))
    near = buckets.map_partitions(D.band_candidates, max_distance, meta=D.empty_marks())
    return dd.concat([copies, near])


def _semantic_marks(signatures, npartitions: int, n_clusters: int, fraction: float, max_iter: int, seed: int,
                    keep: str, eps: float, pairwise_batch_size: int, dim: int, max_cluster_rows: int):
    import dask
    import dask.dataframe as dd

    sample_meta = S.training_sample(signatures._meta, fraction)
    samples = signatures.map_partitions(S.training_sample, fraction, meta=sample_meta).to_delayed()
    # the centroids, and which clusters to split (estimated from the same sample), in one task
    plan = dask.delayed(S.cluster_plan, pure=True)(samples, n_clusters, max_iter, seed, fraction, max_cluster_rows)
    assign_meta = S.assign_clusters(signatures._meta, np.zeros((1, dim), np.float32), keep)
    records = signatures.map_partitions(S.cluster_pairs, plan, keep,
                                        meta=S.pair_records(assign_meta, np.ones(1, np.int64)))
    candidates = _shuffle(records, S.PAIR, npartitions).map_partitions(S.pair_marks, pairwise_batch_size,
                                                                       meta=S.candidates_empty())
    whole = candidates[~candidates[S.PARTIAL]].map_partitions(S.decide, eps, meta=S.semantic_empty())
    partials = _route(candidates[candidates[S.PARTIAL]], _to_marked_sample, npartitions)
    split = partials.map_partitions(S.combine_partials, eps, meta=S.semantic_empty())
    return dd.concat([whole, split])


def _attached_meta(marks_meta: pd.DataFrame, signatures_meta: pd.DataFrame) -> pd.DataFrame:
    return D.attach_sources(signatures_meta, D.with_destination(marks_meta, D.ROW))


def mark_duplicates(df, method: str, *, keep: str = "first", ascending: bool = True, seed: int = 42,
                    max_distance: int = DEFAULT_MAX_DISTANCE, eps: float = DEFAULT_EPS, n_clusters: int | None = None,
                    max_iter: int = DEFAULT_MAX_ITER, pairwise_batch_size: int = 256,
                    max_cluster_rows: int = DEFAULT_MAX_CLUSTER_ROWS, embedder=None,
                    embedding_dim: int | None = None, on_error: str = "report", storage_options: dict | None = None):
    """The frame with ``is_duplicate`` and ``duplicate_of`` (and, for ``method="phash"``,
    ``phash_distance``; for ``"semantic"``, ``cluster`` and ``max_similarity``). Lazy; the same
    partitions, rows and order as ``df``.

    The rule (README, "Deduplication"): order the samples by ``keep``; a sample is a duplicate iff
    some sample earlier in that order, kept or not, is within the threshold of it:

    * ``"exact"``: equal ``image_sha256``;
    * ``"phash"``: Hamming distance of ``phash`` at most ``max_distance`` (0–32, default 4);
    * ``"semantic"``: in the same k-means cluster (``n_clusters``, default one per 1,000 samples;
      faiss, spherical, ``max_iter`` iterations, ``seed``) and cosine similarity of the
      embeddings at least ``1 - eps`` (0 < eps < 1, default 0.01).

    ``duplicate_of`` is ``{source_shard, source_index}`` of the nearest such earlier sample (the
    earliest in keep order among equally near ones); null for samples that are not duplicates.
    ``keep``: ``"first"`` (input order), ``"random"`` (seeded by ``seed``), ``"hard"`` / ``"easy"``
    (semantic: farthest from / nearest to the centroid first, SemDeDup's ``keep_hard``), or a
    numeric column, smallest first (``ascending=False``: largest first; missing values last).
    Ties go to input order.

    Semantic pairs are compared within a cluster in blocks of ``pairwise_batch_size`` rows; a
    cluster of more than ``max_cluster_rows`` rows is split into chunks compared pair by pair (each
    row then travels once per chunk of its cluster): a pair is never split, a cluster is.

    Missing hashes or embeddings are computed first (``hash_images``; ``embed`` with ``embedder``).
    Samples that failed, were dropped, or have no hash / embedding take no part: never a
    duplicate, never what another duplicates. Bad parameters raise ValueError here, before any
    partition is computed (``n_clusters`` is checked against the number of rows, which are counted).
    """
    import dask.dataframe as dd

    from ..common.errors import check_on_error

    check_on_error(on_error)
    check_options(method, keep, ascending, seed, max_distance, eps, n_clusters, max_iter, pairwise_batch_size,
                  max_cluster_rows)
    check_frame(df, keep)
    dim = None
    if method == "semantic":
        if C.EMBEDDING not in df.columns and embedder is None:
            from ..models import CLIPImageEmbedder

            embedder = CLIPImageEmbedder()
        dim = embedding_width(df, embedding_dim, embedder if C.EMBEDDING not in df.columns else None)
        rows = count_rows(df)
        n_clusters = n_clusters if n_clusters is not None else max(1, math.ceil(rows / ROWS_PER_CLUSTER))
        if n_clusters > rows:
            raise ValueError(f"n_clusters={n_clusters} is larger than the number of rows ({rows})")
        if C.EMBEDDING not in df.columns:
            from .embedding import embed

            embedder.check_weights()
            df = embed(df, embedder, on_error=on_error, storage_options=storage_options)
    elif method == "exact" and C.IMAGE_SHA256 not in df.columns:
        df = hash_images(df, ("sha256",), on_error=on_error, storage_options=storage_options)
    elif method == "phash" and C.PHASH not in df.columns:
        df = hash_images(df, ("phash",), on_error=on_error, storage_options=storage_options)

    npartitions = df.npartitions
    signatures = _signatures(df, method, keep, ascending, seed, dim)
    if method == "exact":
        marks = _exact_marks(signatures, npartitions)
    elif method == "phash":
        marks = _phash_marks(signatures, npartitions, max_distance)
    else:
        fraction = min(1.0, n_clusters * MAX_POINTS_PER_CENTROID / max(rows, 1))
        marks = _semantic_marks(signatures, npartitions, n_clusters, fraction, max_iter, seed, keep, eps,
                                pairwise_batch_size, dim, max_cluster_rows)
    # each mark goes to the partition of the sample it names, for that sample's source_shard / source_index,
    # then to the partition of the sample it marks
    attached = signatures.map_partitions(D.attach_sources, _route(marks, D.to_named_sample, npartitions),
                                         align_dataframes=False, meta=_attached_meta(marks._meta, signatures._meta))
    routed = _route(attached, _to_marked_sample, npartitions)
    took_part = signatures[[D.ROW]]
    meta = D.apply_marks(df._meta, _attached_meta(marks._meta, signatures._meta), method, took_part._meta)
    marked = df.map_partitions(D.apply_marks, routed, method, took_part, align_dataframes=False, meta=meta)
    # one leaf for Dask: a mask such as marked[~marked.is_duplicate] is then known to share the frame's
    # partitions (with the shuffles above as its ancestors Dask would align the two by index, which
    # repeats across partitions)
    return dd.from_delayed(marked.to_delayed(), meta=meta, divisions=df.divisions, verify_meta=False)


def dedup(df, method: str, **options):
    """:func:`mark_duplicates` followed by the mask ``~is_duplicate``: the frame without its duplicates."""
    marked = mark_duplicates(df, method, **options)
    return marked[~marked[C.IS_DUPLICATE]]


def dedup_summary(marked, method: str, *, max_distance: int = DEFAULT_MAX_DISTANCE, eps: float = DEFAULT_EPS,
                  parameters: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """What ``marked`` (a result of :func:`mark_duplicates`, best persisted first: this computes it)
    holds, for the manifest and the report: samples considered, duplicates, samples that took no
    part and why, the distances of the duplicates (pHash: per Hamming distance; semantic: the
    histogram of ``max_similarity``), duplicates against the threshold (pHash: each
    ``max_distance`` up to the one used; semantic: a grid of ``eps``), and the first example
    pairs at each distance, both samples located in their source shards."""
    import dask

    from ..common.progress import compute

    parts = [dask.delayed(D.summary_partition)(part, method, max_distance, eps) for part in marked.to_delayed()]
    summary = D.combine_summaries(compute(parts, desc="dedup summary", progress=progress), method, eps)
    wanted = sorted({(e["original"][C.SOURCE_SHARD], e["original"][C.SOURCE_INDEX]) for e in summary["examples"]})
    if wanted:
        found = compute([dask.delayed(D.lookup_samples)(part, wanted) for part in marked.to_delayed()],
                        desc="dedup examples", progress=progress)
        located = {(s[C.SOURCE_SHARD], s[C.SOURCE_INDEX]): s for part in found for s in part}
        for example in summary["examples"]:
            original = example["original"]
            example["original"] = located.get((original[C.SOURCE_SHARD], original[C.SOURCE_INDEX]), original)
    return {"method": method, "parameters": parameters or {}, **summary}
