"""Export a dataframe's embeddings in clip-retrieval's layout (see :mod:`imgcurate.retrieval.layout`).

Each partition is one Dask task that writes its own file set, so nothing is gathered:

* ``img_emb/img_emb_{n}.npy``: the image embeddings of the partition's rows that have one, a 2-d
  array (rows × width) in ``.npy`` format 1.0, float16 by default as clip-retrieval writes them;
* ``text_emb/text_emb_{n}.npy``: the same rows' ``text_embedding`` when the frame has that column;
* ``metadata/metadata_{n}.parquet``: the same rows in the same order. First ``image_path`` (the
  sample key, as clip-retrieval writes it for WebDataset input) and ``caption``, as clip-retrieval
  puts them, then ``url``, ``key``, ``source_shard``, ``source_index``, the image's extension and
  size, the scores and ``embedding_model``, then every other metadata column in frame order (JSON
  values as JSON text; image bytes, vectors and binary components left out).

A partition without exported rows writes nothing (embedding-reader skips empty ``.npy`` files
but not their metadata, so an empty set would shift every later row). Rows that failed, were
dropped, or have no embedding are not exported; they are counted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .._version import __version__
from ..common import columns as C
from ..common.backend import backend_of
from ..common.errors import OutputExistsError
from .layout import EXPORT_JSON, EXPORT_NAMES, IMG_EMB, METADATA, TEXT_EMB, file_names, number_width

log = logging.getLogger("imgcurate")
DTYPES = ("float16", "float32")
IMAGE_PATH = "image_path"
URL = "url"
METADATA_ROW_GROUP = 4096  # rows per Parquet row group: a lookup of a few results reads a few groups, not the file
# dictionary-encoded in Parquet: columns with few distinct values (keys and captions are unique: encoding them
# as dictionaries first, as Arrow tries by default, took a third of the metadata's writing time)
DICTIONARY_COLUMNS = (C.SOURCE_SHARD, C.IMAGE_EXT, C.EMBEDDING_MODEL, "status", "license")
FIRST_COLUMNS = (IMAGE_PATH, C.CAPTION, URL, C.KEY, C.SOURCE_SHARD, C.SOURCE_INDEX, C.IMAGE_EXT, C.IMAGE_NBYTES,
                 C.CLIP_SCORE, C.AESTHETIC_SCORE, C.NSFW_SCORE, C.EMBEDDING_MODEL)
LEFT_OUT = (C.IMAGE, C.EMBEDDING, C.TEXT_EMBEDDING, C.EXTRA_MEMBERS, C.DROPPED_BY, *C.ERROR_COLUMNS)
# torch warns when it wraps Arrow's read-only buffer; the conversion only reads it
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


@dataclass(frozen=True)
class ExportOptions:
    """What every partition task needs (small and picklable)."""

    root: str  # the output directory (local path or fsspec URL)
    width: int  # digits of the file numbers
    dtype: str
    text: bool  # the frame has text embeddings
    storage_options: dict | None = None


@dataclass
class ExportResult:
    """What :func:`export_embeddings` wrote."""

    output_dir: str
    count: int  # vectors exported
    dim: int | None
    dtype: str
    model_id: str | None
    text_embeddings: bool
    files: list[dict[str, Any]] = field(default_factory=list)
    not_exported: int = 0  # rows that failed, were dropped or had no embedding

    def __str__(self) -> str:
        return (f"exported {self.count} embeddings ({self.dim}-d {self.dtype}, model {self.model_id or 'unknown'}) in "
                f"{len(self.files)} file sets to {self.output_dir}; {self.not_exported} rows not exported "
                f"(failed, dropped or without an embedding)")


def exported_rows(table: pa.Table) -> np.ndarray:
    """Rows that go into the export: in play (not failed, not dropped) and with an embedding."""
    keep = table.column(C.EMBEDDING).is_valid().to_numpy(zero_copy_only=False)
    for name in (C.ERROR, C.DROPPED_BY):
        if name in table.column_names:
            keep &= table.column(name).is_null().to_numpy(zero_copy_only=False)
    return np.flatnonzero(keep)


def _portable(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A column as a plain Parquet type readers agree on; None for what the metadata leaves out (bytes)."""
    kind = column.type
    if isinstance(kind, pa.ExtensionType):  # Arrow JSON: its text
        return column.cast(kind.storage_type)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return None
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return column.cast(pa.string())
    return column


