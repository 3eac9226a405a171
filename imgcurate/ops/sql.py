"""SQL over one partition's metadata, with DuckDB, read-only.

Every query runs on a DuckDB connection that cannot touch the filesystem or the network
(``enable_external_access=false``, configuration locked), and only a single ``SELECT`` statement
is accepted: writes, ``COPY``, ``ATTACH``, ``INSTALL``, ``PRAGMA``, ``SET`` and multiple statements
are refused with :class:`QueryError`. :func:`where_mask` evaluates a predicate over one
partition (``imgcurate.where``); :mod:`imgcurate.dataframe.sql` runs whole queries over datasets.
"""

from __future__ import annotations

import threading
from typing import Any

import duckdb
import pyarrow as pa

from ..common import columns as C
from ..common.errors import ImgcurateError


class QueryError(ImgcurateError, ValueError):
    """A query or predicate that imgcurate refuses to run, or that DuckDB could not run."""


def duckdb_message(exc: duckdb.Error) -> str:
    """DuckDB's message on one line: its hints kept ("Did you mean", candidate columns), the
    ``LINE n:`` excerpt and caret dropped (they quote the statement DuckDB ran, which for a
    predicate is imgcurate's wrapper, not what the user typed)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"})


def check_read_only(query: str) -> None:
    """Accept exactly one SELECT statement; raise :class:`QueryError` otherwise."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {duckdb_message(exc)}") from exc
    if len(statements) != 1:
        raise QueryError(f"exactly one SQL statement is allowed, got {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT queries are allowed (read-only), got {statements[0].type.name}")


def locked_connection(tables: dict[str, Any]) -> duckdb.DuckDBPyConnection:
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


_PER_THREAD = threading.local()


def _partition_connection() -> duckdb.DuckDBPyConnection:
    """This thread's locked connection for predicates over one partition: opening one costs ~12 ms,
    more than most predicates, and a partition task evaluates one after another. Connections are
    not shared between threads; each query registers its own table under ``samples``."""
    con = getattr(_PER_THREAD, "connection", None)
    if con is None:
        con = _PER_THREAD.connection = locked_connection({})
    return con


def where_mask(table: pa.Table, predicate: str) -> pa.Array:
    """Boolean mask of the rows of ``table`` for which the SQL ``predicate`` holds (NULL → false)."""
    query = f"SELECT coalesce(({predicate}), false) AS keep FROM samples"
    try:
        check_read_only(query)
    except QueryError as exc:
        raise QueryError(f"predicate {predicate!r} is not one SQL boolean expression: {exc}") from None
    con = _partition_connection()
    con.register("samples", metadata_table(table))
    try:
        result = con.sql(query).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(f"cannot evaluate predicate {predicate!r}: {duckdb_message(exc)}") from exc
    finally:
        con.unregister("samples")
    return result.column("keep").combine_chunks()
