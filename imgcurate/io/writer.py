"""Write a dataframe as WebDataset shards of exactly ``images_per_tar`` samples.

Two phases, each a set of independent Dask tasks, so memory is bounded by a few partitions:

1. **stage**: every partition is computed once. Its rows are split into kept, dropped (a
   filter stage marked them in ``dropped_by``) and failed (``error`` set). Kept rows are saved
   as a small Arrow IPC file in a staging directory; their image bytes stay where they are
   (the source shard, found by the ``_image_offset`` the reader recorded) unless the frame
   itself holds them in an ``image`` column, in which case they are spilled to one blob file
   per partition. Each task returns its counts.
2. **assemble**: with the kept-row count of every partition known, output shard ``s`` holds
   rows ``[s*N, (s+1)*N)`` in input order, whichever partitions they come from. Tasks write
   runs of consecutive shards, copying image bytes by byte range (batched ``preadv`` calls
   from local sources, see :class:`~imgcurate.io.ranges.ShardSink`).

Publishing: staged files live in ``_imgcurate_tmp/`` and an ``_imgcurate_incomplete`` marker
stands in the output directory until the end; local shards are renamed into place at the end,
and ``_manifest.json`` is written last. A run that fails before publishing (bad input under
``on_error="raise"``, an exception, Ctrl-C) removes what it staged and leaves the directory as it
found it; a run that is killed leaves the marker, and the next run recognises it and replaces it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import dask
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..common import columns as C
from .._version import __version__
from ..common.backend import backend_of
from ..common.errors import MEMBER_REASONS, SAMPLE_REASONS, SHARD_REASONS, OutputExistsError
from ..common.progress import compute
from .paths import filesystem, full_url, is_local_fs, writable_path
from .ranges import RangeSource, ShardSink
from .runlock import hold_marker, marker_held, refuse_live_run
from .schema import JSON_TEXT, parse_json
from .tar import END_OF_ARCHIVE, member_headers, padding

log = logging.getLogger("imgcurate")

TMP_DIR = "_imgcurate_tmp"
MARKER = "_imgcurate_incomplete"
INDEX_FILE = "_index.json"
MANIFEST_FILE = "_manifest.json"
# A directory holding one Parquet file, as Spark writes them: a plain file of that name would be
# matched by read_parquet('out/*.parquet') in DuckDB and break queries over the shards' metadata.
FAILURES_DIR = "_failures.parquet"
FAILURES_PART = "part-00000.parquet"
SUMMARY_FILE = "_metadata"  # the Parquet summary file, so dask.read_parquet(out) reads the shards only
DROPPED_DIR = "_dropped"
KEPT, DROPPED = "kept", "dropped"
SHARD_FILE = re.compile(r"^\d{5,}\.(tar|parquet)$")
SHARD_PARQUET = re.compile(r"^\d{5,}\.parquet$")
OUR_FILES = {INDEX_FILE, MANIFEST_FILE, FAILURES_DIR, SUMMARY_FILE, DROPPED_DIR, TMP_DIR, MARKER}

# staged rows say where their image bytes are
BLOB_URL, BLOB_OFFSET, BLOB_SIZE = "_blob_url", "_blob_offset", "_blob_size"
FAILURE_COLUMNS = (C.SOURCE_SHARD, C.SOURCE_INDEX, C.KEY, C.ERROR, C.ERROR_MEMBER, C.ERROR_DETAIL)
MAX_LISTED_RENAMES = 1000


@dataclass(frozen=True)
class WriteOptions:
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
            f"read {c.get('read', 0)}, dropped {c.get('dropped', 0)}, failed {c.get('failed', 0)}"
        )

    def __repr__(self) -> str:
        c = self.counts

        def with_detail(name: str, by: str) -> str:
            detail = ", ".join(f"{k} {v}" for k, v in c.get(by, {}).items())
            return f"{name}={c.get(name, 0)}" + (f" ({detail})" if detail else "")

        return (f"WriteResult({self.output_dir!r}, shards={self.shards}, samples={self.samples}, bytes={self.bytes}, "
                f"read={c.get('read', 0)}, {with_detail('dropped', 'dropped_by_stage')}, {with_detail('failed', 'failed_by_reason')})")



# ---------------------------------------------------------------------------------------
# Phase 1: stage one partition


def _column_or_nulls(table: pa.Table, name: str, typ: pa.DataType) -> pa.Array | pa.ChunkedArray:
    return table.column(name) if name in table.column_names else pa.nulls(len(table), typ)


def _locate_images(table: pa.Table, spill_url: str, options: WriteOptions) -> pa.Table:
    """Replace the image bytes of ``table`` by (blob url, offset, size) columns: the bytes the frame
    holds are spilled to ``spill_url``; otherwise the image's range in its source shard."""
    # where the reader found each image
    urls, offsets, sizes = (_column_or_nulls(table, C.SOURCE_SHARD, pa.string()), _column_or_nulls(table, C.IMAGE_OFFSET, pa.int64()),
                            _column_or_nulls(table, C.IMAGE_NBYTES, pa.int64()))
    in_source = pc.and_(pc.and_(pc.is_valid(urls), pc.is_valid(offsets)), pc.is_valid(sizes))
    urls, offsets, sizes = (pc.if_else(in_source, column, pa.scalar(None, column.type)) for column in (urls, offsets, sizes))
    if C.IMAGE in table.column_names:
        images = table.column(C.IMAGE)
        if images.null_count < len(table):  # bytes in the frame win over the source range
            sink = ShardSink(spill_url, options.storage_options)
            spill_offsets: list[int | None] = []
            try:
                for data in images.to_pylist():
                    spill_offsets.append(None if data is None else sink.size)
                    if data is not None:
                        sink.write(data)
            finally:
                sink.close()
            spilled = pc.is_valid(images)
            urls = pc.if_else(spilled, pa.scalar(spill_url, pa.string()), urls)
            offsets = pc.if_else(spilled, pa.array(spill_offsets, pa.int64()), offsets)
            sizes = pc.if_else(spilled, pc.cast(pc.binary_length(images), pa.int64()), sizes)
        table = table.drop_columns([C.IMAGE])
    return table.append_column(BLOB_URL, urls).append_column(BLOB_OFFSET, offsets).append_column(BLOB_SIZE, sizes)


