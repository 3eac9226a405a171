"""Semantic deduplication against a direct implementation of SemDeDup's rule.

The reference below is SemDeDup's per-cluster step as facebookresearch/SemDeDup's ``semdedup.py``
does it (torch: the cluster's similarity matrix, diagonal zeroed, upper triangle, column maximum),
applied to the cluster assignments our run produced and in our keep order; our blocked, shuffled
result must equal it sample by sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

import dask.dataframe as dd

import imgcurate
from imgcurate.common.backend import Backend
from imgcurate.ops import dedup as D

N, DIM, K = 4000, 48, 12
SHARD_ROWS = 500


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(K, DIM))
    x = centres[rng.integers(0, K, N)] + 0.7 * rng.normal(size=(N, DIM))
    for _ in range(400):  # near copies, anywhere in the input
        i, j = rng.integers(0, N, 2)
        x[j] = x[i] + rng.normal(scale=rng.choice([0.0, 0.01, 0.05]), size=DIM)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    nulls = rng.random(N) < 0.02
    return x, nulls


def frame(x: np.ndarray, nulls: np.ndarray, npartitions: int, scores: np.ndarray | None = None):
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    embedding = pa.compute.if_else(pa.array(~nulls), embedding, pa.scalar(None, embedding.type))
    table = pa.table({"embedding": embedding, "score": pa.array(scores if scores is not None else np.zeros(len(x))),
                      "source_shard": pa.array([f"s{i // SHARD_ROWS:02d}" for i in range(len(x))]),
                      "source_index": pa.array(np.arange(len(x)) % SHARD_ROWS)})
    bounds = np.linspace(0, len(x), npartitions + 1).astype(int)
    backend = Backend("pandas")
    return dd.concat([dd.from_pandas(backend.from_arrow(table.slice(a, b - a)), npartitions=1)
                      for a, b in zip(bounds[:-1], bounds[1:])])


def semdedup_reference(x: np.ndarray, clusters: np.ndarray, order: np.ndarray, eps: float):
    """SemDeDup's rule given the clusters: (M, duplicate, most similar earlier row) per sample."""
    m = np.full(len(x), np.nan)
    of = np.full(len(x), -1)
    for cluster in np.unique(clusters[clusters >= 0]):
        members = np.flatnonzero(clusters == cluster)
        members = members[np.lexsort((members, order[members]))]  # keep order, ties by input order
        reps = torch.tensor(x[members])
        pair_w_sim_matrix = reps @ reps.T
        pair_w_sim_matrix.fill_diagonal_(0.0)
        triu = torch.triu(pair_w_sim_matrix, diagonal=1)
        values, at = torch.max(triu, dim=0)
        m[members] = values.numpy()
        of[members] = np.where(values.numpy() > 0, members[at.numpy()], -1)
    duplicate = m >= 1 - eps
    return m, duplicate, np.where(duplicate, of, -1)


def named(result: pd.DataFrame) -> np.ndarray:
    return np.array([-1 if v is None or v is pd.NA else int(v["source_shard"][1:]) * SHARD_ROWS + v["source_index"]
                     for v in result.duplicate_of.tolist()])


@pytest.mark.parametrize("keep", ["first", "hard", "easy", "random", "score"])
def test_semantic_equals_semdedup_given_the_same_clusters(vectors, keep):
    x, nulls = vectors
    scores = np.random.default_rng(1).normal(size=N)
    eps = 0.02
    results = [imgcurate.mark_duplicates(frame(x, nulls, p, scores), "semantic", n_clusters=K, eps=eps, keep=keep,
                                         ascending=False, max_iter=10, seed=3).compute(scheduler="threads")
               for p in (1, 4)]
    pd.testing.assert_frame_equal(results[0].reset_index(drop=True), results[1].reset_index(drop=True))
    result = results[0]
    clusters = result.cluster.fillna(-1).astype(int).to_numpy()
    assert (clusters[nulls] == -1).all() and (clusters[~nulls] >= 0).all()
    assert len(np.unique(clusters[~nulls])) > K // 2
    if keep == "first":
        order = np.zeros(N)
    elif keep == "score":
        order = -scores
    elif keep == "random":
        order = D.unit_fraction(D.row_hash(result.source_shard.tolist(), result.source_index.tolist(), 3, "keep"))
    else:
        # hard / easy: the cosine distance to the assigned centroid, the centroids trained again from
        # the same sample with the same seed
        signatures = D.signature_partition(frame(x, nulls, 1).compute(), "semantic", seed=3, dim=DIM)
        fraction = min(1.0, K * 256 / N)
        centroids = D.train_kmeans([D.training_sample(signatures, fraction)], K, 10, 3)
        distance = 1.0 - np.einsum("ij,ij->i", x.astype(np.float64), centroids[np.maximum(clusters, 0)].astype(np.float64))
        order = -distance if keep == "hard" else distance
    m, duplicate, of = semdedup_reference(x, clusters, order, eps)
    assert duplicate[~nulls].sum() > 100
    assert result.is_duplicate.tolist() == duplicate.tolist()
    similarity = result.max_similarity.to_numpy(dtype=float, na_value=np.nan)
    np.testing.assert_allclose(similarity[~nulls], m[~nulls], atol=1e-5)
    assert np.isnan(similarity[nulls]).all()
    clear = np.abs(m - (1 - eps)) > 1e-4  # away from the threshold, float rounding cannot flip a decision
    assert (named(result)[clear & duplicate] == of[clear & duplicate]).all()


