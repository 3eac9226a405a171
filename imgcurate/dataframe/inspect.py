"""``imgcurate inspect``: what a WebDataset holds, read from tar headers (no image bytes)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..common import columns as C
from ..io.paths import expand_shards, filesystem
from ..io.reader import read_webdataset
from ..io.outputdir import MANIFEST_FILE


def _per_shard(frame: pd.DataFrame) -> pd.DataFrame:
    failed = frame[C.ERROR].notna()
    return pd.DataFrame({
        "shard": frame[C.SOURCE_SHARD].iloc[:1].astype(object) if len(frame) else pd.Series([], dtype=object),
        "samples": [int((~failed).sum())] if len(frame) else [],
        "failures": [int(failed.sum())] if len(frame) else [],
    })


def inspect_dataset(path: str, storage_options: dict | None = None) -> dict[str, Any]:
    df = read_webdataset(path, with_images=False, storage_options=storage_options)
    shards = expand_shards(path, storage_options)
    meta = pd.DataFrame({"shard": pd.Series([], dtype=object), "samples": pd.Series([], dtype="int64"),
                         "failures": pd.Series([], dtype="int64")})
    per_shard = df.map_partitions(_per_shard, meta=meta).compute()
    failures = df[C.ERROR].dropna().value_counts().compute()
    sizes = {}
    for shard in shards:
        fs, p = filesystem(shard, storage_options)
        sizes[shard] = fs.size(p)
    counts = {row.shard: (int(row.samples), int(row.failures)) for row in per_shard.itertuples()}
    report = {
        "shards": len(shards),
        "samples": sum(s for s, _ in counts.values()),
        "bytes": sum(sizes.values()),
        "failures": {str(k): int(v) for k, v in failures.items()},
        "per_shard": [{"shard": s, "samples": counts.get(s, (0, 0))[0], "failures": counts.get(s, (0, 0))[1], "bytes": sizes[s]}
                      for s in shards],
        "columns": {name: str(dtype) for name, dtype in df.dtypes.items() if not C.is_internal(name)},
        "manifest": None,
    }
    fs, root = filesystem(path, storage_options)
    if isinstance(path, str) and fs.isdir(root) and fs.exists(f"{root}/{MANIFEST_FILE}"):
        with fs.open(f"{root}/{MANIFEST_FILE}", "rb") as f:
            report["manifest"] = json.load(f)
    return report
