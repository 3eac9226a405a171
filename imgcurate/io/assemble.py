"""Phase "assemble" of a write: output shards built from staged rows, image bytes copied by byte range.

Each task writes a run of consecutive shards (:mod:`~imgcurate.io.shardplan`). For one shard:
keys are made usable as member names (:func:`unique_keys`), the members are listed in tar order
(:func:`shard_members`), the headers of the whole shard are built at once
(:func:`~imgcurate.io.tar.member_headers`), and the tar is written through a
:class:`~imgcurate.io.ranges.ShardSink`: small members from memory, image bytes copied from their
source shard (or the staged spill file) by byte range. Then the shard's Parquet metadata file.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..common import columns as C
from .paths import writable_path
from .ranges import RangeSource, ShardSink
from .sample_json import sample_json_documents
from .shardplan import ShardPlan
from .staging import BLOB_OFFSET, BLOB_SIZE, BLOB_URL, KEPT, WriteOptions, column_or_nulls, read_staged
from .tar import BLOCK, END_OF_ARCHIVE, member_headers, padding
from .outputdir import TMP_DIR


def safe_key(key: str | None) -> str:
    """A key that can name tar members: relative, no ``..``, no dot in its last part."""
    parts = [p for p in (key or "").split("/") if p not in ("", ".", "..")]
    if parts:
        parts[-1] = parts[-1].replace(".", "_")
    return "/".join(parts) or "sample"


def unique_keys(keys: list[str | None]) -> tuple[list[str], list[dict[str, str]]]:
    """Keys usable in one tar: made safe, then repeated keys renamed ``key_1``, ``key_2``… (skipping
    names already used); returns the keys and the renames (``key``, ``written_as``, ``reason``)."""
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


def write_parquet(table: pa.Table, url: str, storage_options: dict | None) -> pq.FileMetaData:
    """Write ``table`` as a zstd Parquet file; returns its footer (collected into ``_metadata``)."""
    # Arrow-native files: pandas metadata would name dtypes (Arrow's JSON type) pandas cannot parse back
    fs, path = writable_path(url, storage_options)
    footers: list[pq.FileMetaData] = []
    with fs.open(path, "wb") as f:
        pq.write_table(table.replace_schema_metadata(None), f, compression="zstd", metadata_collector=footers)
    return footers[0]


class ImageSources:
    """Where image bytes are read from, by (url, offset, size): the run's staged spill files and the source shards."""

    def __init__(self, options: WriteOptions):
        self.spill_prefix = options.url(TMP_DIR, options.run_id)
        self.spill = RangeSource(options.storage_options)
        self.sources = RangeSource(options.source_storage_options)

    def source_for(self, url: str) -> RangeSource:
        return self.spill if url.startswith(self.spill_prefix) else self.sources

    def close(self):
        self.spill.close()
        self.sources.close()


def shard_members(rows: pa.Table, keys: list[str], blob_url: list[str | None]) -> tuple[list[str], list[int], list[bytes | int]]:
    """Every member of a shard in tar order: names, sizes and contents (an image's content is its
    row number: its bytes are copied by range). Within a sample: image, .txt, .cls, .json, other
    component columns, then the members kept in ``extra_members``."""
    component_columns = [
        f.name for f in rows.schema
        if (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)) and not C.is_internal(f.name) and f.name != C.IMAGE
    ]

    def column(name: str, typ: pa.DataType = pa.string()) -> list[Any]:
        return column_or_nulls(rows, name, typ).to_pylist()

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


PIECES_PER_MEMBER = 3  # header, content, padding


