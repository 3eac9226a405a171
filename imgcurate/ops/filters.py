"""Partition functions that decide which rows to keep.

Two ways to drop rows, both pure functions of one partition:

* plain masks (``df[df.aesthetic_score >= 5]``): the rows disappear;
* :func:`mark_dropped`: rows stay, with ``dropped_by`` naming the stage that rejected them,
  so the writer can count every stage's effect (and keep the dropped rows aside on request).
  The stage API uses this.

A row that already failed (``error`` set) or was already dropped is never marked again: each
row is counted once, by the first thing that removed it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..common import columns as C
from ..common.backend import arrow_mask, backend_of
from .sql import where_mask

AESTHETIC_SCALE = (1.0, 10.0)


def aesthetic_keep(scores, threshold: float):
    """The seed's rule: keep images whose aesthetic score is at least ``threshold``."""
    return scores >= threshold


def nsfw_keep(scores, threshold: float):
    """The seed's rule: keep images whose NSFW score is below ``threshold``."""
    return scores < threshold


def mark_dropped(frame, keep, stage: str):
    """Set ``dropped_by=stage`` on rows where ``keep`` is false and that are still in play."""
    backend = backend_of(frame)
    table = backend.to_arrow(frame)
    keep = arrow_mask(keep)
    dropped_by = table.column(C.DROPPED_BY) if C.DROPPED_BY in table.column_names else pa.nulls(len(table), pa.string())
    errors = table.column(C.ERROR) if C.ERROR in table.column_names else pa.nulls(len(table), pa.string())
    in_play = pc.and_(pc.is_null(dropped_by), pc.is_null(errors))
    newly = pc.and_(in_play, pc.invert(keep))
    marked = pc.if_else(newly, pa.scalar(stage, pa.string()), dropped_by.cast(pa.string()))
    if C.DROPPED_BY in table.column_names:
        table = table.set_column(table.schema.get_field_index(C.DROPPED_BY), C.DROPPED_BY, marked)
    else:
        table = table.append_column(C.DROPPED_BY, marked)
    return backend.from_arrow(table)


KEEP_RULES = {"aesthetic": aesthetic_keep, "nsfw": nsfw_keep}


def mark_below_threshold(frame, column: str, rule: str, threshold: float, stage: str):
    """:func:`mark_dropped` with one of :data:`KEEP_RULES` applied to ``column`` in the same partition
    (a row without a score, e.g. a failure, is never kept by the rule but is already counted as failed)."""
    return mark_dropped(frame, KEEP_RULES[rule](frame[column], threshold), stage)


def mark_where(frame, predicate: str, stage: str = "where"):
    """:func:`mark_dropped` with a SQL predicate over the partition's metadata columns."""
    return mark_dropped(frame, where_mask(backend_of(frame).to_arrow(frame), predicate), stage)


def filter_where(frame, predicate: str):
    """The rows of ``frame`` for which the SQL predicate is true (NULL counts as false)."""
    backend = backend_of(frame)
    table = backend.to_arrow(frame)
    return backend.from_arrow(table.filter(where_mask(table, predicate)))
