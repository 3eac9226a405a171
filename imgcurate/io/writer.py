"""Write a dataframe as WebDataset shards of exactly ``images_per_tar`` samples (README, "Output format").

:func:`write_webdataset` runs these phases, each in its own module, each a set of independent Dask
tasks or a few calls on the driver, so memory is bounded by a few partitions:

1. **validate** the arguments and the output directory (:mod:`~imgcurate.io.outputdir`);
2. **stage** every partition once: kept, dropped and failed rows (:mod:`~imgcurate.io.staging`);
3. **plan** the output shards from the staged counts (:mod:`~imgcurate.io.shardplan`);
4. **assemble** the shards, image bytes copied by byte range (:mod:`~imgcurate.io.assemble`);
5. **publish** them (renamed into place) and **describe** them: ``_metadata``, ``_index.json``,
   ``_failures/``, then ``_manifest.json`` last (:mod:`~imgcurate.io.manifest`).

Until the manifest is written an ``_imgcurate_incomplete`` marker stands in the directory, locked
by this process; a run that fails before publishing leaves the directory as it found it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import dask

from .._version import __version__
from ..common.backend import backend_of
from ..common.errors import OutputExistsError
from ..common.progress import active_client, compute
from . import manifest as describe
from .assemble import assemble_shards
from .outputdir import (
    DROPPED_DIR, MARKER, check_output_dir, clear_leftovers, inside, publish_shards, remove_staging, withdrawn_on_error,
)
from .paths import filesystem, full_url, is_local_fs
from .reader import ShardTask, count_samples, reader_tasks
from .runlock import hold_marker
from .shardplan import ShardPlan, group_plans, plan_shards
from .staging import DROPPED, KEPT, WriteOptions, read_staged_failures, stage_partition


@dataclass
class WriteResult:
    """What :func:`write_webdataset` wrote."""

    output_dir: str
    shards: int
    samples: int
    bytes: int
    counts: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        c = self.counts
        return (
            f"wrote {self.samples} samples in {self.shards} shards ({self.bytes / 1e6:.1f} MB) to {self.output_dir}; "
            f"read {c.get('read', 0)}, removed {c.get('removed', 0)}, dropped {c.get('dropped', 0)}, failed {c.get('failed', 0)}"
        )

    def __repr__(self) -> str:
        c = self.counts

        def with_detail(name: str, by: str) -> str:
            detail = ", ".join(f"{k} {v}" for k, v in c.get(by, {}).items())
            return f"{name}={c.get(name, 0)}" + (f" ({detail})" if detail else "")

        return (f"WriteResult({self.output_dir!r}, shards={self.shards}, samples={self.samples}, bytes={self.bytes}, "
                f"read={c.get('read', 0)}, removed={c.get('removed', 0)}, {with_detail('dropped', 'dropped_by_stage')}, "
                f"{with_detail('failed', 'failed_by_reason')})")


def check_images_per_tar(images_per_tar) -> None:
    if isinstance(images_per_tar, bool) or not isinstance(images_per_tar, int) or images_per_tar < 1:
        raise ValueError(f"images_per_tar must be a positive integer, got {images_per_tar!r}")


def _stage(df, options: WriteOptions, shard_tasks: list[ShardTask] | None, progress: bool,
           client) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Phase 2: stage every partition; the counts of each, in partition order. The input shards
    (when the frame was read by ``read_webdataset``) are counted in the same run, so that the
    manifest's ``read`` is counted where samples are read, not worked out from what was written."""
    tasks = [dask.delayed(stage_partition)(part, i, options) for i, part in enumerate(df.to_delayed())]
    stats = compute(tasks, desc="staging", progress=progress, client=client)
    if not shard_tasks:
        return stats, None
    # after the reads: a process that read a shard counts it from what it found, others by its headers
    if client is None and active_client() is None:  # the reads ran in this process: no need to schedule tasks
        return stats, [count_samples(task) for task in shard_tasks]
    return stats, compute([dask.delayed(count_samples)(task) for task in shard_tasks], desc="counting", client=client)


def refuse_inputs_inside_output(inputs: list[str], output_url: str) -> None:
    clash = [source for source in inputs if inside(source, output_url)]
    if clash:
        raise OutputExistsError(f"input shard {clash[0]!r} lies inside the output directory; write somewhere else")


