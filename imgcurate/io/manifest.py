"""Phase "describe" of a write: the files that describe the shards, and the run's counts.

``_metadata`` (every shard's Parquet footer, so ``dask.dataframe.read_parquet(out)`` reads exactly
the shards), ``_index.json`` (the wids shard index), ``_failures/`` (every failure row) and
``_manifest.json`` (inputs, parameters, counts, shards, versions), which is written last.
"""

from __future__ import annotations

import functools
import json
import sys
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from .._version import __version__
from ..common.errors import MEMBER_REASONS, SAMPLE_REASONS, SHARD_REASONS
from .assemble import write_parquet
from .jsontext import json_default
from .outputdir import FAILURES_DIR, FAILURES_PART, INDEX_FILE, MANIFEST_FILE, OLD_FAILURES_DIR, SUMMARY_FILE, shard_name
from .staging import DROPPED, KEPT

MAX_LISTED_RENAMES = 1000


def failures_by_reason(counts: dict[str, Any]) -> dict[str, int]:
    """Every failure of a write's ``counts`` by reason: failed samples, rejected members and rejected shards."""
    return {**counts.get("failed_by_reason", {}), **counts.get("rejected_members_by_reason", {}),
            **counts.get("rejected_shards_by_reason", {})}


def count_samples(stats: list[dict[str, Any]], results: list[dict[str, Any]],
                  shard_counts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The run's counts from the staging tasks' ``stats``, the assembled shards' ``results`` and, when
    the frame was read from shards, their own counts (``shard_counts``, :func:`~imgcurate.io.reader.count_samples`).

    ``read`` is then the samples found in the input shards, and ``removed`` those of them that were
    neither written, dropped by a stage nor failed: rows the caller's own masks removed, or
    failures under ``on_error="skip"``. Without ``shard_counts`` (a frame built otherwise), ``read``
    is the rows that reached the writer.
    """
    by_reason: dict[str, int] = {}
    dropped_by: dict[str, int] = {}
    for s in stats:
        for reason, n in s["failures_by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        for stage, n in s["dropped_by_stage"].items():
            dropped_by[stage] = dropped_by.get(stage, 0) + n
    written = sum(r["samples"] for r in results if r["stream"] == KEPT)
    dropped = sum(s[DROPPED] for s in stats)
    failed = {r: n for r, n in sorted(by_reason.items()) if r in SAMPLE_REASONS}
    members = {r: n for r, n in sorted(by_reason.items()) if r in MEMBER_REASONS}
    shards = {r: n for r, n in sorted(by_reason.items()) if r in SHARD_REASONS}
    accounted = written + dropped + sum(failed.values())
    read = sum(c["samples"] for c in shard_counts) if shard_counts is not None else accounted
    sidecar_only: dict[str, int] = {}
    for c in shard_counts or ():
        for status, n in c["sidecar_only"].items():
            sidecar_only[status] = sidecar_only.get(status, 0) + n
    return {
        "read": read,
        "read_counted_from": "input shards" if shard_counts is not None else "rows written, dropped and failed",
        "removed": read - accounted,
        "written": written,
        "dropped": dropped,
        "failed": sum(failed.values()),
        "dropped_by_stage": dict(sorted(dropped_by.items())),
        "failed_by_reason": failed,
        "rejected_members": sum(members.values()),
        "rejected_members_by_reason": members,
        "rejected_shards": sum(shards.values()),
        "rejected_shards_by_reason": shards,
        "renamed_keys": sum(len(r["renames"]) for r in results),
        # keys an img2dataset-style sidecar lists that have no member in their shard, by status
        "sidecar_only_by_status": dict(sorted(sidecar_only.items())),
    }


@functools.cache  # asking importlib.metadata takes milliseconds, on every write
def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0]}
    for package in ("dask", "distributed", "pandas", "pyarrow", "fsspec", "numpy", "torch", "open_clip_torch", "pillow", "cudf"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return versions


def write_summary(fs, directory: str, results: list[dict[str, Any]]) -> None:
    """The ``_metadata`` file of ``directory``: the footers of its shards (``results``, in order), with their paths."""
    if fs.exists(f"{directory}/{SUMMARY_FILE}"):
        fs.rm(f"{directory}/{SUMMARY_FILE}")
    if not results:
        return
    summary = results[0]["footer"]
    for result in results[1:]:
        summary.append_row_groups(result["footer"])
    with fs.open(f"{directory}/{SUMMARY_FILE}", "wb") as f:
        summary.write_metadata_file(f)


def write_index(fs, root: str, kept: list[dict[str, Any]]) -> None:
    """``_index.json``: the wids shard index of the kept shards (``kept``, in order)."""
    index = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "shardlist": [{"url": f"{shard_name(r['number'])}.tar", "nsamples": r["samples"], "filesize": r["bytes"]} for r in kept],
    }
    with fs.open(f"{root}/{INDEX_FILE}", "wb") as f:
        f.write(json.dumps(index, indent=1).encode())


def write_failures(fs, root: str, url: str, failures: pa.Table, storage_options: dict | None) -> None:
    """``_failures/part-00000.parquet`` under the output at ``root`` (``url``), replacing an earlier listing."""
    for directory in (FAILURES_DIR, OLD_FAILURES_DIR):
        if fs.exists(f"{root}/{directory}"):
            fs.rm(f"{root}/{directory}", recursive=True)
    write_parquet(failures, "/".join([url.rstrip("/"), FAILURES_DIR, FAILURES_PART]), storage_options)


def shard_list(kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"tar": f"{shard_name(r['number'])}.tar", "parquet": f"{shard_name(r['number'])}.parquet", "samples": r["samples"],
             "bytes": r["bytes"]} for r in kept]


def listed_renames(kept: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The key renames of the kept shards, at most :data:`MAX_LISTED_RENAMES` (the counts have them all)."""
    return [r for result in kept for r in result["renames"]][:MAX_LISTED_RENAMES]


def manifest(output_url: str, replacing: str, inputs: list[str], parameters: dict[str, Any], extra: dict[str, Any],
             counts: dict[str, Any], kept: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``_manifest.json`` document, its ``elapsed_seconds`` left for the caller to fill in last."""
    return {
        "imgcurate_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_seconds": None,
        "output_dir": output_url,
        "replaced": replacing or None,
        "inputs": inputs,
        "parameters": parameters,
        **extra,
        "counts": counts,
        "renamed_keys": listed_renames(kept),
        "shards": shard_list(kept),
        "versions": dict(package_versions()),
    }


def write_manifest(fs, root: str, manifest: dict[str, Any]) -> None:
    with fs.open(f"{root}/{MANIFEST_FILE}", "wb") as f:
        f.write(json.dumps(manifest, indent=1, default=json_default).encode())
