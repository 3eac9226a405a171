"""Semantic deduplication's partition functions: SemDeDup's rule, cut to fit any cluster size.

SemDeDup (Abbas et al., 2023) clusters the unit CLIP embeddings with spherical k-means and, inside
each cluster, orders the samples by ``keep`` and computes for each its largest cosine similarity M
to any sample earlier in that order; a sample with M >= 1 - eps is a duplicate (of the earlier
sample that gave M). Here:

* :func:`training_sample` and :func:`cluster_plan`: k-means (faiss) on a sample of at most 256
  rows per cluster, and from the same sample, how many chunks each cluster is cut into
  (:func:`chunk_counts`; 1 for every cluster below ``max_cluster_rows``).
* :func:`cluster_pairs`: each row's cluster (:func:`assign_clusters`) and the pairs of chunks it
  takes part in (:func:`pair_records`); the caller shuffles on ``_pair``.
* :func:`pair_marks`: M within each pair, in blocks (:func:`max_earlier_similarity` for a whole
  cluster or a chunk with itself, :func:`_earlier_across` for two chunks); :func:`decide` turns a
  whole cluster's M into marks, :func:`combine_partials` first reduces a cut cluster's partial M
  per row to the largest.

Signature rows, marks and the column names are those of :mod:`imgcurate.ops.dedup`.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd

from .dedup import CLUSTER, OF_ORDER, OF_ROW, ORDER, ROW, SAMPLE, SIMILARITY, VECTOR, vector_matrix

PAIR, CHUNK, PARTIAL = "_pair", "_chunk", "_partial"


def training_sample(signatures: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The signature rows chosen for k-means training (a hash of each sample's identity below
    ``fraction``: the same rows however the frame is partitioned)."""
    return signatures.loc[signatures[SAMPLE].to_numpy() < fraction, [ROW, VECTOR]]


FAISS_MIN_POINTS_PER_CENTROID = 39  # faiss.ClusteringParameters' default, below which faiss warns


