"""Search an index by text, by example images or by embeddings.

One query, walked through (docs/architecture.md, "Search"):

1. the query becomes a unit vector: text through the CLIP text tower (``CLIPModel.embed_text``),
   images through the same decode (:func:`~imgcurate.ops.decode.decode_batch`) and image tower as the
   dataset, after checking that the model is the one the index records (``model_id``);
2. faiss proposes candidates: every vector for ``flat``; for ``ivfpq`` the best ``rerank × k`` by
   their compressed codes in ``nprobe`` lists; for ``hnsw`` the graph's best ``rerank × k``;
3. the candidates are re-ranked exactly: their exported vectors are read from the memory-mapped
   ``.npy`` files and the inner products computed in float32, so every similarity returned is exact;
4. the results' metadata is read from the Parquet files by row group, only the groups that hold
   a result.

A range query (``min_similarity``) must find *every* vector at or above the threshold, which the
codes and the graph cannot promise (faiss's own range search on an IVF index looks only in
``nprobe`` lists and compares compressed similarities). ``flat`` answers it exactly (faiss's range
search, then the exact re-rank). ``ivfpq`` widens ``nprobe`` to every list that could hold a
match: each list's members lie in a cone around its centroid (``ivf_caps.npy``), so a list whose
cone's closest point to the query is below the threshold holds none. In the others, faiss's range
search runs with the threshold lowered by ``‖q‖ ×`` the largest error of a code in those lists
(``q·x`` and ``q·x̂`` differ by at most that), so no match is missed, and the candidates are
re-ranked exactly. Where the lists hold more than :data:`SCAN_FRACTION` of the vectors, and always
for ``hnsw`` (a graph proves nothing about what it did not visit), the query is answered by one
exact pass over the vectors instead.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..common import columns as C
from .ivf import faiss_centroids, list_members
from .layout import INDEX_FILE, INDEX_FORMAT, INDEX_JSON, IVF_CAPS_FILE, IndexFiles
from .vectors import NpyFile, VectorStore, best_first, exact_scan, read_npy_header, similarities

DEFAULT_K = 100
MIN_CANDIDATES = 100  # an approximate index is asked for at least this many candidates, re-ranked exactly
SCAN_FRACTION = 0.5  # a range query that would re-rank more than this share of the vectors scans them all instead
RANGE_SLACK = 1e-4  # faiss's and the cone bound's rounding: candidates are taken this far below the threshold
ANGLE_SLACK = 1e-3  # radians
COMBINE = ("mean", "union")
FIRST_RESULT_COLUMNS = ("similarity", C.KEY, C.SOURCE_SHARD, C.SOURCE_INDEX, C.CAPTION)


class SearchIndex:
    """An index built by :func:`~imgcurate.retrieval.build_index`, opened for search (read-only)."""

    def __init__(self, directory: str):
        import faiss

        self.directory = os.path.abspath(os.fspath(directory))
        path = os.path.join(self.directory, INDEX_JSON)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no index in {directory!r} (no {INDEX_JSON}); build one with imgcurate.build_index "
                                    f"or `imgcurate index`")
        with open(path) as f:
            self.document: dict[str, Any] = json.load(f)
        if self.document.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path} is not an imgcurate index description (format {self.document.get('format')!r})")
        self.kind: str = self.document["kind"]
        self.model_id: str | None = self.document.get("model_id")
        self.dim: int = int(self.document["dim"])
        self.count: int = int(self.document["count"])
        self.params: dict[str, Any] = self.document.get("params", {})
        if self.count == 0:
            raise ValueError(f"empty index: {directory!r} holds no vectors")
        self.files = IndexFiles.from_document(self.document, self.directory)
        self.store = VectorStore([NpyFile(p, n, self.dim, self.document.get("dtype", "<f2"))
                                  for p, n in zip(self.files.embeddings, self.files.counts)])
        for path, count in zip(self.files.embeddings, self.files.counts):
            found = read_npy_header(path)
            if (found.count, found.dim) != (count, self.dim):
                raise ValueError(f"{path} holds {found.count}×{found.dim} vectors, the index was built on "
                                 f"{count}×{self.dim}; rebuild the index")
        self.faiss = faiss.read_index(os.path.join(self.directory, self.document.get("faiss_index", INDEX_FILE)))
        if self.faiss.ntotal != self.count or self.faiss.d != self.dim:
            raise ValueError(f"{INDEX_FILE} holds {self.faiss.ntotal} {self.faiss.d}-d vectors, {INDEX_JSON} says "
                             f"{self.count} {self.dim}-d; rebuild the index")
        self._parquet: dict[int, pq.ParquetFile] = {}
        if self.kind == "ivfpq":
            centroids = faiss_centroids(self.faiss)
            self.directions = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-30)
            self.centroids32 = centroids.astype(np.float32)
            caps = np.load(os.path.join(self.directory, IVF_CAPS_FILE))
            self.cap_angles, self.cap_norms = np.arccos(np.clip(caps[:, 0], -1, 1)), caps[:, 1]
            self.code_errors = caps[:, 2]
            self.list_sizes = np.bincount(list_members(self.faiss), minlength=len(centroids))

    def __repr__(self) -> str:
        return (f"SearchIndex({self.directory!r}, kind={self.kind!r}, count={self.count}, dim={self.dim}, "
                f"model_id={self.model_id!r})")

    # -- vectors -------------------------------------------------------------------------

    def check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"dimension mismatch: the index holds {self.dim}-d vectors, the queries are "
                             f"{queries.shape[-1] if queries.ndim else 0}-d")
        if not np.isfinite(queries).all():
            raise ValueError("the query vectors hold NaN or infinite values")
        return np.ascontiguousarray(queries)

    def check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > self.count:
            raise ValueError(f"k={k} is larger than the index, which holds {self.count} vectors")
        return int(k)

    def _rerank(self, queries: np.ndarray, candidates: list[np.ndarray], k: int | None,
                min_similarity: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact similarities of each query's candidate ids, best first, cut to ``k`` / the threshold."""
        candidates = [ids[ids >= 0] for ids in candidates]  # faiss pads with -1 when it finds fewer
        every = np.unique(np.concatenate(candidates)) if candidates else np.zeros(0, np.int64)
        vectors = self.store.gather(every)
        out = []
        for query, ids in zip(queries, candidates):
            ids = np.unique(ids)
            scores = similarities(query[None, :], vectors[np.searchsorted(every, ids)])[0]
            if min_similarity is not None:
                keep = scores >= min_similarity
                ids, scores = ids[keep], scores[keep]
            out.append(best_first(ids, scores, k))
        return out

    def knn(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, the ``k`` best (ids, exact similarities), best first (approximate for ivfpq / hnsw)."""
        queries, k = self.check_queries(queries), self.check_k(k)
        wanted = k if self.kind == "flat" else min(self.count, max(k * self.params.get("rerank", 1), MIN_CANDIDATES))
        if self.kind == "ivfpq":
            self.faiss.nprobe = int(self.params["nprobe"])
        elif self.kind == "hnsw":
            self.faiss.hnsw.efSearch = max(int(self.params["ef_search"]), wanted)
        _, ids = self.faiss.search(queries, wanted)
        return self._rerank(queries, list(ids.astype(np.int64)), k)

    def range_plan(self, queries: np.ndarray, min_similarity: float) -> list[np.ndarray | None]:
        """Per query, the inverted lists that could hold a vector at or above ``min_similarity`` (ivfpq), or
        None where the query is answered by an exact pass instead (too many lists, or an index without lists)."""
        queries = self.check_queries(queries)
        if self.kind != "ivfpq":
            return [None] * len(queries)
        norms = np.linalg.norm(queries.astype(np.float64), axis=1)
        cosines = (queries.astype(np.float64) @ self.directions.T) / np.maximum(norms, 1e-30)[:, None]
        gap = np.maximum(np.arccos(np.clip(cosines, -1, 1)) - self.cap_angles - ANGLE_SLACK, 0.0)
        bounds = norms[:, None] * self.cap_norms[None, :] * np.maximum(np.cos(gap), 0.0)
        plans: list[np.ndarray | None] = []
        for row in bounds:
            lists = np.flatnonzero(row >= min_similarity - RANGE_SLACK)
            plans.append(None if self.list_sizes[lists].sum() > SCAN_FRACTION * self.count else lists)
        return plans

    def _within_lists(self, query: np.ndarray, lists: np.ndarray, min_similarity: float) -> np.ndarray:
        """Candidate ids for one query from exactly ``lists``: faiss's range search over their codes, the
        threshold lowered by the most a code's similarity can fall short of the vector's."""
        if not len(lists):
            return np.zeros(0, np.int64)
        radius = min_similarity - float(np.linalg.norm(query)) * float(self.code_errors[lists].max()) - RANGE_SLACK
        centroid_scores = (self.centroids32[lists] @ query)[None, :]
        self.faiss.nprobe = len(lists)  # the wrapper checks the lists given against nprobe
        _, _, ids = self.faiss.range_search_preassigned(query[None, :], radius, lists[None, :].astype(np.int64),
                                                         centroid_scores.astype(np.float32))
        return ids.astype(np.int64)

    def within(self, queries: np.ndarray, min_similarity: float, k: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, every (id, exact similarity) with similarity ≥ ``min_similarity``, best first (the ``k``
        best of them when ``k`` is given). Exact on every kind (see the module docstring)."""
        queries = self.check_queries(queries)
        if not np.isfinite(min_similarity):
            raise ValueError(f"min_similarity must be a finite number, got {min_similarity!r}")
        results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
        if self.kind == "flat":
            limits, _, ids = self.faiss.range_search(queries, float(min_similarity) - RANGE_SLACK)
            candidates = [ids[limits[i] : limits[i + 1]].astype(np.int64) for i in range(len(queries))]
            return self._rerank(queries, candidates, k, min_similarity)
        plans = self.range_plan(queries, min_similarity)
        listed = [i for i, plan in enumerate(plans) if plan is not None]
        if listed:
            candidates = [self._within_lists(queries[i], plans[i], min_similarity) for i in listed]
            found = self._rerank(queries[listed], candidates, k, min_similarity)
            for i, result in zip(listed, found):
                results[i] = result
        scanned = [i for i, plan in enumerate(plans) if plan is None]
        if scanned:
            for i, result in zip(scanned, exact_scan(self.store, queries[scanned], min_similarity=min_similarity, k=k)):
                results[i] = result
        return results  # type: ignore[return-value]

    # -- metadata ------------------------------------------------------------------------

    def _parquet_file(self, number: int) -> pq.ParquetFile | None:
        if number not in self._parquet:
            path = self.files.metadata[number]
            self._parquet[number] = pq.ParquetFile(path) if path else None
        return self._parquet[number]

    def metadata(self, ids: Sequence[int]) -> pa.Table:
        """The metadata rows of vector ``ids``, in that order; only the row groups that hold them are read."""
        ids = np.asarray(ids, dtype=np.int64)
        file_of, rows = self.store.locate(ids)
        pieces, positions = [], []
        for number in np.unique(file_of):
            where = np.flatnonzero(file_of == number)
            parquet = self._parquet_file(int(number))
            if parquet is None:
                continue
            sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
            group_starts = np.cumsum([0] + sizes)
            group_of = np.searchsorted(group_starts, rows[where], side="right") - 1
            groups = np.unique(group_of)
            table = parquet.read_row_groups([int(g) for g in groups])
            read_starts = np.cumsum([0] + [sizes[g] for g in groups])  # where each group read begins in `table`
            local = read_starts[np.searchsorted(groups, group_of)] + rows[where] - group_starts[group_of]
            pieces.append(table.take(pa.array(local, pa.int64())))
            positions.append(where)
        if not pieces:
            return pa.table({"id": pa.array(ids)})
        table = pa.concat_tables(pieces, promote_options="permissive")
        order = np.argsort(np.concatenate(positions), kind="stable")
        table = table.take(pa.array(order, pa.int64()))
        if len(table) != len(ids):  # results in files without metadata: no metadata for those rows
            found = np.concatenate(positions)[order]
            full = pa.table({"_position": pa.array(np.arange(len(ids)))})
            table = full.join(table.append_column("_position", pa.array(found)), "_position", join_type="left outer")
            table = table.sort_by("_position").drop(["_position"])
        return table


@lru_cache(maxsize=8)
def _open_cached(directory: str, stamp: float) -> SearchIndex:
    return SearchIndex(directory)


def open_index(index) -> SearchIndex:
    """A :class:`SearchIndex` from itself or its directory (opened once per process while ``index.json`` is unchanged)."""
    if isinstance(index, SearchIndex):
        return index
    directory = os.path.abspath(os.fspath(index))
    path = os.path.join(directory, INDEX_JSON)
    stamp = os.stat(path).st_mtime_ns if os.path.isfile(path) else 0.0
    return _open_cached(directory, stamp)


# -- queries -----------------------------------------------------------------------------


def model_for(index: SearchIndex, model=None):
    """The CLIP model to embed queries for ``index``: ``model`` when it is the index's, else the one
    ``model_id`` names. Raises when they differ, or when the index does not say its model."""
    from ..models import CLIPModel

    if model is not None:
        if index.model_id and model.model_id != index.model_id:
            raise ValueError(f"the index was built with embeddings of {index.model_id!r}, but the query model is "
                             f"{model.model_id!r}: similarities between two models mean nothing")
        if model.dim != index.dim:
            raise ValueError(f"dimension mismatch: the index holds {index.dim}-d vectors, {model.model_id} makes "
                             f"{model.dim}-d ones")
        return model
    if not index.model_id:
        raise ValueError("the index does not record the model that made its embeddings; pass model=CLIPModel(...) "
                         "(--model/--pretrained), or query by embeddings")
    config, _, weights = index.model_id.rpartition("/")
    if weights.startswith("sha256:"):
        raise ValueError(f"the index was built with a local checkpoint ({index.model_id}); pass that model: "
                         f"model=CLIPModel(..., pretrained='/path/to/weights.pt') (--model/--pretrained)")
    return model_for(index, CLIPModel(config, pretrained=weights))


def _read_image(image) -> tuple[str, bytes]:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>", bytes(image)
    from ..io.paths import filesystem

    fs, path = filesystem(os.fspath(image))
    with fs.open(path, "rb") as f:
        return os.fspath(image), f.read()


def embed_images(images: Sequence, model) -> np.ndarray:
    """Unit embeddings of query images (paths, URLs or bytes) by the dataset's decode and image tower."""
    from ..ops.decode import DecodeFailure, Preprocess, decode_batch

    named = [_read_image(image) for image in images]
    decoded = decode_batch([data for _, data in named], Preprocess.from_open_clip(model.preprocess))
    for (name, _), result in zip(named, decoded):
        if isinstance(result, DecodeFailure):
            raise ValueError(f"query image {name} cannot be decoded ({result.reason}: {result.detail})")
    model.check_weights()
    return model.embed_pixels(np.stack(decoded))


def query_vectors(index: SearchIndex, *, text=None, images=None, embeddings=None, model=None) -> np.ndarray:
    """The query as unit float32 vectors (one row per text, image or given embedding)."""
    given = [name for name, value in (("text", text), ("images", images), ("embeddings", embeddings)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of text=, images=, embeddings= (got {', '.join(given) or 'none'})")
    if embeddings is not None:
        return index.check_queries(embeddings)
    items = [text] if isinstance(text, str) else [images] if isinstance(images, (str, bytes, os.PathLike)) else list(text if text is not None else images)
    if not items:
        raise ValueError("the query is empty")
    model = model_for(index, model)
    if text is not None:
        model.check_weights()  # WeightsNotFoundError says which file is missing and where it comes from
        return index.check_queries(model.embed_text(items))
    return index.check_queries(embed_images(items, model))


def _merge_union(results: list[tuple[np.ndarray, np.ndarray]], k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One result list from several queries' lists: each id once, with its best similarity and that query."""
    ids = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.int64)
    scores = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.float32)
    which = np.concatenate([np.full(len(r[0]), q) for q, r in enumerate(results)]) if results else np.zeros(0, np.int64)
    order = np.lexsort((which, ids, -scores))
    ids, scores, which = ids[order], scores[order], which[order]
    _, first = np.unique(ids, return_index=True)
    first = np.sort(first)  # best occurrence of each id, still best first
    ids, scores, which = ids[first], scores[first], which[first]
    order = np.lexsort((ids, -scores))[: k if k is not None else None]
    return ids[order], scores[order], which[order]


def results_frame(index: SearchIndex, ids: np.ndarray, scores: np.ndarray, which: np.ndarray | None = None) -> pd.DataFrame:
    """The results as a pandas DataFrame: similarity, key, source shard and index, caption, other metadata."""
    table = index.metadata(ids)
    frame = table.to_pandas(types_mapper=pd.ArrowDtype) if len(table.column_names) else pd.DataFrame(index=range(len(ids)))
    frame.insert(0, "similarity", scores.astype(np.float32))
    frame["index_id"] = ids.astype(np.int64)
    if which is not None:
        frame["query"] = which.astype(np.int64)
    first = [name for name in FIRST_RESULT_COLUMNS if name in frame.columns]
    return frame[first + [name for name in frame.columns if name not in first]].reset_index(drop=True)


def search(index, *, text: str | Sequence[str] | None = None, images: Sequence | None = None,
           embeddings: np.ndarray | None = None, k: int | None = None, min_similarity: float | None = None,
           combine: str = "mean", model=None) -> pd.DataFrame:
    """Search ``index`` (a directory written by ``build_index`` / ``imgcurate index``, or an opened index).

    The query: ``text`` (a string or several), ``images`` (paths, URLs or bytes of example images) or
    ``embeddings`` (vectors of the index's width). Several queries are combined by ``combine``:
    ``"mean"`` searches with their mean unit embedding, ``"union"`` merges the results of each (each
    sample once, with its best similarity and the number of that query in column ``query``).

    ``k``: results wanted (default 100, or every match of a range query); ``min_similarity``: only
    results at or above it, all of them (exact on every index kind). ``model``: the CLIP model for
    text and images (default: the one the index records; another model is refused).

    Returns a pandas DataFrame, best first: ``similarity`` (exact inner product of unit vectors),
    ``key``, ``source_shard``, ``source_index``, ``caption``, the other exported metadata, and ``index_id``.
    """
    index = open_index(index)
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    if k is not None:
        index.check_k(k)
    queries = query_vectors(index, text=text, images=images, embeddings=embeddings, model=model)
    if combine == "mean" and len(queries) > 1:
        mean = queries.mean(axis=0)
        queries = (mean / max(np.linalg.norm(mean), 1e-12))[None, :].astype(np.float32)
    if min_similarity is not None:
        results = index.within(queries, float(min_similarity), k)
    else:
        results = index.knn(queries, k if k is not None else min(DEFAULT_K, index.count))
    if combine == "union":
        return results_frame(index, *_merge_union(results, k if k is not None or min_similarity is not None else
                                                  min(DEFAULT_K, index.count)))
    return results_frame(index, *results[0])