def _write_parquet(table: pa.Table, url: str, storage_options: dict | None) -> pq.FileMetaData:
    """Write ``table``; returns its footer (collected into ``_metadata``)."""
    # Arrow-native files: pandas metadata would name dtypes (Arrow's JSON type) pandas cannot parse back
    fs, path = writable_path(url, storage_options)
    footers: list[pq.FileMetaData] = []
    with fs.open(path, "wb") as f:
        pq.write_table(table.replace_schema_metadata(None), f, compression="zstd", metadata_collector=footers)
    return footers[0]


def _write_staged(table: pa.Table, url: str, storage_options: dict | None) -> None:
    """Stage ``table`` as an Arrow IPC file: read back once by the same run, so no Parquet encoding."""
    fs, path = writable_path(url, storage_options)
    with fs.open(path, "wb") as f, pa.ipc.new_file(f, table.schema) as sink:
        sink.write_table(table)


def _read_staged(url: str, storage_options: dict | None) -> pa.Table:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as f:
        return pa.ipc.open_file(f).read_all()


def _value_counts(array) -> dict[str, int]:
    if len(array) == 0:
        return {}
    counts = pc.value_counts(array.drop_null() if hasattr(array, "drop_null") else array)
    return {str(item["values"]): int(item["counts"]) for item in counts.to_pylist()}


