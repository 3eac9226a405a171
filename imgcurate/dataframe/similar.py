"""``mark_similar``: a boolean column for rows close to reference images (``map_partitions`` over :mod:`imgcurate.ops.similar`)."""

from __future__ import annotations

import math


def mark_similar(df, index_or_queries, min_similarity: float, *, column: str = "similar", model_id: str | None = None):
    """Add ``column`` (bool): True where the row's ``embedding`` has inner product ≥ ``min_similarity`` with
    some reference: the vectors of an index (``imgcurate.build_index`` on, say, an evaluation set; its
    directory or the opened index) or an (n, width) array of unit embeddings.

    Exact on every index kind. Rows without an embedding are False. An index that records another
    model than the rows' ``embedding_model`` (or ``model_id``) is refused, as is a width mismatch,
    before any data is read. Use it as a mask: ``clean = df[~df.similar]``.
    """
    from ..ops.similar import SimilarityTarget, check_width, mark_similar_partition

    if isinstance(min_similarity, bool) or not isinstance(min_similarity, (int, float)) or not math.isfinite(min_similarity):
        raise ValueError(f"min_similarity must be a finite number, got {min_similarity!r}")
    target = SimilarityTarget.of(index_or_queries, model_id)
    if not hasattr(df, "map_partitions"):  # a pandas (or cuDF) frame
        return mark_similar_partition(df, target, float(min_similarity), column)
    from ..common.backend import backend_of
    from ..common import columns

    meta_table = backend_of(df._meta).to_arrow(df._meta)
    if columns.EMBEDDING in meta_table.column_names:
        check_width(meta_table.column(columns.EMBEDDING).type, target)
    meta = mark_similar_partition(df._meta, target, float(min_similarity), column)
    return df.map_partitions(mark_similar_partition, target, float(min_similarity), column, meta=meta)
