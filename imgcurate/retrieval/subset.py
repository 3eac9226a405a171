"""Search results → a new WebDataset: the matched samples copied from their source shards.

The results name each sample by ``source_shard`` and ``source_index``. The shards that hold a
match are read again without their image bytes (``read_webdataset(..., with_images=False)``),
cut to the matched rows, given their ``similarity``, and written by ``write_webdataset``: the
original bytes are copied by byte range, every shard but the last holds exactly
``images_per_tar`` samples, and ``_manifest.json`` records the query. Samples keep dataset order
(the order of the shards in the index, then their order in the shard); ``similarity`` is in the
Parquet metadata and in each sample's ``.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..common import columns as C


def matches_by_shard(results) -> tuple[list[str], dict[str, dict[int, float]]]:
    """(the shards holding a match, in dataset order; shard → {index: similarity}) from a results frame."""
    missing = [name for name in (C.SOURCE_SHARD, C.SOURCE_INDEX, "similarity") if name not in results.columns]
    if missing:
        raise ValueError(f"the results have no {', '.join(missing)} column: the index's metadata does not say where "
                         f"the samples are")
    matches: dict[str, dict[int, float]] = {}
    first_id: dict[str, int] = {}
    order = results["index_id"] if "index_id" in results.columns else range(len(results))
    for shard, index, score, rank in zip(results[C.SOURCE_SHARD], results[C.SOURCE_INDEX], results["similarity"], order):
        if shard is None or index is None:
            continue
        matches.setdefault(str(shard), {})[int(index)] = max(float(score), matches.get(str(shard), {}).get(int(index), -np.inf))
        first_id[str(shard)] = min(int(rank), first_id.get(str(shard), int(rank)))
    return sorted(matches, key=first_id.__getitem__), matches


def write_matches(results, output_dir: str, *, images_per_tar: int = 1000, query: dict[str, Any] | None = None,
                  overwrite: bool = False, progress: bool = False, storage_options: dict | None = None, client=None):
    """Write the samples of ``results`` (a frame from :func:`imgcurate.search`) as a new WebDataset in
    ``output_dir``; ``query`` is recorded in ``_manifest.json``. Returns the writer's ``WriteResult``."""
    from ..io.reader import read_webdataset
    from ..io.writer import check_images_per_tar, write_webdataset
    from ..ops.similar import keep_matches_partition

    check_images_per_tar(images_per_tar)
    shards, matches = matches_by_shard(results)
    if not shards:
        raise ValueError("no results to write: the search matched nothing")
    df = read_webdataset(shards, with_images=False, storage_options=storage_options)
    df = df.map_partitions(keep_matches_partition, matches, meta=keep_matches_partition(df._meta, matches))
    extra = {"search": {"query": query or {}, "matches": int(sum(len(m) for m in matches.values()))}}
    return write_webdataset(df, output_dir, images_per_tar=images_per_tar, overwrite=overwrite, progress=progress,
                            storage_options=storage_options, manifest_extra=extra, client=client)
