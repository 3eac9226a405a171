"""Read WebDataset shards into a Dask DataFrame: one partition per shard."""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import dask
import dask.dataframe as dd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..common import columns as C
from ..common.backend import Backend, resolve_backend
from ..common.errors import Failure, OnError, apply_policy, check_on_error
from .paths import expand_shards, filesystem, is_local_fs, sidecar_url
from .ranges import RangeSource, read_ranges
from .samples import MAX_MEMBER_BYTES, Sample, iter_samples
from .schema import Layout, merge_layouts, shard_table
from .tar import is_compressed_shard, open_shard_stream
from .tarindex import PlainShard, index_plain_file


@dataclass(frozen=True)
class ShardTask:
    """Everything one partition needs to read its shard (small and picklable)."""

    url: str
    with_images: bool
    sidecar: str | None  # sidecar Parquet URL, or None
    storage_options: dict | None
    on_error: OnError
    # the first shard's table as the layout pass read it (without images, failure rows included),
    # when its layout is the dataset's: the shard is not read twice (images are fetched by range)
    layout_read: pa.Table | None = field(default=None, compare=False, repr=False)


def read_shard_samples(task: ShardTask) -> tuple[list[Sample], list[Failure]]:
    """Group one shard's members into samples; problems are returned as failures, not raised."""
    samples: list[Sample] = []
    failures: list[Failure] = []
    fs, path = filesystem(task.url, task.storage_options)
    try:
        file_size = fs.size(path)
        if file_size == 0:  # not even an empty tar (that is 1024 zero bytes): often a copy that never started
            return samples, [Failure("not_a_tar", "file is empty (0 bytes)", shard=task.url)]
        compressed = is_compressed_shard(task.url)
        total_size = None if compressed else file_size
        # local files without fsspec's per-read wrapper: the scan makes thousands of small reads
        with (open(path, "rb") if is_local_fs(fs) else fs.open(path, "rb")) as raw:
            stream = open_shard_stream(raw, task.url)
            if task.with_images and not compressed:
                # every byte is wanted: one large read instead of one per member (a compressed stream
                # is read member by member, so a break in it keeps the members before it)
                stream = io.BytesIO(stream.read())
            for item in iter_samples(stream, task.url, with_images=task.with_images, total_size=total_size):
                (failures if isinstance(item, Failure) else samples).append(item)
    except OSError as exc:  # the file itself could not be opened or read (not a format problem)
        failures.append(Failure(
            "unreadable_shard", f"{type(exc).__name__}: {exc} (stopped after {len(samples)} samples)", shard=task.url
        ))
    return samples, failures


def read_plain_shard(task: ShardTask, members: bool = True) -> PlainShard | None:
    """A local, uncompressed shard indexed at once when it is plain (the common case; see
    :mod:`~imgcurate.io.tarindex`), else None and :func:`read_shard_samples` reads it.

    The header walk reads only the blocks that hold headers and small members, and the images,
    when wanted, are read from the file by range into one buffer: each image byte is copied once,
    and no memory is taken for the rest of the shard. ``members=False`` reads no member at all, only
    the headers: the samples, for counting them.
    """
    if is_compressed_shard(task.url):
        return None
    fs, path = filesystem(task.url, task.storage_options)
    if not is_local_fs(fs):
        return None
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None
            read_images = functools.partial(read_ranges, f.fileno()) if task.with_images else None
            return index_plain_file(f.fileno(), size, read_images, members)
    except (OSError, ValueError):
        return None  # the scanner opens it again and reports what is wrong


def read_sidecar(task: ShardTask, failures: list[Failure]) -> pa.Table | None:
    if task.sidecar is None:
        return None
    fs, path = filesystem(task.sidecar, task.storage_options)
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (OSError, pa.ArrowException) as exc:
        failures.append(Failure("invalid_sidecar", f"{type(exc).__name__}: {exc}", shard=task.url, member=task.sidecar))
        return None
    if C.KEY not in table.column_names:
        failures.append(Failure("invalid_sidecar", "sidecar has no 'key' column", shard=task.url, member=task.sidecar))
        return None
    return table.set_column(table.schema.get_field_index(C.KEY), C.KEY, table.column(C.KEY).cast(pa.string()))


