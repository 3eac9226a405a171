"""CLIP embeddings and LAION head scores as dataframe columns (``map_partitions`` over :mod:`imgcurate.ops.embed`)."""

from __future__ import annotations

from ..common import columns


def embed(df, embedder, *, aesthetic=None, nsfw=None, on_error: str = "report", storage_options: dict | None = None):
    """Add ``embedding`` (CLIP, unit-length float32 vectors) to every row still in play.

    Pass ``aesthetic`` / ``nsfw`` scorers to add ``aesthetic_score`` / ``nsfw_score`` in the same
    pass. Images are read from the ``image`` column, or fetched from the source shards when the
    dataframe was read with ``with_images=False``. Rows whose image cannot be decoded become
    failure rows (``error``) under ``on_error`` (``"report"``, ``"skip"`` or ``"raise"``).
    """
    from ..common.errors import check_on_error
    from ..ops.embed import embed_partition

    check_on_error(on_error)
    options = dict(aesthetic=aesthetic, nsfw=nsfw, on_error=on_error, storage_options=storage_options)
    meta = embed_partition(df._meta, embedder, **options)
    return df.map_partitions(embed_partition, embedder, **options, meta=meta)


def score_with(df, scorer, column: str):
    """Add ``column`` holding ``scorer``'s score of each row's ``embedding`` (null where there is none)."""
    from ..ops.embed import score_partition

    meta = score_partition(df._meta, scorer, column)
    return df.map_partitions(score_partition, scorer, column, meta=meta)


def score_aesthetic(df, scorer=None):
    """Add ``aesthetic_score`` (LAION's ~1–10 scale) from the ``embedding`` column."""
    from ..models import AestheticScorer

    return score_with(df, scorer or AestheticScorer(), columns.AESTHETIC_SCORE)


def score_nsfw(df, scorer=None):
    """Add ``nsfw_score`` (0–1, higher is more likely NSFW) from the ``embedding`` column."""
    from ..models import NSFWScorer

    return score_with(df, scorer or NSFWScorer(), columns.NSFW_SCORE)