def stage_partition(frame, number: int, options: WriteOptions) -> dict[str, Any]:
    """Phase 1 for one partition: stage kept (and dropped) rows, save failures, return counts."""
    table = backend_of(frame).to_arrow(frame)
    table = table.select(options.schema.names).cast(options.schema)
    errors = _column_or_nulls(table, C.ERROR, pa.string())
    dropped_by = _column_or_nulls(table, C.DROPPED_BY, pa.string())
    failed_mask = pc.is_valid(errors)
    dropped_mask = pc.and_(pc.invert(failed_mask), pc.is_valid(dropped_by))
    kept_mask = pc.invert(pc.or_(failed_mask, dropped_mask))

    failures = table.filter(failed_mask)
    if len(failures):
        failure_table = pa.table({
            name: _column_or_nulls(failures, name, options.schema.field(name).type if name in options.schema.names else pa.string())
            for name in FAILURE_COLUMNS
        })
        _write_staged(failure_table, options.staged("failures", f"p{number:06d}.arrow"), options.storage_options)

    stats: dict[str, Any] = {
        "partition": number,
        "failures_by_reason": _value_counts(failures.column(C.ERROR)) if len(failures) else {},
        "dropped_by_stage": _value_counts(dropped_by.filter(dropped_mask)),
        "sources": sorted(set(_column_or_nulls(table, C.SOURCE_SHARD, pa.string()).drop_null().to_pylist())),
    }
    streams = [(KEPT, kept_mask)] + ([(DROPPED, dropped_mask)] if options.keep_dropped else [])
    for stream, mask in streams:
        rows = table.filter(mask)
        stats[stream] = len(rows)
        if len(rows):
            staged = _locate_images(rows, options.staged(stream, f"p{number:06d}.bin"), options)
            _write_staged(staged, options.staged(stream, f"p{number:06d}.arrow"), options.storage_options)
    stats.setdefault(DROPPED, int(pc.sum(dropped_mask).as_py() or 0))
    return stats


# ---------------------------------------------------------------------------------------
# Phase 2: assemble output shards


@dataclass(frozen=True)
class ShardPlan:
    stream: str
    number: int
    pieces: tuple[tuple[int, int, int], ...]  # (partition, first row, end row)

    @property
    def name(self) -> str:
        return f"{self.number:05d}"


def plan_shards(counts: list[int], images_per_tar: int, stream: str) -> list[ShardPlan]:
    """Cut the concatenation of partitions (``counts`` rows each) into shards of exactly N rows."""
    plans: list[ShardPlan] = []
    pieces: list[tuple[int, int, int]] = []
    room = images_per_tar
    for partition, count in enumerate(counts):
        start = 0
        while start < count:
            take = min(room, count - start)
            pieces.append((partition, start, start + take))
            start += take
            room -= take
            if room == 0:
                plans.append(ShardPlan(stream, len(plans), tuple(pieces)))
                pieces, room = [], images_per_tar
    if pieces:
        plans.append(ShardPlan(stream, len(plans), tuple(pieces)))
    return plans