# what a column of the frame is made from, beyond its own member: a .json field or the sidecar may
# fill a missing caption or class, and extra_json keeps what either could not place
_FILLED_FROM_ELSEWHERE = (C.CAPTION, C.CLS, C.EXTRA_JSON)


def read_partition_table(task: ShardTask, layout: Layout | None, columns: Sequence[str] | None = None
                         ) -> tuple[pa.Table, Layout]:
    """Read, group, conform to ``layout`` (``None`` infers it), then apply the failure policy.

    ``columns`` (with a layout): only those columns, and only what they are made from is read and
    decoded: no image bytes without ``image``, no ``.json`` parsed and no sidecar read when no
    column needs them (their decoding failures then go unseen).
    """
    wanted = set(columns) if columns is not None and layout is not None else None
    if wanted is not None and C.IMAGE not in wanted:
        task = replace(task, with_images=False)
    table = None
    if task.layout_read is not None and layout is not None:
        table = _with_images(task.layout_read, task, layout) if task.with_images else task.layout_read
    if table is None:
        needs_json = wanted is None or bool(wanted & {*(n for n, _ in layout.json_fields), *_FILLED_FROM_ELSEWHERE})
        needs_sidecar = needs_json or bool(wanted & {n for n, _ in layout.sidecar_fields})
        plain = read_plain_shard(task)
        samples, failures = (plain, []) if plain is not None else read_shard_samples(task)
        sidecar = read_sidecar(task, failures) if needs_sidecar else None
        table, layout = shard_table(samples, failures, task.url, with_images=task.with_images, sidecar=sidecar, layout=layout,
                                    skip=frozenset() if needs_json else frozenset({"json"}))
        _remember_count(task, table, sidecar if needs_sidecar or task.sidecar is None else _UNREAD)
    if task.on_error != "report":
        apply_policy(failures_in(table), task.on_error)  # raises under "raise"
        table = table.filter(table.column(C.ERROR).is_null())
    if columns is not None:
        table = table.select(list(columns))
    return table, layout


def _with_images(table: pa.Table, task: ShardTask, layout: Layout) -> pa.Table | None:
    """The layout pass's table of a shard (read without images) with the image column filled from
    the image ranges it records, so the shard is not walked twice; None when that would not give
    what a read with images gives (an image too large to load is a failure there) or the file
    changed since: the shard is then read again."""
    offsets = table.column(C.IMAGE_OFFSET).combine_chunks()
    sizes = table.column(C.IMAGE_NBYTES).combine_chunks()
    if pc.any(pc.greater(sizes, MAX_MEMBER_BYTES)).as_py():
        return None
    try:
        with RangeSource(task.storage_options) as source:
            images = source.read_many(task.url, offsets, sizes)
    except (OSError, ValueError):
        return None
    return table.add_column(layout.arrow_schema().get_field_index(C.IMAGE), pa.field(C.IMAGE, pa.binary()), images)


# What each shard held when this process read it, by (url, size, mtime): samples (a sample cut short
# included) and the sidecar's keys without a member, by status (None when the read left the sidecar
# unread). The writer's count of what was read comes from here when the read ran in this process.
_READ_COUNTS: dict[tuple, dict[str, Any]] = {}
_READ_COUNTS_KEPT = 100_000
_UNREAD = object()


def _file_identity(url: str, storage_options: dict | None) -> tuple | None:
    fs, path = filesystem(url, storage_options)
    if not is_local_fs(fs):
        return None  # a remote stat is a request: remote shards are counted by their own pass
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (url, stat.st_size, stat.st_mtime_ns)