def _plan(stats: list[dict[str, Any]], options: WriteOptions) -> list[list[ShardPlan]]:
    """Phase 3: the output shards of each stream, grouped into runs of about one partition's rows (one task each)."""
    streams = [KEPT] + ([DROPPED] if options.keep_dropped else [])
    rows_per_task = max(options.images_per_tar, sum(s[KEPT] for s in stats) // max(1, len(stats)))
    return [group for stream in streams
            for group in group_plans(plan_shards([s[stream] for s in stats], options.images_per_tar, stream),
                                     rows_per_task, options.images_per_tar)]


def _assemble(groups: list[list[ShardPlan]], options: WriteOptions, progress: bool, client) -> list[dict[str, Any]]:
    """Phase 4: write every shard; one record per shard (see :func:`~imgcurate.io.assemble.write_shard`)."""
    tasks = [dask.delayed(assemble_shards)(group, options) for group in groups]
    return [record for batch in compute(tasks, desc="writing shards", progress=progress, client=client) for record in batch]


def _publish(fs, root: str, options: WriteOptions, results: list[dict[str, Any]]) -> None:
    """Phase 5: the assembled shards renamed into the output directory and ``_dropped/``."""
    assembled = {}
    for stream, directory in ((KEPT, root), (DROPPED, f"{root}/{DROPPED_DIR}")):
        names = [f"{r['number']:05d}.{ext}" for r in results if r["stream"] == stream for ext in ("tar", "parquet")]
        assembled[directory] = {name: filesystem(options.assembled(stream, name), options.storage_options)[1] for name in names}
    publish_shards(fs, root, assembled, options.local)


def write_webdataset(
    df,
    output_dir: str,
    *,
    images_per_tar: int = 1000,
    remove_image_data: bool = True,
    overwrite: bool = False,
    storage_options: dict | None = None,
    source_storage_options: dict | None = None,
    keep_dropped: bool = False,
    progress: bool = False,
    manifest_extra: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    client=None,
) -> WriteResult:
    """Write ``df`` as WebDataset shards plus Parquet metadata (format: README, "Output format").

    Every shard but the last holds exactly ``images_per_tar`` samples, in input order minus
    the rows filtered out. Rows with ``error`` set go to ``_failures/``; rows with
    ``dropped_by`` set are counted (and, with ``keep_dropped``, written under ``_dropped/``).
    ``remove_image_data=False`` also keeps the image bytes in the Parquet files.
    ``source_storage_options`` (default: ``storage_options``) opens the input shards when image
    bytes are copied from them. ``manifest_extra`` adds entries to ``_manifest.json``; a callable
    receives the counts first. The work runs on ``client`` (a ``distributed.Client``), else on the
    active client, else on Dask's default scheduler.
    """
    check_images_per_tar(images_per_tar)
    started = time.time()
    fs, root = filesystem(output_dir, storage_options)
    options = WriteOptions(
        full_url(fs, root), images_per_tar, remove_image_data, keep_dropped, storage_options,
        source_storage_options if source_storage_options is not None else storage_options,
        backend_of(df).to_arrow(df._meta).schema, is_local_fs(fs),
    )
    shard_tasks = reader_tasks(df)
    if shard_tasks:  # before anything is read; otherwise the rows' sources are checked after staging
        refuse_inputs_inside_output([task.url for task in shard_tasks], options.output_url)
    existed = fs.isdir(root)
    replacing = check_output_dir(fs, root, overwrite)
    # held until the run has finished: meanwhile a second run into the directory is refused
    with hold_marker(fs, root, MARKER) as marker:
        clear_leftovers(fs, root, replacing)
        with withdrawn_on_error(fs, root, existed, replacing):
            marker.write(__version__)
            stats, shard_counts = _stage(df, options, shard_tasks, progress, client)
            if shard_tasks:
                inputs = list(dict.fromkeys(task.url for task in shard_tasks))
            else:
                inputs = sorted({source for s in stats for source in s["sources"]})
                refuse_inputs_inside_output(inputs, options.output_url)
            results = _assemble(_plan(stats, options), options, progress, client)

        _publish(fs, root, options, results)
        kept = sorted((r for r in results if r["stream"] == KEPT), key=lambda r: r["number"])
        describe.write_index(fs, root, kept)
        describe.write_failures(fs, root, options.output_url, read_staged_failures(options, stats), storage_options)
        for stream, directory in ((KEPT, root), (DROPPED, f"{root}/{DROPPED_DIR}")):
            describe.write_summary(fs, directory, sorted((r for r in results if r["stream"] == stream), key=lambda r: r["number"]))

        counts = describe.count_samples(stats, results, shard_counts)
        parameters = {"images_per_tar": images_per_tar, "remove_image_data": remove_image_data, "keep_dropped": keep_dropped}
        extra = (manifest_extra(counts) if callable(manifest_extra) else manifest_extra) or {}
        manifest = describe.manifest(options.output_url, replacing, inputs, parameters, extra, counts, kept)
        remove_staging(fs, root)
        manifest["elapsed_seconds"] = round(time.time() - started, 3)
        describe.write_manifest(fs, root, manifest)
        fs.rm(f"{root}/{MARKER}")
        return WriteResult(options.output_url, len(kept), counts["written"], sum(r["bytes"] for r in kept), counts, manifest)
