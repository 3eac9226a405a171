"""The dataframe verbs: each takes and returns a Dask DataFrame, a thin ``map_partitions`` over a
partition function in :mod:`imgcurate.ops`, with its output ``meta`` worked out by running that
function on the input's empty meta (so mistakes show up when the call is made, before any data
is read).
"""

from .captions import (
    basic_filter, check_uids, clip_score, clip_score_threshold, embed_text, filter_clip_score, save_uids, select_uids,
    uid_subset_misses,
)
from .dedup import dedup, hash_images, mark_duplicates
from .embed import embed, score_aesthetic, score_nsfw, score_with
from .select import (
    filter_aesthetic, filter_nsfw, mark_below_threshold, mark_dropped, mark_where, ok_rows, where,
)
from .similar import mark_similar
from .validate import validate_images

__all__ = [
    "where", "mark_where", "mark_dropped", "ok_rows", "filter_aesthetic", "filter_nsfw", "mark_below_threshold",
    "embed", "score_with", "score_aesthetic", "score_nsfw", "validate_images",
    "embed_text", "clip_score", "clip_score_threshold", "filter_clip_score", "basic_filter", "check_uids", "select_uids",
    "save_uids", "uid_subset_misses",
    "hash_images", "mark_duplicates", "dedup",
    "mark_similar",
]
