"""Keeping and dropping rows: SQL predicates, masks, the seed's score thresholds.

Plain masks (``df[df.aesthetic_score >= 5]``) delete rows; the ``mark_*`` verbs keep them and set
``dropped_by`` to the stage that rejected them, so the writer can count each stage's effect.
"""

from __future__ import annotations

from ..common import columns
from ..ops import filters


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


def filter_aesthetic(df, threshold: float):
    """Rows whose aesthetic score is at least ``threshold`` (same as ``df[df.aesthetic_score >= threshold]``)."""
    return df[filters.aesthetic_keep(df[columns.AESTHETIC_SCORE], threshold)]


def filter_nsfw(df, threshold: float):
    """Rows whose NSFW score is below ``threshold`` (same as ``df[df.nsfw_score < threshold]``)."""
    return df[filters.nsfw_keep(df[columns.NSFW_SCORE], threshold)]


def mark_below_threshold(df, column: str, rule: str, threshold: float, stage: str):
    """Mark rows that ``rule`` (``"aesthetic"`` or ``"nsfw"``) rejects as ``dropped_by=stage``."""
    meta = filters.mark_below_threshold(df._meta, column, rule, threshold, stage)
    return df.map_partitions(filters.mark_below_threshold, column, rule, threshold, stage, meta=meta)
