"""Check that image bytes decode, without changing them: the partition function behind ``--validate-images``.

``reshard`` copies image bytes as they are, so a corrupt, truncated or non-image ``.jpg`` is
copied too. :func:`validate_partition` decodes every image still in play (Pillow, within the pixel
limit, refusing decompression bombs from the header alone) and turns those that fail into failure
rows (``decode_error``, ``image_too_large``; ``unreadable_image`` when the bytes cannot be read
back from the shard) under the ``on_error`` policy. Rows without an image member are left alone:
a sample may hold only a caption. Nothing is re-encoded; the image bytes are only read.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..common import columns as C
from ..common.backend import backend_of
from ..common.errors import Failure
from .decode import DEFAULT_MAX_PIXELS, DecodeFailure, decode_pool, validate_image
from .rows import decode_failure, fetch_readable, in_play, record_failures

CHUNK = 64  # images fetched and checked at a time (bounds memory)


def _check(data: bytes, max_pixels: int) -> DecodeFailure | None:
    try:
        validate_image(data, max_pixels)
    except DecodeFailure as failure:
        return failure
    return None


def _has_image(table: pa.Table) -> np.ndarray:
    # the image bytes when the frame carries them, else the extension the reader recorded for them
    for name in (C.IMAGE, C.IMAGE_EXT):
        if name in table.column_names:
            return table.column(name).is_valid().to_numpy(zero_copy_only=False)
    return np.zeros(len(table), dtype=bool)


def validate_table(table: pa.Table, *, on_error: str = "report", storage_options: dict | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> pa.Table:
    """:func:`validate_partition` on an Arrow table."""
    for name in C.ERROR_COLUMNS:  # the output always has them, failures or not, so its meta is fixed
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), pa.string()))
    todo = np.flatnonzero(in_play(table) & _has_image(table))
    failures: dict[int, Failure] = {}
    for start in range(0, len(todo), CHUNK):
        readable = fetch_readable(table, todo[start : start + CHUNK].tolist(), failures, storage_options)
        checks = decode_pool().map(_check, [data for _, data in readable], [max_pixels] * len(readable))
        for (row, _), problem in zip(readable, checks):
            if problem is not None:
                failures[row] = decode_failure(table, row, problem)
    return record_failures(table, failures, on_error)


def validate_partition(frame, *, on_error: str = "report", storage_options: dict | None = None,
                       max_pixels: int = DEFAULT_MAX_PIXELS):
    """``frame`` with the rows whose image does not decode turned into failure rows (see the module docstring)."""
    backend = backend_of(frame)
    table = validate_table(backend.to_arrow(frame), on_error=on_error, storage_options=storage_options,
                           max_pixels=max_pixels)
    return backend.from_arrow(table)
