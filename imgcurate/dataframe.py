"""Dataframe-level calls: thin ``map_partitions`` wrappers around the partition functions.

Each one takes and returns a Dask DataFrame and states its output ``meta`` by running the
partition function on the input's (empty) meta, so mistakes such as an unknown column in a
SQL predicate show up when the call is made, before any data is read.
"""

from __future__ import annotations

from . import columns
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


# -- models --------------------------------------------------------------------------------

def embed(df, embedder, *, aesthetic=None, nsfw=None, on_error: str = "report", storage_options: dict | None = None):
    """Add ``embedding`` (CLIP, unit-length float32 vectors) to every row still in play.

    Pass ``aesthetic`` / ``nsfw`` scorers to add ``aesthetic_score`` / ``nsfw_score`` in the same
    pass. Images are read from the ``image`` column, or fetched from the source shards when the
    dataframe was read with ``with_images=False``. Rows whose image cannot be decoded become
    failure rows (``error``) under ``on_error`` (``"report"``, ``"skip"`` or ``"raise"``).
    """
    from .errors import check_on_error
    from .ops.embed import embed_partition

    check_on_error(on_error)
    options = dict(aesthetic=aesthetic, nsfw=nsfw, on_error=on_error, storage_options=storage_options)
    meta = embed_partition(df._meta, embedder, **options)
    return df.map_partitions(embed_partition, embedder, **options, meta=meta)


def score_with(df, scorer, column: str):
    """Add ``column`` holding ``scorer``'s score of each row's ``embedding`` (null where there is none)."""
    from .ops.embed import score_partition

    meta = score_partition(df._meta, scorer, column)
    return df.map_partitions(score_partition, scorer, column, meta=meta)


def score_aesthetic(df, scorer=None):
    """Add ``aesthetic_score`` (LAION's ~1–10 scale) from the ``embedding`` column."""
    from .models import AestheticScorer

    return score_with(df, scorer or AestheticScorer(), columns.AESTHETIC_SCORE)


def score_nsfw(df, scorer=None):
    """Add ``nsfw_score`` (0–1, higher is more likely NSFW) from the ``embedding`` column."""
    from .models import NSFWScorer

    return score_with(df, scorer or NSFWScorer(), columns.NSFW_SCORE)


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


def validate_images(df, *, on_error: str = "report", storage_options: dict | None = None, max_pixels: int | None = None):
    """Turn rows whose image does not decode into failure rows, leaving the image bytes as they are.

    Every image still in play is decoded with Pillow (JPEGs at reduced scale); one that is not an
    image, is corrupt or truncated becomes ``decode_error``, one over ``max_pixels`` (default: the
    decoder's limit, Pillow's own) ``image_too_large``, refused from its header without decoding.
    Rows without an image are left alone. ``on_error`` is the failure policy. This is what
    ``imgcurate reshard --validate-images`` adds before copying.
    """
    from .errors import check_on_error
    from .ops.decode import DEFAULT_MAX_PIXELS
    from .ops.validate import validate_partition

    check_on_error(on_error)
    options = dict(on_error=on_error, storage_options=storage_options, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    meta = validate_partition(df._meta, **options)
    return df.map_partitions(validate_partition, **options, meta=meta)