def test_the_block_computation_equals_the_whole_matrix():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(700, 16)).astype(np.float32)
    x[300] = x[10]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    best, at = D.max_earlier_similarity(x, block_rows=64, block_columns=100)
    whole = torch.triu(torch.tensor(x) @ torch.tensor(x).T, diagonal=1)
    values, where = torch.max(whole, dim=0)
    np.testing.assert_allclose(best, values.numpy(), atol=1e-6)
    positive = values.numpy() > 0
    assert (at[positive] == where.numpy()[positive]).all() and (at[~positive] == -1).all()
    assert at[300] == 10 and best[300] == pytest.approx(1.0, abs=1e-6) and best[0] == 0


def bad_frame():
    """A frame whose partitions raise when computed: the checks must not compute them."""
    meta = Backend("pandas").from_arrow(pa.table({
        "embedding": pa.array([], pa.list_(pa.float32(), 8)), "phash": pa.array([], pa.string()),
        "score": pa.array([], pa.float64()), "caption": pa.array([], pa.string()),
        "source_shard": pa.array([], pa.string()), "source_index": pa.array([], pa.int64())}))

    def explode(_):
        raise RuntimeError("a partition was computed")

    return dd.from_map(explode, [0, 1], meta=meta, enforce_metadata=False)


@pytest.mark.parametrize("options, parameter", [
    ({"method": "semantic", "eps": 0.0}, "eps"),
    ({"method": "semantic", "eps": 1.5}, "eps"),
    ({"method": "phash", "max_distance": 33}, "max_distance"),
    ({"method": "phash", "max_distance": -1}, "max_distance"),
    ({"method": "phash", "max_distance": 2.5}, "max_distance"),
    ({"method": "semantic", "n_clusters": 0}, "n_clusters"),
    ({"method": "semantic", "embedding_dim": 768}, "embedding"),
    ({"method": "phash", "keep": "hard"}, "keep"),
    ({"method": "phash", "keep": "no_such_column"}, "keep"),
    ({"method": "phash", "keep": "caption"}, "keep"),
    ({"method": "fuzzy"}, "method"),
    ({"method": "phash", "pairwise_batch_size": 0}, "pairwise_batch_size"),
])
def test_bad_parameters_are_refused_before_any_partition_is_computed(options, parameter):
    options = dict(options)
    method = options.pop("method")
    with pytest.raises(ValueError, match=parameter):
        imgcurate.mark_duplicates(bad_frame(), method, **options)


def test_n_clusters_is_checked_against_the_number_of_rows(vectors):
    x, nulls = vectors
    with pytest.raises(ValueError, match="n_clusters=5000 is larger than the number of rows"):
        imgcurate.mark_duplicates(frame(x[:100], nulls[:100], 2), "semantic", n_clusters=5000)


def test_a_frame_without_embeddings_or_source_columns_is_refused(vectors):
    x, nulls = vectors
    df = frame(x[:50], nulls[:50], 1)
    with pytest.raises(ValueError, match="source_index"):
        imgcurate.mark_duplicates(df.drop(columns=["source_index"]), "semantic", n_clusters=2)
    with pytest.raises(ValueError, match="embedding"):
        imgcurate.mark_duplicates(df.assign(embedding=df.score), "semantic", n_clusters=2)


def test_marking_is_lazy():
    for method in ("exact", "phash"):
        marked = imgcurate.mark_duplicates(bad_frame().assign(image_sha256=bad_frame().caption), method)
        assert {"is_duplicate", "duplicate_of"} <= set(marked.columns)
        with pytest.raises(RuntimeError, match="a partition was computed"):
            marked.compute(scheduler="sync")
