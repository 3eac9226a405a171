"""SQL over a dataset's metadata, with DuckDB, read-only (``imgcurate.sql``).

The metadata is a table named ``samples`` (and ``failures`` / ``dropped`` for an imgcurate output
that has them). Tables are handed to DuckDB as Arrow datasets or streams, so DuckDB reads the
Parquet files itself, with projection and filter pushdown, and a dataset larger than memory is
never loaded into pandas. The connection is the read-only one of :mod:`imgcurate.ops.sql`.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from ..ops.sql import QueryError, check_read_only, duckdb_message, locked_connection, metadata_table


def _parquet_dataset(files: list[str], storage_options: dict | None) -> pads.Dataset:
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from ..io.paths import filesystem, is_local_fs

    fs, _ = filesystem(files[0], storage_options)
    if is_local_fs(fs):
        return pads.dataset(files, format="parquet")
    paths = [filesystem(f, storage_options)[1] for f in files]
    return pads.dataset(paths, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs)))


def _no_samples(dropped_schema: pa.Schema | None) -> pa.Table:
    """The ``samples`` table of an output that kept nothing: the columns its dropped rows have
    (when it wrote them), else ``key`` alone."""
    from ..common import columns as C

    if dropped_schema is None:
        return pa.table({C.KEY: pa.array([], pa.string())})
    kept = [field for field in dropped_schema if field.name != C.DROPPED_BY]
    return pa.schema(kept).empty_table()


def _frame_stream(df) -> pa.RecordBatchReader:
    """A Dask DataFrame's metadata as an Arrow stream: one partition in memory at a time."""
    from ..common.backend import backend_of

    backend = backend_of(df)
    schema = metadata_table(backend.to_arrow(df._meta)).schema

    def batches() -> Iterator[pa.RecordBatch]:
        for part in df.to_delayed():
            table = metadata_table(backend.to_arrow(part.compute())).cast(schema)
            yield from table.to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def dataset_tables(dataset, storage_options: dict | None = None) -> dict[str, Any]:
    """The tables a query can use: ``samples``, plus ``failures``/``dropped`` for an imgcurate output.

    ``dataset`` is a Dask or pandas DataFrame, a directory written by imgcurate (its Parquet
    metadata is read), a Parquet file, or any WebDataset path (its shards are read without image
    bytes).
    """
    import pandas as pd

    if isinstance(dataset, pd.DataFrame):
        return {"samples": metadata_table(pa.Table.from_pandas(dataset, preserve_index=False))}
    if hasattr(dataset, "to_delayed"):
        return {"samples": _frame_stream(dataset)}
    from ..io.paths import filesystem, full_url, is_shard_name
    from ..io.reader import read_webdataset
    from ..io.outputdir import DROPPED_DIR, FAILURES_DIR, MANIFEST_FILE, OLD_FAILURES_DIR, shard_parquet_files

    fs, root = filesystem(os.fspath(dataset), storage_options)
    if fs.isfile(root) and root.endswith(".parquet"):
        return {"samples": _parquet_dataset([full_url(fs, root)], storage_options)}
    if fs.isdir(root):
        names = fs.ls(root, detail=False)
        shards = shard_parquet_files(fs, root)
        written_by_imgcurate = any(p.rstrip("/").endswith("/" + MANIFEST_FILE) for p in names)
        has_tars = any(is_shard_name(p) for p in names)
        # an input dataset's NNNNN.parquet are sidecars: partial metadata, joined by the reader
        if written_by_imgcurate or (shards and not has_tars):
            tables = {}
            failures = [full_url(fs, p) for directory in (FAILURES_DIR, OLD_FAILURES_DIR)
                        for p in fs.glob(f"{root}/{directory}/*.parquet")]
            if failures:
                tables["failures"] = _parquet_dataset(failures, storage_options)
            dropped = shard_parquet_files(fs, f"{root}/{DROPPED_DIR}") if fs.isdir(f"{root}/{DROPPED_DIR}") else []
            if dropped:
                tables["dropped"] = _parquet_dataset(dropped, storage_options)
            # a run that kept nothing still answers: no samples, and its dropped rows and failures
            tables["samples"] = (_parquet_dataset(shards, storage_options) if shards
                                 else _no_samples(tables["dropped"].schema if dropped else None))
            return tables
    return {"samples": _frame_stream(read_webdataset(os.fspath(dataset), with_images=False, storage_options=storage_options))}


def sql(query: str, dataset, *, storage_options: dict | None = None):
    """Run a read-only SQL query; ``samples`` is the dataset's metadata. Returns a pandas DataFrame.

    >>> imgcurate.sql("SELECT caption, aesthetic_score FROM samples ORDER BY aesthetic_score DESC LIMIT 10", "out/")
    """
    check_read_only(query)
    tables = dataset_tables(dataset, storage_options)
    con = locked_connection(tables)
    try:
        return con.sql(query).df()
    except duckdb.Error as exc:
        samples = tables["samples"]
        hint = ("; the output kept no samples and wrote no dropped rows, so its `samples` table has only `key` "
                "(its _manifest.json counts what was dropped and why)"
                if isinstance(samples, pa.Table) and samples.num_rows == 0 and samples.schema.names == ["key"] else "")
        raise QueryError(f"query failed: {duckdb_message(exc)}{hint}") from exc
    finally:
        con.close()