def train_kmeans(samples: list[pd.DataFrame], n_clusters: int, max_iter: int, seed: int) -> np.ndarray | None:
    """faiss spherical k-means (SemDeDup's setting) on the training rows in input order; the unit
    centroids as an (n_clusters, dim) float32 array, or None when no sample takes part at all."""
    import faiss

    frame = pd.concat(samples, ignore_index=True) if samples else None
    if frame is None or not len(frame):
        return None
    frame = frame.iloc[np.argsort(frame[ROW].to_numpy(), kind="stable")]
    vectors = vector_matrix(frame[VECTOR])
    if len(vectors) < n_clusters:
        raise ValueError(f"n_clusters={n_clusters} is more than the {len(vectors)} samples drawn to train k-means "
                         f"(those with an embedding); lower n_clusters")
    if len(vectors) < n_clusters * FAISS_MIN_POINTS_PER_CENTROID:
        warnings.warn(f"k-means trains on {len(vectors)} samples for n_clusters={n_clusters}: faiss advises at least "
                      f"{FAISS_MIN_POINTS_PER_CENTROID} per cluster ({n_clusters * FAISS_MIN_POINTS_PER_CENTROID}); "
                      f"the clusters may be poor (a smaller n_clusters gives each more samples)", UserWarning, stacklevel=2)
    # faiss's own advice about the same goes to stderr from C++; it is given once, above, as a warning
    kmeans = faiss.Kmeans(vectors.shape[1], n_clusters, niter=max_iter, seed=seed, spherical=True,
                          max_points_per_centroid=1 << 30, min_points_per_centroid=1, verbose=False)
    kmeans.train(vectors)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def _nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's cosine similarity to its nearest centroid, and that centroid's number."""
    import faiss

    if not len(vectors):
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    similarity, nearest = index.search(vectors, 1)
    return similarity[:, 0], nearest[:, 0]


def assign_clusters(signatures: pd.DataFrame, centroids: np.ndarray, keep: str) -> pd.DataFrame:
    """``_cluster`` (nearest centroid by cosine) for every signature row; for ``keep="hard"`` /
    ``"easy"`` the keep order becomes the cosine distance to that centroid, descending / ascending."""
    if centroids is None:  # nothing took part: nothing to assign
        signatures, centroids = signatures.iloc[:0], np.zeros((1, 1), np.float32)
    vectors = vector_matrix(signatures[VECTOR]) if len(signatures) else np.zeros((0, centroids.shape[1]), np.float32)
    similarity, nearest = _nearest_centroid(vectors, centroids)
    out = signatures[[ROW, ORDER, VECTOR]].copy()
    out[CLUSTER] = nearest.astype(np.int32)
    distance = 1.0 - similarity.astype(np.float64)
    if keep == "hard":  # SemDeDup's keep_hard: the farthest from the centroid first
        out[ORDER] = -distance
    elif keep == "easy":
        out[ORDER] = distance
    return out


def semantic_empty() -> pd.DataFrame:
    return pd.DataFrame({ROW: np.zeros(0, np.int64), OF_ROW: np.zeros(0, np.int64), OF_ORDER: np.zeros(0),
                         SIMILARITY: np.zeros(0, np.float32), CLUSTER: np.zeros(0, np.int32)})


@functools.lru_cache(maxsize=8)
def _on_or_above_diagonal(size: int) -> np.ndarray:
    return ~np.tri(size, size, -1, dtype=bool)


def _keep_best(best: np.ndarray, best_at: np.ndarray, sims: np.ndarray, first_column: int) -> None:
    """Fold a block of similarities into the running maximum per row (ties keep the earlier column)."""
    at = sims.argmax(axis=1)
    value = sims[np.arange(len(at)), at]
    better = value > best
    best[better], best_at[better] = value[better], at[better] + first_column


def max_earlier_similarity(vectors: np.ndarray, block_rows: int = 256, block_columns: int = 8192
                           ) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup's per-cluster step on rows already in keep order: for each row, the largest cosine
    similarity to any row before it, clipped below at 0 (the first row gets 0), and the position of
    that row (-1 where there is none above 0). Blocks of ``block_rows`` × ``block_columns``
    similarities, so memory does not grow with the square of the cluster; only pairs of a row with
    an earlier one are computed (about half the matrix)."""
    n = len(vectors)
    best = np.zeros(n, dtype=np.float32)
    best_at = np.full(n, -1, dtype=np.int64)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        rows = vectors[start:stop]
        row_best, row_at = best[start:stop], best_at[start:stop]  # views: updated in place
        for column in range(0, start, block_columns):  # rows before the block: every pair counts
            _keep_best(row_best, row_at, rows @ vectors[column : min(start, column + block_columns)].T, column)
        inside = rows @ rows.T  # the block itself: only the pairs below the diagonal
        inside[_on_or_above_diagonal(stop - start)] = -np.inf
        _keep_best(row_best, row_at, inside, start)
    return best, best_at


def chunk_counts(samples: list[pd.DataFrame], centroids: np.ndarray | None, fraction: float,
                 max_cluster_rows: int) -> np.ndarray:
    """Chunks per cluster (indexed by cluster number), from the k-means training sample: each
    cluster's share of it, scaled up by ``1 / fraction`` with a quarter's margin, cut into chunks of
    at most ``max_cluster_rows`` rows (1: a whole cluster). Only how the work is cut depends on this
    estimate, never the result: any chunking finds the same duplicates."""
    if centroids is None:
        return np.ones(1, dtype=np.int64)
    frame = pd.concat(samples, ignore_index=True) if samples else None
    counts = np.zeros(len(centroids), dtype=np.int64)
    if frame is not None and len(frame):
        nearest = _nearest_centroid(vector_matrix(frame[VECTOR]), centroids)[1]
        counts = np.bincount(nearest, minlength=len(centroids))
    estimate = np.ceil(counts / max(fraction, 1e-12) * (1.25 if fraction < 1 else 1.0))
    return np.maximum(1, np.ceil(estimate / max_cluster_rows)).astype(np.int64)