def _sidecar_only(sidecar: pa.Table | None, keys: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    if sidecar is not None:
        statuses = sidecar.column("status").to_pylist() if "status" in sidecar.column_names else [None] * len(sidecar)
        for key, status in zip(sidecar.column(C.KEY).to_pylist(), statuses):
            if key not in keys:
                counts[str(status)] = counts.get(str(status), 0) + 1
    return counts


def _remember_count(task: ShardTask, table: pa.Table, sidecar) -> None:
    """Keep what the read of ``task`` found (before the failure policy drops anything)."""
    identity = _file_identity(task.url, task.storage_options)
    if identity is None:
        return
    errors = table.column(C.ERROR)
    is_sample = pc.or_(pc.is_null(errors), pc.equal(pc.fill_null(errors, ""), "truncated_sample"))
    keys = table.column(C.KEY).filter(is_sample)
    if len(_READ_COUNTS) >= _READ_COUNTS_KEPT:
        _READ_COUNTS.clear()
    _READ_COUNTS[identity] = {"samples": len(keys),
                              "sidecar_only": None if sidecar is _UNREAD else _sidecar_only(sidecar, set(keys.to_pylist()))}


def count_samples(task: ShardTask) -> dict[str, Any]:
    """What one shard holds: ``samples`` (as the reader finds them, a sample cut short included) and,
    when its sidecar lists keys the shard has no member for (img2dataset's failed downloads),
    ``sidecar_only`` by their ``status``. Counted where the samples were read: what this process's
    read of the shard found, else a pass over the shard that reads no member (the headers only)."""
    known = _READ_COUNTS.get(_file_identity(task.url, task.storage_options) or ())
    if known is not None and known["sidecar_only"] is not None:
        return {"shard": task.url, **known}
    headers_only = replace(task, with_images=False)
    plain = read_plain_shard(headers_only, members=False)
    if plain is not None:
        samples, keys = len(plain), set(plain.keys.to_pylist())
    else:
        found, failures = read_shard_samples(headers_only)
        samples = len(found) + sum(f.reason == "truncated_sample" for f in failures)
        keys = {s.key for s in found} | {f.key for f in failures if f.reason == "truncated_sample"}
    return {"shard": task.url, "samples": samples, "sidecar_only": _sidecar_only(read_sidecar(task, []), keys)}


def failures_in(table: pa.Table) -> list[Failure]:
    """The failure rows of a partition table, as :class:`Failure` objects."""
    rows = table.filter(table.column(C.ERROR).is_valid())
    return [
        Failure(reason, detail, shard=shard, member=member, key=key)
        for reason, detail, shard, member, key in zip(
            *(rows.column(name).to_pylist() for name in (C.ERROR, C.ERROR_DETAIL, C.SOURCE_SHARD, C.ERROR_MEMBER, C.KEY))
        )
    ]


class _ReadShard:
    """The ``from_map`` function: a shard task → one partition on the chosen backend. It takes
    ``columns``, so Dask pushes a selection of columns made later (``df[["key", "caption"]]``) down
    into the read."""

    def __init__(self, layout: Layout, backend: Backend):
        self.layout, self.backend = layout, backend

    def __call__(self, task: ShardTask, columns: list[str] | None = None):
        table, _ = read_partition_table(task, self.layout, columns)
        return self.backend.from_arrow(table)


def read_webdataset(
    urlpath: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    with_images: bool = False,
    sidecar_parquet: bool | str = "auto",
    storage_options: dict | None = None,
    on_error: OnError = "report",
    backend: str | None = "pandas",
    layout_shards: int = 1,
    columns: Sequence[str] | None = None,
) -> dd.DataFrame:
    """Read WebDataset shards into a Dask DataFrame, one partition per shard.

    Parameters
    ----------
    urlpath:
        A directory, glob, brace range (``data/{00000..00009}.tar``), file, or list of these;
        local paths or fsspec URLs. ``.tar``, ``.tar.gz`` and ``.tgz`` shards.
    with_images:
        Load image bytes into an ``image`` column, for code of your own that wants them. By
        default they stay in the shards: rows carry where each image lies, and everything in
        imgcurate that needs the bytes (the writer, embedding, validation, hashing, ``show``)
        fetches them from there by byte range, so a read → filter → write copies each image
        once, from shard to shard.
    sidecar_parquet:
        ``"auto"`` joins an img2dataset-style ``00000.parquet`` next to ``00000.tar`` on
        ``key`` when it exists; ``True`` requires one per shard; ``False`` ignores them.
    on_error:
        The failure policy (see :mod:`imgcurate.errors`): ``"report"`` keeps problems as
        failure rows, ``"skip"`` drops them, ``"raise"`` stops at the first.
    backend:
        ``"pandas"`` (default), ``"cudf"``, or ``"auto"`` (cuDF when a GPU and cuDF are present).
    layout_shards:
        How many shards (from the start) decide the columns: JSON fields, sidecar columns and
        component extensions. Values outside that layout are kept in ``extra_json`` and
        ``extra_members``; raise this for datasets whose shards differ.
    columns:
        Only these columns (any of the frame's: ``caption``, JSON fields, sidecar columns,
        components, ``image``…), besides ``key`` and what rows need to be embedded, written and
        reported (:data:`ALWAYS_READ`); only what they are made from is decoded (no ``.json``
        parsed when no column needs it, so its decoding failures go unseen). A later
        ``df[[...]]`` selection is pushed into the read the same way.
    """
    on_error = check_on_error(on_error)
    if sidecar_parquet not in (True, False, "auto"):
        raise ValueError(f"sidecar_parquet must be True, False or 'auto', got {sidecar_parquet!r}")
    shards = expand_shards(urlpath, storage_options)
    tasks = [ShardTask(url, with_images, _sidecar_for(url, sidecar_parquet, storage_options), storage_options, on_error)
             for url in shards]
    if layout_shards < 1:
        raise ValueError("layout_shards must be at least 1")
    # the layout comes from the first shards, read without image bytes (same columns, less I/O)
    first = [read_partition_table(replace(task, with_images=False, on_error="report"), None)
             for task in tasks[:layout_shards]]
    layout = merge_layouts([shard_layout for _, shard_layout in first])
    if layout == first[0][1]:
        tasks[0] = replace(tasks[0], layout_read=first[0][0])
    layout = replace(layout, with_images=with_images)
    chosen = resolve_backend(backend)
    schema = layout.arrow_schema()
    meta = chosen.meta(schema)
    # every column arrives Arrow-backed, so Dask's pass that turns object columns into strings would
    # visit each partition for nothing (~0.5 ms each; 6 % of a read of the benchmark's shards)
    with dask.config.set({"dataframe.convert-string": False}):
        df = dd.from_map(_ReadShard(layout, chosen), tasks, meta=meta, label="read-webdataset", enforce_metadata=False)
        return df if columns is None else df[_projection(columns, schema)]


ALWAYS_READ = (C.KEY, C.IMAGE, C.IMAGE_EXT, C.IMAGE_NBYTES, C.SOURCE_SHARD, C.SOURCE_INDEX, *C.ERROR_COLUMNS, C.IMAGE_OFFSET)


def _projection(columns: Sequence[str], schema: pa.Schema) -> list[str]:
    """The frame's columns for ``read_webdataset(columns=...)``: those asked for and :data:`ALWAYS_READ`
    (``image`` only when the frame has it), in the frame's order."""
    if isinstance(columns, str):
        columns = [columns]
    unknown = [name for name in columns if name not in schema.names]
    if unknown:
        raise ValueError(f"no column {', '.join(map(repr, unknown))} in these shards; their columns are "
                         f"{', '.join(n for n in schema.names if not C.is_internal(n))}")
    chosen = set(columns) | set(ALWAYS_READ)
    return [name for name in schema.names if name in chosen]


def reader_tasks(df) -> list[ShardTask] | None:
    """The shard tasks of every ``read_webdataset`` a Dask frame was built from (in graph order), or
    None when it was built some other way: the writer learns its inputs from them before reading."""
    from dask.dataframe.dask_expr.io.io import FromMap

    expr = getattr(df, "expr", None)
    if expr is None:
        return None
    reads = [leaf for leaf in expr.find_operations(FromMap) if isinstance(leaf.func, _ReadShard)]
    if not reads:
        return None
    return [task for leaf in reads for iterable in leaf.operand("iterables") for task in iterable]


def _sidecar_for(url: str, sidecar_parquet: bool | str, storage_options: dict | None) -> str | None:
    if sidecar_parquet is False:
        return None
    candidate = sidecar_url(url)
    if sidecar_parquet is True:
        fs, path = filesystem(candidate, storage_options)
        if not fs.exists(path):
            raise FileNotFoundError(f"sidecar_parquet=True but {candidate!r} does not exist")
    return candidate
