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
from imgcurate.ops import semantic as S

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


@pytest.mark.parametrize("keep, max_cluster_rows", [("first", 100_000), ("hard", 100_000), ("easy", 100_000),
                                                    ("random", 100_000), ("score", 100_000),
                                                    ("first", 60), ("hard", 97), ("score", 150)])
def test_semantic_equals_semdedup_given_the_same_clusters(vectors, keep, max_cluster_rows):
    """Whole clusters (~330 rows each), and clusters split into chunks of at most 60, 97 or 150 rows
    compared pair by pair: the same answer as SemDeDup's whole similarity matrix."""
    x, nulls = vectors
    scores = np.random.default_rng(1).normal(size=N)
    eps = 0.02
    results = [imgcurate.mark_duplicates(frame(x, nulls, p, scores), "semantic", n_clusters=K, eps=eps, keep=keep,
                                         ascending=False, max_iter=10, seed=3, max_cluster_rows=max_cluster_rows
                                         ).compute(scheduler="threads")
               for p in (1, 4)]
    compare = pd.testing.assert_frame_equal if max_cluster_rows > N else _equal_up_to_rounding
    compare(results[0].reset_index(drop=True), results[1].reset_index(drop=True))
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
        centroids = S.train_kmeans([S.training_sample(signatures, fraction)], K, 10, 3)
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


def _equal_up_to_rounding(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Split clusters are chunked by row number, so other partitionings pair rows in other products:
    the same decisions, similarities equal to float32 rounding."""
    pd.testing.assert_frame_equal(a.drop(columns=["max_similarity"]), b.drop(columns=["max_similarity"]))
    np.testing.assert_allclose(a.max_similarity.to_numpy(dtype=float, na_value=np.nan),
                               b.max_similarity.to_numpy(dtype=float, na_value=np.nan), atol=1e-6)


def test_a_split_cluster_meets_every_pair_of_its_rows_once():
    """The chunk pairs of a cluster of 10 rows split into 3 chunks: each two rows are compared in
    exactly one pair (a pair of two chunks compares rows across them; a chunk with itself, within)."""
    clustered = pd.DataFrame({D.ROW: np.arange(10, dtype=np.int64), D.ORDER: np.zeros(10), D.VECTOR: [b""] * 10,
                              D.CLUSTER: np.zeros(10, np.int32)})
    records = S.pair_records(clustered, np.array([3]))
    assert records[S.PARTIAL].all() and len(records) == 30
    met = {}
    for _, group in records.groupby(S.PAIR):
        chunk = dict(zip(group[D.ROW], group[S.CHUNK]))
        assert len(set(chunk.values())) <= 2
        across = len(set(chunk.values())) == 2
        for i in chunk:
            for j in chunk:
                if i < j and (chunk[i] != chunk[j] or not across):
                    met[i, j] = met.get((i, j), 0) + 1
    assert met == {(i, j): 1 for i in range(10) for j in range(i + 1, 10)}
    assert not S.pair_records(clustered, np.array([1]))[S.PARTIAL].any()


def test_chunks_are_estimated_from_the_training_sample():
    rng = np.random.default_rng(2)
    centroids = np.eye(3, 8, dtype=np.float32)
    vectors = np.repeat(centroids, [300, 50, 10], axis=0) + 0.01 * rng.normal(size=(360, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sample = pd.DataFrame({D.ROW: np.arange(360), D.VECTOR: pd.arrays.ArrowExtensionArray(D.pack_vectors(vectors))})
    # a tenth sampled: about 3,000, 500 and 100 rows, with a quarter's margin, in chunks of at most 1,000
    assert S.chunk_counts([sample], centroids, 0.1, 1000).tolist() == [4, 1, 1]
    assert S.chunk_counts([sample], centroids, 1.0, 100).tolist() == [3, 1, 1]  # everything sampled: exact
    assert S.chunk_counts([], None, 0.1, 1000).tolist() == [1]


def test_the_block_computation_equals_the_whole_matrix():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(700, 16)).astype(np.float32)
    x[300] = x[10]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    best, at = S.max_earlier_similarity(x, block_rows=64, block_columns=100)
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
    ({"method": "semantic", "max_cluster_rows": 0}, "max_cluster_rows"),
    ({"method": "semantic", "max_cluster_rows": 1.5}, "max_cluster_rows"),
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


def test_kmeans_on_few_samples_warns_once_in_python_and_faiss_prints_nothing(capfd):
    """faiss's own advice (C++ on stderr) is replaced by one Python warning; the centroids are faiss's."""
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = pd.DataFrame({D.ROW: np.arange(60), D.VECTOR: pd.Series(D.pack_vectors(vectors), dtype=pd.ArrowDtype(pa.large_binary()))})
    with pytest.warns(UserWarning, match=r"k-means trains on 60 samples for n_clusters=4: faiss advises at least 39 per cluster \(156\)"):
        centroids = S.train_kmeans([rows], 4, 10, 3)
    assert "WARNING clustering" not in capfd.readouterr().err
    plain = faiss.Kmeans(8, 4, niter=10, seed=3, spherical=True, max_points_per_centroid=1 << 30, verbose=False)
    plain.train(vectors)
    np.testing.assert_array_equal(centroids, plain.centroids)
