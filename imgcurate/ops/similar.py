"""Partition function that marks rows whose embedding is close to a set of reference vectors.

The references are an index (``imgcurate.build_index``: an evaluation set, say) or a matrix of
unit embeddings. A row is marked when some reference has an inner product with its embedding at
or above ``min_similarity``; the test is exact on every index kind (the index's range search).
Rows without an embedding (failed, or never embedded) are not marked. This is the decontamination
step: ``df[~df.similar]`` keeps what is not too close to the evaluation images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..common import columns as C
from ..common.backend import backend_of
from .embed import embedding_matrix
from .rows import set_column


@dataclass(frozen=True, eq=False)
class SimilarityTarget:
    """What rows are compared with: an index directory, or reference vectors (rows × width). Small and picklable:
    an index travels as its path and is opened once per worker process."""

    index_dir: str | None = None
    vectors: np.ndarray | None = None
    model_id: str | None = None
    dim: int = 0

    @classmethod
    def of(cls, index_or_queries, model_id: str | None = None) -> "SimilarityTarget":
        """From an index (opened, or its directory) or an array of embeddings; checks it before any data is read."""
        from ..retrieval.query import SearchIndex, open_index

        if isinstance(index_or_queries, (str, os.PathLike, SearchIndex)):
            index = open_index(index_or_queries)
            if model_id and index.model_id and model_id != index.model_id:
                raise ValueError(f"the index holds embeddings of {index.model_id!r}, not of {model_id!r}")
            return cls(index_dir=index.directory, model_id=index.model_id or model_id, dim=index.dim)
        vectors = np.asarray(index_or_queries, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or not len(vectors):
            raise ValueError("give an index, its directory, or a non-empty (n, width) array of reference embeddings")
        return cls(vectors=np.ascontiguousarray(vectors), model_id=model_id, dim=vectors.shape[1])

    def any_within(self, matrix: np.ndarray, min_similarity: float) -> np.ndarray:
        """For each row of ``matrix``, whether a reference lies at or above ``min_similarity``."""
        if not len(matrix):
            return np.zeros(0, dtype=bool)
        if self.vectors is not None:
            best = np.full(len(matrix), -np.inf, dtype=np.float32)
            for start in range(0, len(self.vectors), 4096):  # bounded memory for large reference sets
                block = matrix @ self.vectors[start : start + 4096].T
                best = np.maximum(best, block.max(axis=1))
            return best >= min_similarity
        from ..retrieval.query import open_index

        return np.array([len(ids) > 0 for ids, _ in open_index(self.index_dir).within(matrix, min_similarity, k=1)])


def check_width(table_or_type, target: SimilarityTarget) -> None:
    column_type = table_or_type
    if pa.types.is_fixed_size_list(column_type) and column_type.list_size != target.dim:
        raise ValueError(f"dimension mismatch: the embeddings are {column_type.list_size}-d, the references {target.dim}-d")


def mark_similar_table(table: pa.Table, target: SimilarityTarget, min_similarity: float, column: str) -> pa.Table:
    """:func:`mark_similar_partition` on an Arrow table."""
    if C.EMBEDDING not in table.column_names:
        raise ValueError(f"no {C.EMBEDDING!r} column to compare: embed the images first (imgcurate.embed)")
    check_width(table.column(C.EMBEDDING).type, target)
    if target.model_id and C.EMBEDDING_MODEL in table.column_names:
        models = {m for m in pc.unique(table.column(C.EMBEDDING_MODEL)).to_pylist() if m}
        other = sorted(models - {target.model_id})
        if other:
            raise ValueError(f"the references are embeddings of {target.model_id!r}, the rows of {', '.join(other)}")
    rows, matrix = embedding_matrix(table.column(C.EMBEDDING))
    marked = np.zeros(len(table), dtype=bool)
    if len(rows):
        if matrix.shape[1] != target.dim:
            raise ValueError(f"dimension mismatch: the embeddings are {matrix.shape[1]}-d, the references {target.dim}-d")
        marked[rows] = target.any_within(matrix, min_similarity)
    return set_column(table, column, pa.array(marked, pa.bool_()))


def mark_similar_partition(frame, target: SimilarityTarget, min_similarity: float, column: str = "similar"):
    """``frame`` with a boolean ``column``: True where the row's embedding is within ``min_similarity`` of a reference."""
    backend = backend_of(frame)
    return backend.from_arrow(mark_similar_table(backend.to_arrow(frame), target, min_similarity, column))


def keep_matches_table(table: pa.Table, matches: dict[str, dict[int, float]]) -> pa.Table:
    """The rows named in ``matches`` (source shard → {source index: similarity}), with a ``similarity`` column."""
    shards = table.column(C.SOURCE_SHARD).to_pylist() if len(table) else []
    indexes = table.column(C.SOURCE_INDEX).to_pylist() if len(table) else []
    found = [matches.get(shard, {}).get(index) for shard, index in zip(shards, indexes)]
    keep = np.array([value is not None for value in found], dtype=bool)
    kept = table.filter(pa.array(keep)) if len(table) else table
    scores = pa.array([value for value in found if value is not None], pa.float32())
    return set_column(kept, "similarity", scores)


def keep_matches_partition(frame, matches: dict[str, dict[int, float]]):
    """``frame`` cut to the rows a search found (``source_shard``, ``source_index``), with their ``similarity``."""
    backend = backend_of(frame)
    return backend.from_arrow(keep_matches_table(backend.to_arrow(frame), matches))