def write_tar(sink: ShardSink, headers: list[bytes], sizes: list[int], contents: list[bytes | int],
              copy_image: Callable[[int, int], None]) -> None:
    """Each member's header, content and padding, then the end-of-archive blocks. A content that is
    a row number is an image: ``copy_image(row, size)`` puts its bytes in the sink; what lies
    between two images goes out as one write (a loop over the images, not the members: this is
    the reshard's hot path)."""
    pieces = [piece for member in zip(headers, contents, map(padding, sizes)) for piece in member]
    pieces.append(END_OF_ARCHIVE)
    written = 0
    for member in [j for j, content in enumerate(contents) if type(content) is int]:
        at = PIECES_PER_MEMBER * member + 1  # the member's content: after its header
        sink.write(b"".join(pieces[written:at]))
        copy_image(contents[member], sizes[member])
        written = at + 1
    sink.write(b"".join(pieces[written:]))


def write_shard(plan: ShardPlan, rows: pa.Table, options: WriteOptions, images: ImageSources) -> dict[str, Any]:
    """Write shard ``plan`` (its tar and Parquet file) from its staged ``rows``; returns what was
    written: stream, number, samples, bytes, key renames and the Parquet footer."""
    keys, renames = unique_keys(rows.column(C.KEY).to_pylist())
    blob_url = column_or_nulls(rows, BLOB_URL, pa.string()).to_pylist()
    blob_offset = column_or_nulls(rows, BLOB_OFFSET, pa.int64()).to_pylist()
    names, sizes, contents = shard_members(rows, keys, blob_url)
    headers = member_headers(names, sizes)
    expected_size = sum(map(len, headers)) + sum(sizes) + int((-np.asarray(sizes, dtype=np.int64) % BLOCK).sum()) + len(END_OF_ARCHIVE)
    sink = ShardSink(options.assembled(plan.stream, f"{plan.name}.tar"), options.storage_options, expected_size)
    image_bytes: list[bytes | None] = [None] * len(keys)  # kept for the Parquet only with remove_image_data=False

    def copy_image(row: int, size: int) -> None:
        source = images.source_for(blob_url[row])
        if options.remove_image_data:
            sink.copy_range(source, blob_url[row], blob_offset[row], size)
        else:
            image_bytes[row] = source.read(blob_url[row], blob_offset[row], size)
            sink.write(image_bytes[row])

    try:
        write_tar(sink, headers, sizes, contents, copy_image)
    finally:
        sink.close()

    drop = [n for n in rows.column_names if C.is_internal(n) or n in C.ERROR_COLUMNS or (n == C.DROPPED_BY and plan.stream == KEPT)]
    metadata = rows.drop_columns(drop)
    if renames:
        metadata = metadata.set_column(metadata.schema.get_field_index(C.KEY), C.KEY, pa.array(keys, pa.string()))
    if not options.remove_image_data:
        metadata = metadata.add_column(1, C.IMAGE, pa.array(image_bytes, pa.binary()))
    footer = write_parquet(metadata, options.assembled(plan.stream, f"{plan.name}.parquet"), options.storage_options)
    footer.set_file_path(f"{plan.name}.parquet")
    return {"stream": plan.stream, "number": plan.number, "samples": len(rows), "bytes": sink.size,
            "renames": [{**r, "shard": f"{plan.name}.tar"} for r in renames], "footer": footer}


def assemble_shards(plans: list[ShardPlan], options: WriteOptions) -> list[dict[str, Any]]:
    """Write a run of consecutive shards; returns :func:`write_shard`'s record of each."""
    staged: dict[tuple[str, int], pa.Table] = {}
    images = ImageSources(options)
    results = []
    try:
        for plan in plans:
            pieces = []
            for partition, start, stop in plan.pieces:
                if (plan.stream, partition) not in staged:
                    url = options.staged(plan.stream, f"p{partition:06d}.arrow")
                    staged[(plan.stream, partition)] = read_staged(url, options.storage_options)
                pieces.append(staged[(plan.stream, partition)].slice(start, stop - start))
            results.append(write_shard(plan, pa.concat_tables(pieces), options, images))
            # a staged partition is not needed again once a later partition has started
            last = plan.pieces[-1][0]
            for cached in [k for k in staged if k[1] < last]:
                del staged[cached]
    finally:
        images.close()
    return results