def metadata_table(picked: pa.Table) -> pa.Table:
    """The metadata of the exported rows ``picked``, in clip-retrieval's column order (see the module docstring)."""
    names = [name for name in picked.column_names if not C.is_internal(name) and name not in LEFT_OUT]
    ordered = [name for name in FIRST_COLUMNS if name in names] + [name for name in names if name not in FIRST_COLUMNS]
    arrays, fields = [picked.column(C.KEY)], [IMAGE_PATH]
    for name in ordered:
        if name == IMAGE_PATH:
            continue  # a metadata column of that name would clash with clip-retrieval's own: the key wins, as there
        column = _portable(picked.column(name))
        if column is not None:
            arrays.append(column)
            fields.append(name)
    return pa.table(arrays, names=fields)


class _Float16Buffer(threading.local):
    """One float16 buffer per thread, reused by every partition the thread exports: converting into memory
    already touched costs half of converting into fresh pages (benchmarks/README.md, "Search")."""

    tensor = None

    def view(self, rows: int, width: int):
        import torch

        if self.tensor is None or self.tensor.numel() < rows * width:
            self.tensor = torch.empty(rows * width, dtype=torch.float16)
        return self.tensor[: rows * width].view(rows, width)


_FLOAT16 = _Float16Buffer()


def float_matrix(picked: pa.Table, name: str) -> np.ndarray:
    """The ``name`` vectors of the rows ``picked`` as a C-ordered float32 (rows × width) array (no copy when
    the column is a fixed-size list without nulls); null vectors are zeros."""
    column = picked.column(name)
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_fixed_size_list(column.type):
        lengths = pc.list_value_length(column.drop_null())
        width = pc.max(lengths).as_py() or 0
        if pc.min(lengths).as_py() != width:
            raise ValueError(f"column {name!r} holds vectors of different lengths")
        column = column.cast(pa.list_(pa.float32(), width))
    width = column.type.list_size
    if column.null_count:
        column = column.fill_null(pa.scalar([0.0] * width, column.type))
    flat = column.values.slice(column.offset * width, len(column) * width)
    return flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(column), width)


def write_npy(fs, local: bool, path: str, matrix: np.ndarray, dtype: str) -> None:
    """``matrix`` as a ``.npy`` file (format 1.0) of ``dtype``. float32 → float16 goes through torch into
    the thread's reused buffer: torch's conversion is vectorised (numpy's ``astype`` took 4–7× longer here)."""
    with (open(path, "wb") if local else fs.open(path, "wb")) as f:
        if dtype == "float16" and matrix.dtype == np.float32:
            import torch

            half = _FLOAT16.view(*matrix.shape)
            half.copy_(torch.from_numpy(np.ascontiguousarray(matrix)))
            matrix = half.numpy()
        # a real file object lets numpy write the array in one call instead of copying it out in pieces
        np.lib.format.write_array(f, matrix.astype(dtype, copy=False), version=(1, 0), allow_pickle=False)


def export_partition(frame, number: int, options: ExportOptions) -> dict[str, Any]:
    """Write partition ``number``'s file set; returns its counts, width and the models named in it."""
    from ..io.paths import filesystem, is_local_fs

    table = backend_of(frame).to_arrow(frame)
    rows = exported_rows(table)
    record = {"number": number, "count": len(rows), "not_exported": len(table) - len(rows), "dim": None, "models": []}
    if not len(rows):
        return record
    fs, root = filesystem(options.root, options.storage_options)
    local = is_local_fs(fs)
    names = file_names(number, options.width)
    picked = table if len(rows) == len(table) else table.take(pa.array(rows, pa.int64()))
    images = float_matrix(picked, C.EMBEDDING)
    write_npy(fs, local, f"{root}/{names[IMG_EMB]}", images, options.dtype)
    if options.text:
        write_npy(fs, local, f"{root}/{names[TEXT_EMB]}", float_matrix(picked, C.TEXT_EMBEDDING), options.dtype)
    metadata = metadata_table(picked)
    parquet = {"row_group_size": METADATA_ROW_GROUP,
               "use_dictionary": [name for name in DICTIONARY_COLUMNS if name in metadata.column_names]}
    if local:  # Arrow's own file writer: fsspec's local file takes each of Parquet's small writes in Python
        pq.write_table(metadata, f"{root}/{names[METADATA]}", **parquet)
    else:
        with fs.open(f"{root}/{names[METADATA]}", "wb") as f:
            pq.write_table(metadata, f, **parquet)
    if C.EMBEDDING_MODEL in metadata.column_names:
        record["models"] = sorted({m for m in pc.unique(metadata.column(C.EMBEDDING_MODEL)).to_pylist() if m})
    record["dim"] = images.shape[1]
    record["files"] = {kind: names[kind] for kind in ((IMG_EMB, TEXT_EMB, METADATA) if options.text else (IMG_EMB, METADATA))}
    return record


