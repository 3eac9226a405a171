"""Phase "stage" of a write: each partition computed once, split into kept, dropped and failed rows.

Kept rows (and dropped ones, when they are kept aside) are saved to ``_imgcurate_tmp/<run>/`` as
Arrow IPC files (read back once by the same run, so no Parquet encoding), with where their image
bytes are: in the source shard, found by the ``_image_offset`` the reader recorded (nothing is
copied), or, when the frame holds the bytes in an ``image`` column, in a blob file spilled next
to it. Failure rows are saved for ``_failures/``. Each task returns its counts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..common import columns as C
from ..common.backend import backend_of
from .outputdir import DROPPED_DIR, TMP_DIR
from .paths import filesystem, writable_path
from .ranges import ShardSink

KEPT, DROPPED = "kept", "dropped"
# staged rows say where their image bytes are
BLOB_URL, BLOB_OFFSET, BLOB_SIZE = "_blob_url", "_blob_offset", "_blob_size"
FAILURE_COLUMNS = (C.SOURCE_SHARD, C.SOURCE_INDEX, C.KEY, C.ERROR, C.ERROR_MEMBER, C.ERROR_DETAIL)


@dataclass(frozen=True)
class WriteOptions:
    """One write's parameters and paths, shared by every task of it (small and picklable)."""

    output_url: str
    images_per_tar: int
    remove_image_data: bool
    keep_dropped: bool
    storage_options: dict | None
    source_storage_options: dict | None
    schema: pa.Schema  # the frame's columns, so every partition stages with the same types
    local: bool  # output on the local filesystem (rename into place) or an object store (write in place)
    # each run stages under its own folder, so tasks of a killed run that are still finishing on a
    # cluster can never write into the staging of the run that replaces it
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def url(self, *parts: str) -> str:
        return "/".join([self.output_url.rstrip("/"), *parts])

    def staged(self, stream: str, name: str) -> str:
        return self.url(TMP_DIR, self.run_id, stream, name)

    def published(self, stream: str, name: str) -> str:
        return self.url(name) if stream == KEPT else self.url(DROPPED_DIR, name)

    def assembled(self, stream: str, name: str) -> str:
        """Where assembled shards are written: staged locally (renamed at the end), final on object stores."""
        return self.staged(f"out-{stream}", name) if self.local else self.published(stream, name)


def column_or_nulls(table: pa.Table, name: str, typ: pa.DataType) -> pa.Array | pa.ChunkedArray:
    return table.column(name) if name in table.column_names else pa.nulls(len(table), typ)


def write_staged(table: pa.Table, url: str, storage_options: dict | None) -> None:
    """Stage ``table`` as an Arrow IPC file."""
    fs, path = writable_path(url, storage_options)
    with fs.open(path, "wb") as f, pa.ipc.new_file(f, table.schema) as sink:
        sink.write_table(table)


def read_staged(url: str, storage_options: dict | None) -> pa.Table:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as f:
        return pa.ipc.open_file(f).read_all()


def _value_counts(array) -> dict[str, int]:
    if len(array) == 0:
        return {}
    counts = pc.value_counts(array.drop_null() if hasattr(array, "drop_null") else array)
    return {str(item["values"]): int(item["counts"]) for item in counts.to_pylist()}


def _spill(images: pa.ChunkedArray, url: str, storage_options: dict | None) -> pa.Array:
    """Write the bytes of a binary column to ``url``, each chunk's values buffer in one piece;
    returns where each value starts in the file (int64)."""
    sink = ShardSink(url, storage_options)
    starts = []
    try:
        for chunk in images.chunks:
            offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32, count=len(chunk) + 1, offset=4 * chunk.offset)
            first, last = int(offsets[0]), int(offsets[-1])
            starts.append(offsets[:-1].astype(np.int64) - first + sink.size)
            if last > first:
                sink.write(memoryview(chunk.buffers()[2]).cast("B")[first:last])
    finally:
        sink.close()
    return pa.array(np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64), pa.int64())