def group_plans(plans: list[ShardPlan], rows_per_task: int, images_per_tar: int) -> list[list[ShardPlan]]:
    """Runs of consecutive shards of about ``rows_per_task`` rows: one task each."""
    per_task = max(1, rows_per_task // max(1, images_per_tar))
    return [plans[i : i + per_task] for i in range(0, len(plans), per_task)]


def safe_key(key: str | None) -> str:
    """A key that can name tar members: relative, no ``..``, no dot in its last part."""
    parts = [p for p in (key or "").split("/") if p not in ("", ".", "..")]
    if parts:
        parts[-1] = parts[-1].replace(".", "_")
    return "/".join(parts) or "sample"


def unique_keys(keys: list[str | None]) -> tuple[list[str], list[dict[str, str]]]:
    """Keys usable in one tar: made safe, then repeated keys renamed ``key_1``, ``key_2``…"""
    if all(k and "." not in k and "/" not in k for k in keys) and len(set(keys)) == len(keys):
        return list(keys), []  # the usual shard: nothing to make safe or rename
    safe = [safe_key(k) for k in keys]
    taken, seen = set(safe), set()
    final, renames = [], []
    for original, key in zip(keys, safe):
        if key in seen:
            n = 1
            while f"{key}_{n}" in taken:
                n += 1
            key = f"{key}_{n}"
            taken.add(key)
            renames.append({"key": original, "written_as": key, "reason": "duplicate key in shard"})
        elif key != original:
            renames.append({"key": original, "written_as": key, "reason": "key is not a safe member name"})
        seen.add(key)
        final.append(key)
    return final, renames


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _json_text(column: pa.ChunkedArray) -> list[str | None]:
    return [v for chunk in column.chunks for v in chunk.storage.to_pylist()]


def _plain_json_type(typ: pa.DataType) -> bool:
    """Whether values of ``typ`` come out of ``to_pylist`` as JSON's own types (str, int, float, bool, None, list, dict)."""
    if typ == JSON_TEXT or any(is_type(typ) for is_type in (
            pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
            pa.types.is_boolean, pa.types.is_null)):
        return True
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return _plain_json_type(typ.value_type)
    if pa.types.is_struct(typ):
        return all(_plain_json_type(typ.field(i).type) for i in range(typ.num_fields))
    return False


_JSON_ENCODER = msgspec.json.Encoder()  # NaN and infinities (nested in lists or structs) become null


def _encode_json(doc: dict[str, Any], plain: bool) -> bytes:
    if plain:
        try:
            return _JSON_ENCODER.encode(doc)
        except UnicodeEncodeError:  # a lone surrogate (from a \ud800 escape): written escaped below
            pass
    try:
        text = json.dumps(doc, ensure_ascii=False, default=_json_default, allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(doc, default=_json_default, allow_nan=False).encode("ascii")


def sample_json_documents(rows: pa.Table, components: list[str]) -> list[bytes]:
    """The ``.json`` member of each row: its metadata columns, with ``extra_json`` merged back.

    Columns of JSON's own types are encoded by msgspec (compact separators); other types
    (timestamps, decimals, …) go through ``json.dumps`` with ``_json_default``.
    """
    fields = [
        f for f in rows.schema
        if f.name not in C.NOT_IN_SAMPLE_JSON and not C.is_internal(f.name) and f.name not in components
        and not pa.types.is_binary(f.type) and not pa.types.is_large_binary(f.type)
    ]
    plain = all(_plain_json_type(f.type) for f in fields)
    columns = []
    for f in fields:
        column = rows.column(f.name)
        if column.type == JSON_TEXT:
            columns.append([None if v is None else parse_json(v) for v in _json_text(column)])
        elif pa.types.is_floating(column.type):  # JSON has no NaN or infinity: null instead
            columns.append(pc.if_else(pc.is_finite(column), column, None).to_pylist())
        else:
            columns.append(column.to_pylist())
    names = [f.name for f in fields]
    docs = [dict(zip(names, values)) for values in zip(*columns)] if columns else [{} for _ in range(len(rows))]
    if C.EXTRA_JSON in rows.column_names:
        for doc, extra in zip(docs, _json_text(rows.column(C.EXTRA_JSON))):
            if extra is not None:
                for name, value in parse_json(extra).items():
                    doc.setdefault(name, value)
    if plain:
        try:  # one call for the shard: msgspec never writes a raw newline inside a document
            return _JSON_ENCODER.encode_lines(docs).split(b"\n")[:-1]
        except UnicodeEncodeError:  # a lone surrogate somewhere: document by document below
            pass
    return [_encode_json(doc, plain) for doc in docs]


class _Blobs:
    """Image bytes by (url, offset, size): staged spill files and source shards."""

    def __init__(self, options: WriteOptions):
        self.spill_prefix = options.url(TMP_DIR, options.run_id)
        self.spill = RangeSource(options.storage_options)
        self.sources = RangeSource(options.source_storage_options)

    def source_for(self, url: str) -> RangeSource:
        return self.spill if url.startswith(self.spill_prefix) else self.sources

    def close(self):
        self.spill.close()
        self.sources.close()


def _shard_members(rows: pa.Table, keys: list[str], blob_url: list[str | None]) -> tuple[list[str], list[int], list[bytes | int]]:
    """Every member of a shard in tar order: names, sizes and contents (an image's content is its
    row, whose bytes are copied by range). Within a sample: image, .txt, .cls, .json, other
    component columns, then the members kept in ``extra_members``."""
    component_columns = [
        f.name for f in rows.schema
        if (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)) and not C.is_internal(f.name) and f.name != C.IMAGE
    ]

    def column(name: str, typ: pa.DataType = pa.string()) -> list[Any]:
        return _column_or_nulls(rows, name, typ).to_pylist()

    blob_size, image_ext = column(BLOB_SIZE, pa.int64()), column(C.IMAGE_EXT)
    image_rows = [i for i, url in enumerate(blob_url) if url is not None]
    samples = list(image_rows)
    names = [f"{keys[i]}.{image_ext[i] or 'jpg'}" for i in image_rows]
    sizes = [blob_size[i] for i in image_rows]
    contents: list[bytes | int] = list(image_rows)
    small = [
        ("txt", [None if c is None else c.encode("utf-8") for c in column(C.CAPTION)]),
        ("cls", [None if c is None else str(c).encode("ascii") for c in column(C.CLS, pa.int64())]),
        ("json", sample_json_documents(rows, component_columns)),
        *((name, rows.column(name).to_pylist()) for name in component_columns),
    ]
    for ext, values in small:
        present = [i for i, value in enumerate(values) if value is not None]
        samples += present
        names += [f"{keys[i]}.{ext}" for i in present]
        contents += [values[i] for i in present]
    for i, extras in enumerate(column(C.EXTRA_MEMBERS, C.EXTRA_MEMBERS_TYPE)):
        for ext, data in extras or ():
            samples.append(i)
            names.append(f"{keys[i]}.{ext}")
            contents.append(data)
    sizes += [len(data) for data in contents[len(image_rows):]]
    order = np.argsort(np.asarray(samples, dtype=np.int64), kind="stable").tolist()  # sample by sample, kinds in the order above
    return [names[j] for j in order], [sizes[j] for j in order], [contents[j] for j in order]


def _write_shard(plan: ShardPlan, rows: pa.Table, options: WriteOptions, blobs: _Blobs) -> dict[str, Any]:
    keys, renames = unique_keys(rows.column(C.KEY).to_pylist())
    blob_url = _column_or_nulls(rows, BLOB_URL, pa.string()).to_pylist()
    names, sizes, contents = _shard_members(rows, keys, blob_url)
    blob_offset = _column_or_nulls(rows, BLOB_OFFSET, pa.int64()).to_pylist()

    headers, paddings = member_headers(names, sizes), list(map(padding, sizes))
    expected_size = sum(map(len, headers)) + sum(sizes) + sum(map(len, paddings)) + len(END_OF_ARCHIVE)
    sink = ShardSink(options.assembled(plan.stream, f"{plan.name}.tar"), options.storage_options, expected_size)
    images: list[bytes | None] = [None] * len(keys)  # kept for the Parquet only with remove_image_data=False
    # header, content and padding of every member, one after another; what lies between two images goes out as one write
    parts = [part for member in zip(headers, contents, paddings) for part in member]
    parts.append(END_OF_ARCHIVE)
    try:
        written = 0
        for at in [3 * j + 1 for j, content in enumerate(contents) if isinstance(content, int)]:
            sink.write(b"".join(parts[written:at]))
            row, written = parts[at], at + 1
            source = blobs.source_for(blob_url[row])
            if options.remove_image_data:
                sink.copy_range(source, blob_url[row], blob_offset[row], sizes[at // 3])
            else:
                images[row] = source.read(blob_url[row], blob_offset[row], sizes[at // 3])
                sink.write(images[row])
        sink.write(b"".join(parts[written:]))
    finally:
        sink.close()

    drop = [n for n in rows.column_names if C.is_internal(n) or n in C.ERROR_COLUMNS or (n == C.DROPPED_BY and plan.stream == KEPT)]
    metadata = rows.drop_columns(drop)
    if renames:
        metadata = metadata.set_column(metadata.schema.get_field_index(C.KEY), C.KEY, pa.array(keys, pa.string()))
    if not options.remove_image_data:
        metadata = metadata.add_column(1, C.IMAGE, pa.array(images, pa.binary()))
    footer = _write_parquet(metadata, options.assembled(plan.stream, f"{plan.name}.parquet"), options.storage_options)
    footer.set_file_path(f"{plan.name}.parquet")
    return {"stream": plan.stream, "number": plan.number, "samples": len(rows), "bytes": sink.size,
            "renames": [{**r, "shard": f"{plan.name}.tar"} for r in renames], "footer": footer}


def assemble_shards(plans: list[ShardPlan], options: WriteOptions) -> list[dict[str, Any]]:
    """Phase 2 for a run of consecutive shards."""
    staged: dict[tuple[str, int], pa.Table] = {}
    blobs = _Blobs(options)
    results = []
    try:
        for plan in plans:
            pieces = []
            for partition, start, stop in plan.pieces:
                if (plan.stream, partition) not in staged:
                    url = options.staged(plan.stream, f"p{partition:06d}.arrow")
                    staged[(plan.stream, partition)] = _read_staged(url, options.storage_options)
                pieces.append(staged[(plan.stream, partition)].slice(start, stop - start))
            results.append(_write_shard(plan, pa.concat_tables(pieces), options, blobs))
            # a staged partition is not needed again once a later partition has started
            last = plan.pieces[-1][0]
            for cached in [k for k in staged if k[1] < last]:
                del staged[cached]
    finally:
        blobs.close()
    return results


# ---------------------------------------------------------------------------------------
# The output directory


def shard_parquet_files(fs, directory: str) -> list[str]:
    """The ``NNNNN.parquet`` metadata files directly in ``directory`` (an output, or its ``_dropped/``), in shard order."""
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(directory, detail=False))
    return [full_url(fs, f"{directory}/{name}") for name in names if SHARD_PARQUET.match(name)]


def _entries(fs, root: str) -> list[str]:
    return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(root, detail=False)] if fs.isdir(root) else []


def check_output_dir(fs, root: str, overwrite: bool) -> str:
    """What writing to ``root`` would replace ("", "interrupted run", "previous output").

    Raises :class:`OutputExistsError` where writing is refused; changes nothing.
    """
    if fs.exists(root) and not fs.isdir(root):
        raise NotADirectoryError(f"output {root!r} exists and is not a directory")
    names = _entries(fs, root)
    if not names:
        return ""
    if MARKER in names and marker_held(fs, f"{root}/{MARKER}"):
        raise refuse_live_run(f"{root}/{MARKER}")
    foreign = sorted(n for n in names if n not in OUR_FILES and not SHARD_FILE.match(n))
    # staging without a marker: tasks of a failed run that were still running when it cleaned up
    interrupted = MARKER in names or TMP_DIR in names
    if foreign:
        left_by = f" (beside the leftovers of an interrupted imgcurate run, marked by {MARKER})" if interrupted else ""
        raise OutputExistsError(
            f"output directory {root!r} holds files imgcurate did not write ({', '.join(foreign[:5])}"
            f"{', …' if len(foreign) > 5 else ''}){left_by}; refusing to replace it, choose another directory"
        )
    if not (overwrite or interrupted):
        raise OutputExistsError(
            f"output directory {root!r} is not empty; pass overwrite=True (--overwrite) to replace the imgcurate output "
            f"there (a directory left by an interrupted run, marked by {MARKER}, is replaced without it)"
        )
    return "interrupted run" if interrupted else "previous output"


def _remove_staging(fs, root: str) -> None:
    if fs.exists(f"{root}/{TMP_DIR}"):
        fs.rm(f"{root}/{TMP_DIR}", recursive=True)


def _clear_leftovers(fs, root: str, replacing: str) -> None:
    """Remove the staging an interrupted run left (the caller holds the marker, so none is running)."""
    if replacing == "interrupted run":
        log.warning("%s was left by an interrupted run: replacing it", root)
    _remove_staging(fs, root)


@contextmanager
def _withdrawn_on_error(fs, root: str, existed: bool, replacing: str) -> Iterator[None]:
    """Leave the output directory as it was found when the body raises (nothing is published yet).

    A marker found there stays: the leftovers of that earlier interrupted run are still there.
    """
    try:
        yield
    except BaseException:
        _remove_staging(fs, root)
        if replacing != "interrupted run" and fs.exists(f"{root}/{MARKER}"):
            fs.rm(f"{root}/{MARKER}")
        if not existed and is_local_fs(fs) and fs.isdir(root) and not _entries(fs, root):
            fs.rmdir(root)
        raise


def _inside(path: str, directory: str) -> bool:
    directory = directory.rstrip("/") + "/"
    return path.startswith(directory)


def _publish(options: WriteOptions, results: list[dict[str, Any]], fs, root: str) -> None:
    """Move assembled shards into place and remove outputs of an earlier run that are not replaced."""
    new_names = {
        stream: {f"{r['number']:05d}.{ext}" for r in results if r["stream"] == stream for ext in ("tar", "parquet")}
        for stream in (KEPT, DROPPED)
    }
    for stream, directory in ((KEPT, root), (DROPPED, f"{root}/{DROPPED_DIR}")):
        for name in _entries(fs, directory):
            if SHARD_FILE.match(name) and name not in new_names[stream]:
                fs.rm(f"{directory}/{name}")
        if options.local:
            if new_names[stream]:
                fs.makedirs(directory, exist_ok=True)
            for name in sorted(new_names[stream]):
                fs.mv(filesystem(options.assembled(stream, name), options.storage_options)[1], f"{directory}/{name}")
    if not new_names[DROPPED] and fs.exists(f"{root}/{DROPPED_DIR}"):
        fs.rm(f"{root}/{DROPPED_DIR}", recursive=True)


def _write_summary(fs, directory: str, results: list[dict[str, Any]]) -> None:
    """The ``_metadata`` file: every shard's Parquet footer, with its relative path."""
    if fs.exists(f"{directory}/{SUMMARY_FILE}"):
        fs.rm(f"{directory}/{SUMMARY_FILE}")
    if not results:
        return
    summary = results[0]["footer"]
    for result in results[1:]:
        summary.append_row_groups(result["footer"])
    with fs.open(f"{directory}/{SUMMARY_FILE}", "wb") as f:
        summary.write_metadata_file(f)


def _collect_failures(options: WriteOptions, stats: list[dict[str, Any]]) -> pa.Table:
    tables = []
    for s in stats:
        if s["failures_by_reason"]:
            tables.append(_read_staged(options.staged("failures", f"p{s['partition']:06d}.arrow"), options.storage_options))
    schema = pa.schema([(name, pa.int64() if name == C.SOURCE_INDEX else pa.string()) for name in FAILURE_COLUMNS])
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


@functools.cache  # asking importlib.metadata takes milliseconds, on every write
def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0]}
    for package in ("dask", "distributed", "pandas", "pyarrow", "fsspec", "numpy", "torch", "open_clip_torch", "pillow", "cudf"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return versions


def _counts(stats: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
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
    return {
        "read": written + dropped + sum(failed.values()),
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
    }


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
    the rows filtered out. Rows with ``error`` set go to ``_failures.parquet``; rows with
    ``dropped_by`` set are counted (and, with ``keep_dropped``, written under ``_dropped/``).
    ``remove_image_data=False`` also keeps the image bytes in the Parquet files.
    ``source_storage_options`` (default: ``storage_options``) opens the input shards when image
    bytes are copied from them. ``manifest_extra`` adds entries to ``_manifest.json``; a callable
    receives the counts first. The work runs on ``client`` (a ``distributed.Client``), else on the
    active client, else on Dask's default scheduler.
    """
    if isinstance(images_per_tar, bool) or not isinstance(images_per_tar, int) or images_per_tar < 1:
        raise ValueError(f"images_per_tar must be a positive integer, got {images_per_tar!r}")
    started = time.time()
    fs, root = filesystem(output_dir, storage_options)
    output_url = full_url(fs, root)
    schema = backend_of(df).to_arrow(df._meta).schema
    options = WriteOptions(
        output_url, images_per_tar, remove_image_data, keep_dropped, storage_options,
        source_storage_options if source_storage_options is not None else storage_options, schema, is_local_fs(fs),
    )
    existed = fs.isdir(root)
    replacing = check_output_dir(fs, root, overwrite)
    # held until the run has finished: meanwhile a second run into the directory is refused
    with hold_marker(fs, root, MARKER) as marker:
        _clear_leftovers(fs, root, replacing)
        with _withdrawn_on_error(fs, root, existed, replacing):
            marker.write(__version__)
            partitions = df.to_delayed()
            stats = compute(
                [dask.delayed(stage_partition)(part, i, options) for i, part in enumerate(partitions)],
                desc="staging", progress=progress, client=client,
            )
            inputs = sorted({source for s in stats for source in s["sources"]})
            clash = [source for source in inputs if _inside(source, output_url)]
            if clash:
                raise OutputExistsError(f"input shard {clash[0]!r} lies inside the output directory; write somewhere else")

            plans = plan_shards([s[KEPT] for s in stats], images_per_tar, KEPT)
            if keep_dropped:
                plans += plan_shards([s[DROPPED] for s in stats], images_per_tar, DROPPED)
            rows_per_task = max(images_per_tar, sum(s[KEPT] for s in stats) // max(1, len(stats)))
            groups = [g for stream in (KEPT, DROPPED) for g in group_plans([p for p in plans if p.stream == stream], rows_per_task, images_per_tar)]
            results = [r for batch in compute(
                [dask.delayed(assemble_shards)(group, options) for group in groups], desc="writing shards", progress=progress,
                client=client,
            ) for r in batch]

        _publish(options, results, fs, root)
        kept = sorted((r for r in results if r["stream"] == KEPT), key=lambda r: r["number"])
        index = {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "shardlist": [{"url": f"{r['number']:05d}.tar", "nsamples": r["samples"], "filesize": r["bytes"]} for r in kept],
        }
        with fs.open(f"{root}/{INDEX_FILE}", "wb") as f:
            f.write(json.dumps(index, indent=1).encode())
        if fs.exists(f"{root}/{FAILURES_DIR}"):
            fs.rm(f"{root}/{FAILURES_DIR}", recursive=True)
        _write_parquet(_collect_failures(options, stats), options.url(FAILURES_DIR, FAILURES_PART), storage_options)
        for stream, directory in ((KEPT, root), (DROPPED, f"{root}/{DROPPED_DIR}")):
            _write_summary(fs, directory, sorted((r for r in results if r["stream"] == stream), key=lambda r: r["number"]))

        counts = _counts(stats, results)
        renames = [r for result in kept for r in result["renames"]]
        manifest = {
            "imgcurate_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "elapsed_seconds": None,
            "output_dir": output_url,
            "replaced": replacing or None,
            "inputs": inputs,
            "parameters": {"images_per_tar": images_per_tar, "remove_image_data": remove_image_data, "keep_dropped": keep_dropped},
            **((manifest_extra(counts) if callable(manifest_extra) else manifest_extra) or {}),
            "counts": counts,
            "renamed_keys": renames[:MAX_LISTED_RENAMES],
            "shards": [{"tar": f"{r['number']:05d}.tar", "parquet": f"{r['number']:05d}.parquet", "samples": r["samples"], "bytes": r["bytes"]} for r in kept],
            "versions": dict(_versions()),
        }
        _remove_staging(fs, root)
        manifest["elapsed_seconds"] = round(time.time() - started, 3)
        with fs.open(f"{root}/{MANIFEST_FILE}", "wb") as f:
            f.write(json.dumps(manifest, indent=1, default=_json_default).encode())
        fs.rm(f"{root}/{MARKER}")
        return WriteResult(output_url, len(kept), counts["written"], sum(r["bytes"] for r in kept), counts, manifest)