def check_export_output(fs, root: str, overwrite: bool) -> list[str]:
    """What an export into ``root`` would replace; raises OutputExistsError for an earlier export
    unless ``overwrite``. Changes nothing."""
    existing = [name for name in EXPORT_NAMES if fs.exists(f"{root}/{name}")]
    if existing and not overwrite:
        raise OutputExistsError(f"{root!r} already holds an export ({', '.join(existing)}); pass overwrite=True "
                                f"(--overwrite) to replace it")
    return existing


def _prepare_output(fs, root: str, overwrite: bool) -> None:
    """Refuse an earlier export unless ``overwrite``; with it, remove only what an export and an index write."""
    for name in check_export_output(fs, root, overwrite):
        fs.rm(f"{root}/{name}", recursive=True)
    for name in (IMG_EMB, METADATA):
        fs.makedirs(f"{root}/{name}", exist_ok=True)


def _one_model(records: list[dict[str, Any]], model_id: str | None) -> str | None:
    named = sorted({m for r in records for m in r["models"]})
    if len(named) > 1:
        raise ValueError(f"the embeddings were made by different models ({', '.join(named)}); they cannot share an index")
    if named and model_id and named[0] != model_id:
        raise ValueError(f"the frame's {C.EMBEDDING_MODEL} column says {named[0]!r}, but model_id={model_id!r} was given")
    if not named and not model_id:
        log.warning("the embeddings' model is unknown (no %r column, no model_id): queries by text or image "
                    "cannot be checked against it", C.EMBEDDING_MODEL)
    return named[0] if named else model_id


def export_embeddings(df, output_dir: str, *, dtype: str = "float16", model_id: str | None = None,
                      overwrite: bool = False, storage_options: dict | None = None, progress: bool = False,
                      client=None) -> ExportResult:
    """Write ``df``'s ``embedding`` column (and ``text_embedding``, when present) in clip-retrieval's layout.

    ``df``: a Dask DataFrame (or pandas) with an ``embedding`` column (``imgcurate.embed``).
    ``dtype``: ``"float16"`` (clip-retrieval's) or ``"float32"``. ``model_id``: the
    :attr:`~imgcurate.models.CLIPModel.model_id` of the model that made the embeddings, when the
    frame has no ``embedding_model`` column to say it. Returns an :class:`ExportResult`; the same is
    recorded in ``embeddings.json``. One Dask task per partition; nothing is gathered.
    """
    import dask

    from ..common.progress import compute
    from ..io.paths import filesystem, full_url

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    meta = df._meta if hasattr(df, "_meta") else df.iloc[:0]
    if C.EMBEDDING not in meta.columns:
        raise ValueError(f"no {C.EMBEDDING!r} column to export: embed the images first (imgcurate.embed)")
    text = C.TEXT_EMBEDDING in meta.columns
    fs, root = filesystem(os.fspath(output_dir), storage_options)
    root = root.rstrip("/")
    _prepare_output(fs, root, overwrite)
    if text:
        fs.makedirs(f"{root}/{TEXT_EMB}", exist_ok=True)
    parts = df.to_delayed() if hasattr(df, "to_delayed") else [df]
    options = ExportOptions(full_url(fs, root), number_width(len(parts)), dtype, text, storage_options)
    tasks = [dask.delayed(export_partition)(part, number, options) for number, part in enumerate(parts)]
    records = compute(tasks, desc="exporting embeddings", progress=progress, client=client)
    written = [r for r in records if r["count"]]
    dims = sorted({r["dim"] for r in written})
    if len(dims) > 1:
        raise ValueError(f"partitions hold embeddings of different widths: {dims}")
    result = ExportResult(options.root, sum(r["count"] for r in written), dims[0] if dims else None, dtype,
                          _one_model(records, model_id), text,
                          [{"number": r["number"], "count": r["count"], **r["files"]} for r in written],
                          sum(r["not_exported"] for r in records))
    document = {"format": "clip-retrieval", "imgcurate_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model_id": result.model_id, "dim": result.dim, "dtype": dtype, "count": result.count,
                "text_embeddings": text, "not_exported": result.not_exported, "files": result.files}
    with fs.open(f"{root}/{EXPORT_JSON}", "w") as f:
        json.dump(document, f, indent=1)
    return result
