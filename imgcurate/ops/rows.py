"""Row-level helpers shared by the partition functions that look at images (embed, validate, show).

They work on one partition as an Arrow table: which rows are still in play, where each row's
image bytes are, and how failures are written back under the ``on_error`` policy.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..common import columns as C
from ..common.errors import Failure, apply_policy
from ..io.ranges import RangeSource
from .decode import DecodeFailure


def in_play(table: pa.Table) -> np.ndarray:
    """Rows still to be processed: not failed, not dropped."""
    mask = np.ones(len(table), dtype=bool)
    for name in (C.ERROR, C.DROPPED_BY):
        if name in table.column_names:
            mask &= table.column(name).is_null().to_numpy(zero_copy_only=False)
    return mask


def column_values(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * len(table)


def fetch_images(table: pa.Table, rows: Sequence[int], storage_options: dict | None = None) -> list[bytes | Failure]:
    """The image bytes of ``rows``: from the ``image`` column when present, else by byte range
    from the source shard. A row without an image, or whose bytes cannot be read, gets a Failure."""
    # only the requested rows are converted: callers go through a partition chunk by chunk
    wanted = [name for name in (C.KEY, C.SOURCE_SHARD, C.IMAGE, C.IMAGE_OFFSET, C.IMAGE_NBYTES) if name in table.column_names]
    picked = table.select(wanted).take(pa.array(rows, pa.int64()))
    keys, shards = column_values(picked, C.KEY), column_values(picked, C.SOURCE_SHARD)
    out: list[bytes | Failure] = []
    if C.IMAGE in picked.column_names:
        for key, shard, data in zip(keys, shards, picked.column(C.IMAGE).to_pylist()):
            out.append(data if data is not None else Failure("no_image", "the sample has no image member", shard, key=key))
        return out
    offsets, sizes = column_values(picked, C.IMAGE_OFFSET), column_values(picked, C.IMAGE_NBYTES)
    with RangeSource(storage_options) as source:
        for key, shard, offset, size in zip(keys, shards, offsets, sizes):
            if offset is None or size is None or shard is None:
                out.append(Failure("no_image", "the sample has no image member", shard, key=key))
                continue
            try:
                out.append(source.read(shard, offset, size))
            except OSError as exc:
                out.append(Failure("unreadable_image", f"{type(exc).__name__}: {exc}", shard, key=key))
    return out


def fetch_readable(table: pa.Table, rows: Sequence[int], failures: dict[int, Failure],
                   storage_options: dict | None = None) -> list[tuple[int, bytes]]:
    """(row, bytes) for the ``rows`` whose image could be fetched; the others go into ``failures``."""
    readable = []
    for row, data in zip(rows, fetch_images(table, rows, storage_options)):
        if isinstance(data, Failure):
            failures[row] = data
        else:
            readable.append((row, data))
    return readable


def cell(table: pa.Table, name: str, row: int) -> Any:
    """One cell, without converting the whole column (done once per failure)."""
    return table.column(name)[row].as_py() if name in table.column_names else None


def member_name(table: pa.Table, row: int) -> str | None:
    key, ext = cell(table, C.KEY, row), cell(table, C.IMAGE_EXT, row)
    return f"{key}.{ext}" if key is not None and ext is not None else None


def decode_failure(table: pa.Table, row: int, failure: DecodeFailure) -> Failure:
    return Failure(failure.reason, failure.detail, cell(table, C.SOURCE_SHARD, row), member_name(table, row),
                   cell(table, C.KEY, row))


def set_column(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, array)
    return table.append_column(name, array)


def record_failures(table: pa.Table, failures: dict[int, Failure], on_error: str) -> pa.Table:
    """Apply the failure policy: failure rows (report), rows removed (skip) or an exception (raise)."""
    if not failures:
        return table
    kept = apply_policy(failures.values(), on_error)
    if not kept:  # "skip": the rows go, counted nowhere
        drop = np.zeros(len(table), dtype=bool)
        drop[list(failures)] = True
        return table.filter(pa.array(~drop))
    columns = {name: column_values(table, name) for name in C.ERROR_COLUMNS}
    for row, failure in failures.items():
        columns[C.ERROR][row] = failure.reason
        columns[C.ERROR_MEMBER][row] = failure.member
        columns[C.ERROR_DETAIL][row] = failure.detail
    for name, values in columns.items():
        table = set_column(table, name, pa.array(values, pa.string()))
    return table
