"""The deduplication rule against brute force: exact and pHash, global across partitions.

20,000 random 64-bit hashes with planted near pairs (0 to max_distance + 2 bits apart, anywhere in
the input, so most pairs cross partitions), a family of near-identical hashes and exact copies.
Brute force compares every pair; the Dask result must match it sample by sample, whatever the
number of partitions and whatever the keep order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import dask.dataframe as dd

import imgcurate
from imgcurate.common.backend import Backend
from imgcurate.ops import dedup as D

N = 20_000
SHARD_ROWS = 1000  # source_shard / source_index do not depend on how the frame is partitioned


@pytest.fixture(scope="module")
def hashes() -> np.ndarray:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 2**63, N, dtype=np.int64).view(np.uint64) | (rng.integers(0, 2, N).astype(np.uint64) << np.uint64(63))
    for _ in range(3000):  # planted pairs at 0..6 bits
        i, j = rng.integers(0, N, 2)
        value = values[i]
        for bit in rng.choice(64, rng.integers(0, 7), replace=False):
            value ^= np.uint64(1) << np.uint64(int(bit))
        values[j] = value
    family = values[11]
    for j in rng.integers(0, N, 60):  # many near-identical hashes: chains and ties
        value = family
        for bit in rng.choice(64, rng.integers(0, 4), replace=False):
            value ^= np.uint64(1) << np.uint64(int(bit))
        values[j] = value
    return values


def frame(hashes: np.ndarray, npartitions: int, scores: np.ndarray | None = None, nulls: np.ndarray | None = None):
    text = np.array([f"{int(v):016x}" for v in hashes], dtype=object)
    if nulls is not None:
        text[nulls] = None
    table = pa.table({
        "phash": pa.array(text.tolist(), pa.string()),
        "image_sha256": pa.array([None if t is None else t * 4 for t in text.tolist()], pa.string()),
        "score": pa.array(scores if scores is not None else np.zeros(len(hashes))),
        "source_shard": pa.array([f"shard-{i // SHARD_ROWS:03d}.tar" for i in range(len(hashes))]),
        "source_index": pa.array(np.arange(len(hashes)) % SHARD_ROWS),
    })
    bounds = np.linspace(0, len(hashes), npartitions + 1).astype(int)
    backend = Backend("pandas")
    return dd.concat([dd.from_pandas(backend.from_arrow(table.slice(a, b - a)), npartitions=1)
                      for a, b in zip(bounds[:-1], bounds[1:])])


def brute_force(hashes: np.ndarray, max_distance: int, order_key: np.ndarray, taking: np.ndarray):
    """For each sample: the nearest sample earlier in keep order (ties: the earliest) within
    max_distance, found by comparing every pair; (its row or -1, the distance or -1)."""
    n = len(hashes)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), order_key))] = np.arange(n)
    of = np.full(n, -1)
    distance = np.full(n, -1)
    for start in range(0, n, 1000):
        block = np.bitwise_count(hashes[start : start + 1000, None] ^ hashes[None, :])
        rows, columns = np.nonzero(block <= max_distance)
        rows_global = rows + start
        near = (rank[columns] < rank[rows_global]) & taking[columns] & taking[rows_global]
        rows, columns, rows_global = rows[near], columns[near], rows_global[near]
        found = block[rows, columns].astype(np.int64)
        best = np.lexsort((rank[columns], found, rows_global))
        first = np.r_[True, rows_global[best][1:] != rows_global[best][:-1]] if len(best) else np.zeros(0, bool)
        chosen = best[first]
        of[rows_global[chosen]] = columns[chosen]
        distance[rows_global[chosen]] = found[chosen]
    return of, distance


def named(result: pd.DataFrame) -> np.ndarray:
    """duplicate_of as a global row number (-1 for none)."""
    out = []
    for value in result.duplicate_of.tolist():
        if value is None or value is pd.NA:
            out.append(-1)
        else:
            out.append(int(value["source_shard"][6:9]) * SHARD_ROWS + value["source_index"])
    return np.array(out)


@pytest.mark.parametrize("keep", ["first", "score", "random"])
def test_phash_equals_brute_force_on_any_partitioning(hashes, keep):
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 50, N).astype(float)  # many ties: the input order decides them
    results = []
    for npartitions in (1, 3, 8):
        marked = imgcurate.mark_duplicates(frame(hashes, npartitions, scores), "phash", max_distance=4, keep=keep,
                                           ascending=False, seed=5)
        assert marked.npartitions == npartitions
        results.append(marked.compute(scheduler="threads"))
    for result in results[1:]:
        pd.testing.assert_frame_equal(result.reset_index(drop=True), results[0].reset_index(drop=True))
    result = results[0]
    if keep == "first":
        order = np.zeros(N)
    elif keep == "score":
        order = -scores
    else:
        order = D.unit_fraction(D.row_hash(result.source_shard.tolist(), result.source_index.tolist(), 5, "keep"))
    of, distance = brute_force(hashes, 4, order, np.ones(N, dtype=bool))
    assert (of >= 0).sum() > 1500  # the planted pairs and the family are there
    assert result.is_duplicate.tolist() == (of >= 0).tolist()
    assert named(result).tolist() == of.tolist()
    assert result.phash_distance.fillna(-1).astype(int).tolist() == distance.tolist()


def test_chains_are_not_transitive_and_earlier_duplicates_still_count():
    # a ~ b (3 bits), b ~ c (3 bits), a and c 6 bits apart; keep first at max_distance 4
    a = 0
    b = a ^ 0b111
    c = b ^ 0b111000
    result = imgcurate.mark_duplicates(frame(np.array([a, b, c], dtype=np.uint64), 2), "phash", max_distance=4).compute(
        scheduler="threads")
    assert result.is_duplicate.tolist() == [False, True, True]
    assert named(result).tolist() == [-1, 0, 1]  # c duplicates b, which is itself removed
    assert result.phash_distance.tolist()[1:] == [3, 3]


def test_exact_equals_brute_force_and_ignores_missing_hashes(hashes):
    rng = np.random.default_rng(4)
    nulls = rng.random(N) < 0.02
    results = [imgcurate.mark_duplicates(frame(hashes, p, nulls=nulls), "exact").compute(scheduler="threads") for p in (1, 5)]
    pd.testing.assert_frame_equal(results[0].reset_index(drop=True), results[1].reset_index(drop=True))
    of, _ = brute_force(hashes, 0, np.zeros(N), ~nulls)
    assert results[0].is_duplicate.tolist() == (of >= 0).tolist()
    assert named(results[0]).tolist() == of.tolist()
    assert not results[0].is_duplicate[nulls].any()
    assert "phash_distance" not in results[0].columns


def test_max_distance_zero_is_exact_on_the_hash(hashes):
    result = imgcurate.mark_duplicates(frame(hashes[:3000], 3), "phash", max_distance=0).compute(scheduler="threads")
    of, _ = brute_force(hashes[:3000], 0, np.zeros(3000), np.ones(3000, dtype=bool))
    assert named(result).tolist() == of.tolist()


def test_dedup_is_the_mask_of_mark_duplicates(hashes):
    df = frame(hashes[:2000], 2)
    marked = imgcurate.mark_duplicates(df, "phash").compute(scheduler="threads")
    kept = imgcurate.dedup(df, "phash").compute(scheduler="threads")
    assert kept.source_index.tolist() == marked[~marked.is_duplicate].source_index.tolist()


def test_bands_cover_the_hash_and_pigeonhole_holds():
    for max_distance in range(33):
        widths = [w for _, w in D.bands(max_distance)]
        assert sum(widths) == 64 and len(widths) == max_distance + 1
        masks = D.interleaved_masks(max_distance)
        assert sum(masks) == 2**64 - 1 and all(a & b == 0 for i, a in enumerate(masks) for b in masks[i + 1:])