def cluster_plan(samples: list[pd.DataFrame], n_clusters: int, max_iter: int, seed: int, fraction: float,
                 max_cluster_rows: int) -> tuple[np.ndarray | None, np.ndarray]:
    """One task: the k-means centroids (:func:`train_kmeans`) and the chunks of each cluster
    (:func:`chunk_counts`), from the same training sample."""
    centroids = train_kmeans(samples, n_clusters, max_iter, seed)
    return centroids, chunk_counts(samples, centroids, fraction, max_cluster_rows)


def cluster_pairs(signatures: pd.DataFrame, plan: tuple[np.ndarray | None, np.ndarray], keep: str) -> pd.DataFrame:
    """:func:`assign_clusters`, then :func:`pair_records`, with :func:`cluster_plan`'s result."""
    centroids, chunks = plan
    return pair_records(assign_clusters(signatures, centroids, keep), chunks)


def pair_records(clustered: pd.DataFrame, chunks: np.ndarray) -> pd.DataFrame:
    """Each row with the chunk pairs it takes part in, as ``_pair`` (shuffled on) and ``_chunk``.

    A cluster of one chunk is one pair: its rows once. A cluster split into ``m`` chunks (a row's
    chunk is its ``_row`` modulo ``m``) is ``m (m + 1) / 2`` pairs, each row in the ``m`` that hold
    its chunk, so that every two rows of the cluster meet in exactly one pair and no pair holds
    more than two chunks."""
    widest = int(chunks.max())
    clusters = clustered[CLUSTER].to_numpy().astype(np.int64)
    m = chunks[clusters]
    if (m == 1).all():  # no split cluster here: the rows as they are (the vectors are not copied)
        return clustered.assign(**{CHUNK: np.zeros(len(clustered), np.int64), PAIR: clusters * widest * widest,
                                   PARTIAL: np.zeros(len(clustered), bool)})
    chunk = clustered[ROW].to_numpy() % m
    repeat = np.repeat(np.arange(len(clustered)), m)
    other = np.arange(len(repeat)) - np.repeat(np.cumsum(m) - m, m)  # 0 .. m - 1 for each row
    mine = chunk[repeat]
    low, high = np.minimum(mine, other), np.maximum(mine, other)
    out = clustered.iloc[repeat].reset_index(drop=True)
    out[CHUNK] = mine
    out[PAIR] = (clusters[repeat] * widest + low) * widest + high
    out[PARTIAL] = m[repeat] > 1
    return out


