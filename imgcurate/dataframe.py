"""Dataframe-level calls: thin ``map_partitions`` wrappers around the partition functions.

Each one takes and returns a Dask DataFrame and states its output ``meta`` by running the
partition function on the input's (empty) meta, so mistakes such as an unknown column in a
SQL predicate show up when the call is made, before any data is read.
"""

from __future__ import annotations

from .ops import filters


def where(df, predicate: str):
    """Rows for which the SQL ``predicate`` holds, e.g. ``"width >= 300 AND caption ILIKE '%dog%'"``."""
    meta = filters.filter_where(df._meta, predicate)
    return df.map_partitions(filters.filter_where, predicate, meta=meta)


def mark_where(df, predicate: str, stage: str = "where"):
    """Like :func:`where`, but rows are kept and marked ``dropped_by=stage`` (counted by the writer)."""
    meta = filters.mark_where(df._meta, predicate, stage)
    return df.map_partitions(filters.mark_where, predicate, stage, meta=meta)


def mark_dropped(df, keep, stage: str):
    """Mark rows where the boolean Dask Series ``keep`` is false as ``dropped_by=stage``."""
    meta = filters.mark_dropped(df._meta, keep._meta, stage)
    return df.map_partitions(filters.mark_dropped, keep, stage, meta=meta)


def ok_rows(df):
    """Rows that are neither failures nor marked dropped."""
    mask = df.error.isna()
    if "dropped_by" in df.columns:
        mask = mask & df.dropped_by.isna()
    return df[mask]
