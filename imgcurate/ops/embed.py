"""Partition functions that add CLIP embeddings and LAION head scores.

:func:`embed_partition` takes one partition (pandas or cuDF), fetches each row's image bytes
(from the ``image`` column, or by byte range from the source shard when the reader left the
bytes there), decodes them, embeds them, and optionally scores the embeddings with the heads in
the same pass, so each image is decoded and embedded once. Rows that already failed or were
dropped are passed through untouched. Images that cannot be fetched or decoded become failure
rows (``error`` = reason code) under the ``on_error`` policy; their embedding and scores are null.
Each embedded row also gets ``embedding_model``, the model's id (``CLIPModel.model_id``), so later
steps can refuse to compare it with vectors of another model.

:func:`score_partition` scores an existing ``embedding`` column.

Both are pure functions of a partition: with an empty partition (Dask's ``meta``) they return
the output columns without loading any model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..common import columns as C
from ..common.backend import backend_of
from ..common.errors import Failure
from .decode import DecodeFailure, Preprocess, decode_for_device
from .rows import decode_failure, fetch_readable, in_play, record_failures, set_column

# images decoded at a time = this × the model's batch size (bounds the decoded crops held; on a GPU the
# full-resolution pixels are further bounded by ops.decode.GPU_DECODE_BYTES, see docs/gpu.md)
CHUNK_BATCHES = 4


def _scatter(data: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``data`` placed at ``rows`` of an ``n``-row float32 array (zeros elsewhere), and which rows hold data."""
    values = np.zeros((n, *data.shape[1:]), dtype=np.float32)
    values[rows] = data
    valid = np.zeros(n, dtype=bool)
    valid[rows] = True
    return values, valid


def _embeddings_array(vectors: np.ndarray, rows: np.ndarray, n: int, dim: int) -> pa.Array:
    """A fixed-size-list column of ``n`` rows, ``vectors`` at ``rows`` and null elsewhere."""
    values, valid = _scatter(vectors, rows, n)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)
    return pc.if_else(pa.array(valid), storage, pa.nulls(n, C.embedding_type(dim)))


def _scores_array(scores: np.ndarray, rows: np.ndarray, n: int) -> pa.Array:
    values, valid = _scatter(scores, rows, n)
    return pa.array(values, pa.float32(), mask=~valid)


def _model_ids(model_id: str, rows: np.ndarray, n: int) -> pa.Array:
    valid = np.zeros(n, dtype=bool)
    valid[rows] = True
    return pc.if_else(pa.array(valid), pa.scalar(model_id, pa.string()), pa.nulls(n, pa.string()))


def _kept_where_null(table: pa.Table, name: str, new: pa.Array) -> pa.Array:
    """``new``, with the column's existing values where ``new`` is null (only some rows were computed)."""
    if name not in table.column_names:
        return new
    old = table.column(name).combine_chunks() if table.num_rows else pa.array([], new.type)
    return pc.if_else(pc.is_valid(new), new, old.cast(new.type))


def embed_table(table: pa.Table, embedder, *, aesthetic=None, nsfw=None, on_error: str = "report",
                storage_options: dict | None = None, rows: np.ndarray | None = None) -> pa.Table:
    """:func:`embed_partition` on an Arrow table; ``rows`` (default: every row in play) are the rows to
    embed, the others keep what their ``embedding`` and ``embedding_model`` columns already hold."""
    n = len(table)
    todo = np.flatnonzero(in_play(table)) if rows is None else np.asarray(rows, dtype=np.int64)
    prep = Preprocess.from_open_clip(embedder.preprocess)
    runtime = embedder.runtime()  # decided here, on the worker
    chunk = max(1, runtime.batch_size * CHUNK_BATCHES)
    embedded_rows: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    failures: dict[int, Failure] = {}
    for start in range(0, len(todo), chunk):
        readable = fetch_readable(table, todo[start : start + chunk].tolist(), failures, storage_options)
        decoded = decode_for_device([data for _, data in readable], prep, runtime.device)
        good, pixels = [], []
        for (row, _), result in zip(readable, decoded):
            if isinstance(result, DecodeFailure):
                failures[row] = decode_failure(table, row, result)
            else:
                good.append(row)
                pixels.append(result)
        if pixels:
            vectors.append(embedder.embed_pixels(_stack(pixels)))
            embedded_rows.append(np.asarray(good, dtype=np.int64))
    rows = np.concatenate(embedded_rows) if embedded_rows else np.zeros(0, dtype=np.int64)  # the rows embedded
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), dtype=np.float32)
    table = set_column(table, C.EMBEDDING, _kept_where_null(table, C.EMBEDDING, _embeddings_array(matrix, rows, n, embedder.dim)))
    table = set_column(table, C.EMBEDDING_MODEL, _kept_where_null(table, C.EMBEDDING_MODEL, _model_ids(embedder.model_id, rows, n)))
    for column, scorer in ((C.AESTHETIC_SCORE, aesthetic), (C.NSFW_SCORE, nsfw)):
        if scorer is not None:
            table = set_column(table, column, _scores_array(scorer.score(matrix), rows, n))
    return record_failures(table, failures, on_error)


def _stack(pixels: list) -> Any:
    """One batch from per-image pixel arrays (numpy on CPU, torch tensors after nvJPEG)."""
    if isinstance(pixels[0], np.ndarray):
        return np.stack(pixels)
    import torch

    return torch.stack(pixels)


def embed_partition(frame, embedder, *, aesthetic=None, nsfw=None, on_error: str = "report",
                    storage_options: dict | None = None):
    """``frame`` with an ``embedding`` column (and ``aesthetic_score`` / ``nsfw_score`` when those
    scorers are given). See the module docstring for failures."""
    backend = backend_of(frame)
    table = embed_table(backend.to_arrow(frame), embedder, aesthetic=aesthetic, nsfw=nsfw, on_error=on_error,
                        storage_options=storage_options)
    return backend.from_arrow(table)


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers with an embedding, their vectors as a float32 matrix) from an embedding column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    valid = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
    if not pa.types.is_fixed_size_list(column.type):
        if len(valid) == 0:
            return valid, np.zeros((0, 0), dtype=np.float32)
        dims = pc.list_value_length(column.filter(column.is_valid()))
        if pc.min(dims).as_py() != pc.max(dims).as_py():
            raise ValueError("embedding column holds vectors of different lengths")
        column = column.cast(pa.list_(pa.float32(), pc.min(dims).as_py()))
    dim = column.type.list_size
    picked = column.take(pa.array(valid, pa.int64()))
    matrix = picked.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(valid), dim)
    return valid, matrix


def score_table(table: pa.Table, scorer, column: str) -> pa.Table:
    if C.EMBEDDING not in table.column_names:
        raise ValueError(f"no '{C.EMBEDDING}' column to score: embed the images first (imgcurate.embed)")
    rows, matrix = embedding_matrix(table.column(C.EMBEDDING))
    if len(rows):
        scores = scorer.score(matrix)
    else:  # e.g. Dask's empty meta: still refuse the wrong width, before any data is read
        column_type = table.column(C.EMBEDDING).type
        if pa.types.is_fixed_size_list(column_type):
            scorer.check_width(column_type.list_size)
        scores = np.zeros(0, dtype=np.float32)
    return set_column(table, column, _scores_array(scores, rows, len(table)))


def score_partition(frame, scorer, column: str):
    """``frame`` with ``column`` holding ``scorer``'s score of each row's embedding (null where none)."""
    backend = backend_of(frame)
    return backend.from_arrow(score_table(backend.to_arrow(frame), scorer, column))