def _earlier_across(left: np.ndarray, left_rank: np.ndarray, right: np.ndarray, right_rank: np.ndarray,
                    block_rows: int = 256, block_columns: int = 8192
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two chunks of a cluster, each in keep order (``*_rank``: positions in the pair's keep
    order): for each row of each, the largest similarity to a row of the other that comes earlier,
    clipped below at 0, and where that row is (-1: none above 0; ties keep the earlier row).
    One product per block serves both directions."""
    left_best, left_at = np.zeros(len(left), np.float32), np.full(len(left), -1, np.int64)
    right_best, right_at = np.zeros(len(right), np.float32), np.full(len(right), -1, np.int64)
    for column in range(0, len(right), block_columns):
        end = min(len(right), column + block_columns)
        for start in range(0, len(left), block_rows):
            stop = min(len(left), start + block_rows)
            sims = left[start:stop] @ right[column:end].T
            right_first = right_rank[None, column:end] < left_rank[start:stop, None]
            _keep_best(left_best[start:stop], left_at[start:stop], np.where(right_first, sims, -np.inf), column)
            _keep_best(right_best[column:end], right_at[column:end], np.where(right_first, -np.inf, sims).T, start)
    return left_best, left_at, right_best, right_at


def pair_marks(bucketed: pd.DataFrame, block_rows: int = 256) -> pd.DataFrame:
    """After a shuffle on ``_pair``: SemDeDup's M for every row of every pair (the largest cosine
    similarity to a row earlier in keep order, at least 0) and that row as ``_of_row`` (-1: none
    above 0). For a whole cluster this is the row's answer; for a chunk pair of a split cluster it
    is one of ``m`` partial answers (``_partial``), combined by :func:`combine_partials`."""
    if not len(bucketed):
        return candidates_empty()
    rows, orders, pairs = (bucketed[name].to_numpy() for name in (ROW, ORDER, PAIR))
    chunk = bucketed[CHUNK].to_numpy()
    order = np.lexsort((rows, orders, pairs))  # by pair, then keep order, then input order
    rows, orders, pairs, chunk = rows[order], orders[order], pairs[order], chunk[order]
    vectors = vector_matrix(bucketed[VECTOR])[order]  # numpy's gather: cheaper than sorting the binary column
    similarity = np.zeros(len(rows), dtype=np.float32)
    of = np.full(len(rows), -1, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, pairs[1:] != pairs[:-1]])
    for start, stop in zip(starts, np.r_[starts[1:], len(rows)]):
        first_chunk = chunk[start:stop] == chunk[start]
        if first_chunk.all():  # a whole cluster, or a chunk with itself
            best, at = max_earlier_similarity(vectors[start:stop], block_rows)
            similarity[start:stop] = best
            of[start:stop] = np.where(at >= 0, at + start, -1)
            continue
        left, right = np.flatnonzero(first_chunk) + start, np.flatnonzero(~first_chunk) + start
        left_best, left_at, right_best, right_at = _earlier_across(vectors[left], left, vectors[right], right, block_rows)
        similarity[left], of[left] = left_best, np.where(left_at >= 0, right[np.maximum(left_at, 0)], -1)
        similarity[right], of[right] = right_best, np.where(right_at >= 0, left[np.maximum(right_at, 0)], -1)
    return pd.DataFrame({ROW: rows, OF_ROW: np.where(of >= 0, rows[np.maximum(of, 0)], -1),
                         OF_ORDER: np.where(of >= 0, orders[np.maximum(of, 0)], 0.0), SIMILARITY: similarity,
                         CLUSTER: bucketed[CLUSTER].to_numpy()[order].astype(np.int32),
                         PARTIAL: bucketed[PARTIAL].to_numpy()[order]})


def candidates_empty() -> pd.DataFrame:
    return semantic_empty().assign(**{PARTIAL: np.zeros(0, bool)})


def combine_partials(partials: pd.DataFrame, eps: float) -> pd.DataFrame:
    """The partial answers of a split cluster's rows (routed to the rows' partitions) reduced to
    one per row: the largest similarity, ties to the earliest row in keep order; then decided."""
    partials = partials.reset_index(drop=True)
    if len(partials):
        order = np.lexsort([partials[OF_ROW].to_numpy(), partials[OF_ORDER].to_numpy(),
                            -partials[SIMILARITY].to_numpy(), partials[ROW].to_numpy()])
        partials = partials.iloc[order]
        rows = partials[ROW].to_numpy()
        partials = partials.iloc[np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])]
    return decide(partials, eps)


def decide(candidates: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Semantic marks from candidates: a row is a duplicate of its ``_of_row`` when their similarity
    is at least ``1 - eps``; other rows name none (-1) but keep their cluster and similarity."""
    duplicate = (candidates[SIMILARITY].to_numpy().astype(np.float64) >= 1.0 - eps) & (candidates[OF_ROW].to_numpy() >= 0)
    return pd.DataFrame({ROW: candidates[ROW].to_numpy(), OF_ROW: np.where(duplicate, candidates[OF_ROW].to_numpy(), -1),
                         OF_ORDER: np.where(duplicate, candidates[OF_ORDER].to_numpy(), 0.0),
                         SIMILARITY: candidates[SIMILARITY].to_numpy(), CLUSTER: candidates[CLUSTER].to_numpy()})
