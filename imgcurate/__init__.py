"""imgcurate: curate image datasets at scale on Dask dataframes over WebDataset shards."""

from ._version import __version__
from .dataframe import (
    embed, filter_aesthetic, filter_nsfw, mark_dropped, mark_where, ok_rows, score_aesthetic, score_nsfw,
    validate_images, where,
)
from .display import show
from .io.reader import read_webdataset
from .io.writer import WriteResult, write_webdataset
from .query import sql

# The models pull in torch and open_clip (seconds to import): loaded on first use.
_MODELS = ("CLIPImageEmbedder", "AestheticScorer", "NSFWScorer")

__all__ = [
    "__version__", "read_webdataset", "write_webdataset", "WriteResult", "where", "mark_where", "mark_dropped",
    "ok_rows", "sql", "show", "embed", "score_aesthetic", "score_nsfw", "filter_aesthetic", "filter_nsfw", "validate_images",
    *_MODELS,
]


def __getattr__(name: str):
    if name in _MODELS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'imgcurate' has no attribute {name!r}")
