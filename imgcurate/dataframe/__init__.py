"""The dataframe verbs: each takes and returns a Dask DataFrame, a thin ``map_partitions`` over a
partition function in :mod:`imgcurate.ops` (or a few Dask steps for the verbs that work across
partitions: dedup, the top fraction, uids), with its output ``meta`` worked out by running that
function on the input's empty meta, so mistakes show up when the call is made, before any data
is read.

Each verb's module is imported when the verb is first used: a command that only filters does not
pay for the imports of deduplication or captions.
"""

import importlib

# verb -> the module of this package that defines it
_VERBS = {
    "where": "select", "mark_where": "select", "mark_dropped": "select", "ok_rows": "select",
    "filter_aesthetic": "select", "filter_nsfw": "select", "mark_below_threshold": "select",
    "embed": "embedding", "score_with": "embedding", "score_aesthetic": "embedding", "score_nsfw": "embedding",
    "validate_images": "validate",
    "embed_text": "captions", "clip_score": "captions", "clip_score_threshold": "captions", "filter_clip_score": "captions",
    "basic_filter": "captions", "check_uids": "captions", "select_uids": "captions", "save_uids": "captions",
    "uid_subset_misses": "captions",
    "hash_images": "duplicates", "mark_duplicates": "duplicates", "dedup": "duplicates",
    "mark_similar": "similar",
}

__all__ = list(_VERBS)


def __getattr__(name: str):
    module = _VERBS.get(name)
    if module is None:
        raise AttributeError(f"module 'imgcurate.dataframe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_VERBS))