def _locate_images(table: pa.Table, spill_url: str, options: WriteOptions) -> pa.Table:
    """Replace the image bytes of ``table`` by (blob url, offset, size) columns: the bytes the frame
    holds are spilled to ``spill_url``; otherwise the image's range in its source shard."""
    # where the reader found each image
    urls, offsets, sizes = (column_or_nulls(table, C.SOURCE_SHARD, pa.string()), column_or_nulls(table, C.IMAGE_OFFSET, pa.int64()),
                            column_or_nulls(table, C.IMAGE_NBYTES, pa.int64()))
    in_source = pc.and_(pc.and_(pc.is_valid(urls), pc.is_valid(offsets)), pc.is_valid(sizes))
    urls, offsets, sizes = (pc.if_else(in_source, column, pa.scalar(None, column.type)) for column in (urls, offsets, sizes))
    if C.IMAGE in table.column_names:
        images = table.column(C.IMAGE)
        if images.null_count < len(table):  # bytes in the frame win over the source range
            spill_offsets = _spill(images, spill_url, options.storage_options)
            spilled = pc.is_valid(images)
            urls = pc.if_else(spilled, pa.scalar(spill_url, pa.string()), urls)
            offsets = pc.if_else(spilled, spill_offsets, offsets)
            sizes = pc.if_else(spilled, pc.cast(pc.binary_length(images), pa.int64()), sizes)
        table = table.drop_columns([C.IMAGE])
    return table.append_column(BLOB_URL, urls).append_column(BLOB_OFFSET, offsets).append_column(BLOB_SIZE, sizes)


def _stage_failures(failures: pa.Table, number: int, options: WriteOptions) -> None:
    """Save the failure rows of partition ``number`` (their listing columns only) for ``_failures/``."""
    failure_table = pa.table({
        name: column_or_nulls(failures, name, options.schema.field(name).type if name in options.schema.names else pa.string())
        for name in FAILURE_COLUMNS
    })
    write_staged(failure_table, options.staged("failures", f"p{number:06d}.arrow"), options.storage_options)


def stage_partition(frame, number: int, options: WriteOptions) -> dict[str, Any]:
    """Stage partition ``number``: its kept (and dropped) rows and its failures.

    Returns the partition's counts: ``kept`` and ``dropped`` rows, ``failures_by_reason``,
    ``dropped_by_stage`` and the ``sources`` (input shards) its rows came from.
    """
    table = backend_of(frame).to_arrow(frame)
    table = table.select(options.schema.names).cast(options.schema)
    errors = column_or_nulls(table, C.ERROR, pa.string())
    dropped_by = column_or_nulls(table, C.DROPPED_BY, pa.string())
    failed_mask = pc.is_valid(errors)
    dropped_mask = pc.and_(pc.invert(failed_mask), pc.is_valid(dropped_by))
    kept_mask = pc.invert(pc.or_(failed_mask, dropped_mask))

    failures = table.filter(failed_mask)
    if len(failures):
        _stage_failures(failures, number, options)
    stats: dict[str, Any] = {
        "partition": number,
        "failures_by_reason": _value_counts(failures.column(C.ERROR)) if len(failures) else {},
        "dropped_by_stage": _value_counts(dropped_by.filter(dropped_mask)),
        "sources": sorted(set(column_or_nulls(table, C.SOURCE_SHARD, pa.string()).drop_null().to_pylist())),
    }
    streams = [(KEPT, kept_mask)] + ([(DROPPED, dropped_mask)] if options.keep_dropped else [])
    for stream, mask in streams:
        rows = table.filter(mask)
        stats[stream] = len(rows)
        if len(rows):
            staged = _locate_images(rows, options.staged(stream, f"p{number:06d}.bin"), options)
            write_staged(staged, options.staged(stream, f"p{number:06d}.arrow"), options.storage_options)
    stats.setdefault(DROPPED, int(pc.sum(dropped_mask).as_py() or 0))
    return stats


def read_staged_failures(options: WriteOptions, stats: list[dict[str, Any]]) -> pa.Table:
    """Every staged failure row, in partition order, with the failure listing's columns and types."""
    tables = [read_staged(options.staged("failures", f"p{s['partition']:06d}.arrow"), options.storage_options)
              for s in stats if s["failures_by_reason"]]
    schema = pa.schema([(name, pa.int64() if name == C.SOURCE_INDEX else pa.string()) for name in FAILURE_COLUMNS])
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
