"""SQL over sample metadata, with DuckDB, read-only.

The metadata is a table named ``samples`` (and ``failures`` / ``dropped`` for an imgcurate output
that has them). Tables are handed to DuckDB as Arrow datasets or streams, so DuckDB reads the
Parquet files itself, with projection and filter pushdown, and a dataset larger than memory is
never loaded into pandas.

Every query runs on a DuckDB connection that cannot touch the filesystem or the network
(``enable_external_access=false``, configuration locked), and only a single ``SELECT`` statement
is accepted: writes, ``COPY``, ``ATTACH``, ``INSTALL``, ``PRAGMA``, ``SET`` and multiple statements
are refused with :class:`QueryError`.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from . import columns as C
from .errors import ImgcurateError


class QueryError(ImgcurateError, ValueError):
    """A query or predicate that imgcurate refuses to run, or that DuckDB could not run."""


def check_read_only(query: str) -> None:
    """Accept exactly one SELECT statement; raise :class:`QueryError` otherwise."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {exc}") from exc
    if len(statements) != 1:
        raise QueryError(f"exactly one SQL statement is allowed, got {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT queries are allowed (read-only), got {statements[0].type.name}")


def _locked_connection(tables: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    """A connection that sees ``tables`` (Arrow tables, datasets or streams) and nothing else."""
    con = duckdb.connect(config={"enable_external_access": False})
    for name, table in tables.items():
        con.register(name, table)
    con.execute("SET lock_configuration = true")
    return con


def metadata_table(table: pa.Table) -> pa.Table:
    """``table`` without bytes columns: predicates and queries see metadata only."""
    keep = [f.name for f in table.schema if not pa.types.is_binary(f.type) and not pa.types.is_large_binary(f.type)
            and f.name != C.EXTRA_MEMBERS]
    return table.select(keep)


def where_mask(table: pa.Table, predicate: str) -> pa.Array:
    """Boolean mask of the rows of ``table`` for which the SQL ``predicate`` holds (NULL → false)."""
    query = f"SELECT coalesce(({predicate}), false) AS keep FROM samples"
    check_read_only(query)
    con = _locked_connection({"samples": metadata_table(table)})
    try:
        result = con.sql(query).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(f"cannot evaluate predicate {predicate!r}: {exc}") from exc
    finally:
        con.close()
    return result.column("keep").combine_chunks()


def _parquet_dataset(files: list[str], storage_options: dict | None) -> pads.Dataset:
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from .io.paths import filesystem, is_local_fs

    fs, _ = filesystem(files[0], storage_options)
    if is_local_fs(fs):
        return pads.dataset(files, format="parquet")
    paths = [filesystem(f, storage_options)[1] for f in files]
    return pads.dataset(paths, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs)))


def _frame_stream(df) -> pa.RecordBatchReader:
    """A Dask DataFrame's metadata as an Arrow stream: one partition in memory at a time."""
    from .backend import backend_of

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
    from .io.paths import filesystem, full_url, is_shard_name
    from .io.reader import read_webdataset
    from .io.writer import DROPPED_DIR, FAILURES_DIR, MANIFEST_FILE, shard_parquet_files

    fs, root = filesystem(os.fspath(dataset), storage_options)
    if fs.isfile(root) and root.endswith(".parquet"):
        return {"samples": _parquet_dataset([full_url(fs, root)], storage_options)}
    if fs.isdir(root):
        names = fs.ls(root, detail=False)
        shards = shard_parquet_files(fs, root)
        written_by_imgcurate = any(p.rstrip("/").endswith("/" + MANIFEST_FILE) for p in names)
        has_tars = any(is_shard_name(p) for p in names)
        # an input dataset's NNNNN.parquet are sidecars: partial metadata, joined by the reader
        if shards and (written_by_imgcurate or not has_tars):
            tables = {"samples": _parquet_dataset(shards, storage_options)}
            failures = [full_url(fs, p) for p in fs.glob(f"{root}/{FAILURES_DIR}/*.parquet")]
            if failures:
                tables["failures"] = _parquet_dataset(failures, storage_options)
            dropped = shard_parquet_files(fs, f"{root}/{DROPPED_DIR}") if fs.isdir(f"{root}/{DROPPED_DIR}") else []
            if dropped:
                tables["dropped"] = _parquet_dataset(dropped, storage_options)
            return tables
    return {"samples": _frame_stream(read_webdataset(os.fspath(dataset), with_images=False, storage_options=storage_options))}


def sql(query: str, dataset, *, storage_options: dict | None = None):
    """Run a read-only SQL query; ``samples`` is the dataset's metadata. Returns a pandas DataFrame.

    >>> imgcurate.sql("SELECT caption, aesthetic_score FROM samples ORDER BY aesthetic_score DESC LIMIT 10", "out/")
    """
    check_read_only(query)
    con = _locked_connection(dataset_tables(dataset, storage_options))
    try:
        return con.sql(query).df()
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {exc}") from exc
    finally:
        con.close()
