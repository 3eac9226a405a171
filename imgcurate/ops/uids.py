"""Sample uids in DataComp's form, and subsets of them as DataComp's ``.npy`` files.

A uid is 32 hexadecimal digits (DataComp's ``uid`` field, in each sample's ``.json`` and in the
sidecar Parquet). DataComp's baselines save a subset as a NumPy ``.npy`` file of dtype
``np.dtype("u8,u8")``: one (upper 64 bits, lower 64 bits) pair per uid, fields ``f0`` and ``f1`` in
the machine's byte order, sorted (``array.sort()``, so by ``f0`` then ``f1``), written by
``np.save``; its resharder loads the file with ``np.load(mmap_mode="r")``, asserts that dtype, and
looks samples up with ``np.searchsorted``. :func:`write_uid_file` writes the same bytes;
:func:`open_uid_subset` reads such files (and, as the resharder does, a bare file of pairs without
the ``.npy`` header).

Everything here is a pure function of arrays; the dataframe verbs are in
:mod:`imgcurate.dataframe.captions`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..common import columns as C
from ..common.backend import backend_of
from ..common.errors import Failure
from .rows import cell, in_play, record_failures, set_column

UID_DTYPE = np.dtype("u8,u8")  # DataComp's: (upper, lower) 64-bit halves, native byte order
UID_HEX_DIGITS = 32
NPY_MAGIC = b"\x93NUMPY"
_HEX_PATTERN = "^[0-9a-fA-F]{32}$"
_NIBBLE = np.full(256, 0, dtype=np.uint64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _NIBBLE[_c] = 10 + _i
_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)  # the 16 nibbles of a 64-bit half, most significant first


@dataclass(frozen=True)
class ParsedUids:
    """A uid column parsed: ``pairs`` (UID_DTYPE) for the rows in ``valid``, and why the other rows have none."""

    pairs: np.ndarray  # one pair per row; zeros where the row has no valid uid
    valid: np.ndarray  # bool per row
    problems: list[str | None]  # None, "no_uid" or "bad_uid", per row


def parse_uids(column: pa.Array | pa.ChunkedArray) -> ParsedUids:
    """Parse a column of uids (32 hexadecimal digits, either case) into DataComp's (upper, lower) pairs.

    Null is ``no_uid``; anything else that is not exactly 32 hexadecimal digits (a number, spaces,
    33 digits) is ``bad_uid``. Vectorised: the digits are looked up as bytes, never one row at a time."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.string())
    n = len(column)
    present = column.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = column
    else:  # a number or a JSON value where a uid should be: never a valid uid
        text = pa.nulls(n, pa.string())
    matches = pc.fill_null(pc.match_substring_regex(text, _HEX_PATTERN), False).to_numpy(zero_copy_only=False)
    valid = present & matches
    pairs = np.zeros(n, dtype=UID_DTYPE)
    if valid.any():
        good = text.filter(pa.array(valid)).cast(pa.large_string())
        offsets = np.frombuffer(good.buffers()[1], dtype=np.int64)[good.offset : good.offset + len(good) + 1]
        digits = np.frombuffer(good.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(-1, UID_HEX_DIGITS)
        nibbles = _NIBBLE[digits]
        pairs["f0"][valid] = np.bitwise_or.reduce(nibbles[:, :16] << _SHIFTS, axis=1)
        pairs["f1"][valid] = np.bitwise_or.reduce(nibbles[:, 16:] << _SHIFTS, axis=1)
    problems = [None if ok else ("bad_uid" if has else "no_uid") for ok, has in zip(valid.tolist(), present.tolist())]
    return ParsedUids(pairs, valid, problems)


def uid_strings(pairs: np.ndarray) -> list[str]:
    """The 32-digit lower-case hexadecimal form of (upper, lower) pairs."""
    return [f"{int(upper):016x}{int(lower):016x}" for upper, lower in zip(pairs["f0"], pairs["f1"])]


def sort_uids(pairs: np.ndarray) -> np.ndarray:
    """``pairs`` in DataComp's order (by upper, then lower half), as ``array.sort()`` orders them."""
    order = np.lexsort((pairs["f1"], pairs["f0"]))  # much faster than sorting the structured array itself
    return np.ascontiguousarray(pairs[order]).astype(UID_DTYPE, copy=False)


def is_sorted(pairs: np.ndarray, chunk: int = 1 << 22) -> bool:
    """Whether ``pairs`` is in DataComp's order, read in chunks (``pairs`` may be a memory map)."""
    for start in range(0, max(len(pairs) - 1, 0), chunk):
        block = np.asarray(pairs[start : start + chunk + 1])
        upper, lower = block["f0"], block["f1"]
        if not np.all((upper[1:] > upper[:-1]) | ((upper[1:] == upper[:-1]) & (lower[1:] >= lower[:-1]))):
            return False
    return True


def npy_header(count: int) -> bytes:
    """The ``.npy`` header ``np.save`` writes before ``count`` pairs of UID_DTYPE."""
    import io

    out = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(UID_DTYPE), "fortran_order": False, "shape": (count,)}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


def write_uid_file(out: BinaryIO, sorted_runs, count: int) -> None:
    """Write ``count`` pairs as ``np.save`` writes a sorted UID_DTYPE array: header, then the pairs.

    ``sorted_runs`` yields arrays already in order (one whole sorted array, or the buckets of a merge)."""
    out.write(npy_header(count))
    written = 0
    for run in sorted_runs:
        run = np.ascontiguousarray(run, dtype=UID_DTYPE)
        out.write(run.tobytes())
        written += len(run)
    if written != count:
        raise RuntimeError(f"wrote {written} uids where {count} were counted")


def merged_buckets(runs: list[np.ndarray], bucket_rows: int = 1 << 22):
    """Yield the union of sorted ``runs`` in order, in sorted buckets of about ``bucket_rows`` pairs.

    Bucket bounds are taken from a regular sample of every run, and each bucket gathers from every
    run the slice between two bounds (``searchsorted``), so memory holds one bucket, not the union:
    the runs can be memory maps of files larger than memory."""
    runs = [run for run in runs if len(run)]
    total = sum(len(run) for run in runs)
    if not total:
        return
    step = max(1, bucket_rows // (4 * len(runs)))  # ~4 samples per run and bucket
    sample = sort_uids(np.concatenate([np.asarray(run[::step]) for run in runs]))
    per_bucket = max(1, len(sample) * bucket_rows // total)
    bounds = [sample[i] for i in range(per_bucket, len(sample), per_bucket)]
    starts = [0] * len(runs)
    for bound in [*bounds, None]:
        ends = [len(run) if bound is None else int(np.searchsorted(run, bound, side="left")) for run in runs]
        pieces = [np.asarray(run[start:end]) for run, start, end in zip(runs, starts, ends) if end > start]
        if pieces:
            yield sort_uids(np.concatenate(pieces))
        starts = ends


class UidSubsetError(ValueError):
    """A uid subset file that is not in DataComp's format."""


def check_uid_file(path: str, storage_options: dict | None = None) -> int:
    """The number of pairs in a DataComp subset file; raises UidSubsetError naming the expected dtype otherwise."""
    from ..io.paths import filesystem

    fs, local = filesystem(os.fspath(path), storage_options)
    if not fs.isfile(local):
        raise FileNotFoundError(f"uid subset file {path!r} does not exist")
    with fs.open(local, "rb") as f:
        return _read_header(f, path, fs.size(local))[1]


def _read_header(f: BinaryIO, path: str, size: int) -> tuple[np.dtype, int, int]:
    """(dtype, count, data offset) of a subset file: a ``.npy`` file, or bare pairs as DataComp's resharder reads them."""
    expected = "np.dtype('u8,u8') (fields f0 and f1: the upper and lower 64 bits of each uid), as DataComp saves subsets"
    if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
        if size % UID_DTYPE.itemsize:
            raise UidSubsetError(f"{path!r} is neither a .npy file nor a whole number of 16-byte uid pairs; expected {expected}")
        return UID_DTYPE, size // UID_DTYPE.itemsize, 0
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, SyntaxError) as exc:
        raise UidSubsetError(f"{path!r} has a broken .npy header ({exc}); expected {expected}") from exc
    if dtype.names is None or len(dtype.names) != 2 or any(dtype.fields[name][0].newbyteorder("=") != np.dtype("u8")
                                                            for name in dtype.names):
        raise UidSubsetError(f"{path!r} holds dtype {dtype}; expected {expected}")
    if len(shape) != 1 or fortran:
        raise UidSubsetError(f"{path!r} holds an array of shape {shape}; expected a 1-D array of {expected}")
    return dtype, int(shape[0]), f.tell()


@lru_cache(maxsize=2)
def _load_subset(url: str, size: int, mtime: float, storage_options_key: tuple) -> np.ndarray:
    """The subset of a file, sorted, in native byte order: memory-mapped when local and already
    sorted (DataComp's files are), else read and sorted. Loaded once per process and file version."""
    from ..io.paths import filesystem, is_local_fs

    fs, local = filesystem(url, dict(storage_options_key) or None)
    with fs.open(local, "rb") as f:
        dtype, count, offset = _read_header(f, url, size)
        if is_local_fs(fs):
            pairs = np.memmap(local, dtype=dtype, mode="r", offset=offset, shape=(count,))
        else:
            f.seek(offset)
            pairs = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    if dtype != UID_DTYPE:  # the other byte order, or other field names
        pairs = pairs.astype(np.dtype([("f0", dtype[0].newbyteorder("=")), ("f1", dtype[1].newbyteorder("="))])).view(UID_DTYPE)
    return pairs if is_sorted(pairs) else sort_uids(np.asarray(pairs))


def open_uid_subset(path: str, storage_options: dict | None = None) -> np.ndarray:
    """The sorted pairs of a subset file (see :func:`_load_subset`)."""
    from ..io.paths import filesystem

    fs, local = filesystem(os.fspath(path), storage_options)
    info = fs.info(local)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    return _load_subset(os.fspath(path), int(info["size"]), str(mtime), tuple(sorted((storage_options or {}).items())))


def subset_positions(subset: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """For each pair, its first position in the sorted ``subset``, or -1 when the subset does not list it."""
    if not len(pairs) or not len(subset):
        return np.full(len(pairs), -1, dtype=np.int64)
    where = np.searchsorted(subset, pairs.astype(subset.dtype, copy=False), side="left")
    inside = where < len(subset)
    found = np.zeros(len(pairs), dtype=bool)
    hits = np.asarray(subset[where[inside]])
    found[inside] = (hits["f0"] == pairs["f0"][inside]) & (hits["f1"] == pairs["f1"][inside])
    return np.where(found, where, -1).astype(np.int64)


def first_occurrences(subset: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Per entry of the sorted ``subset``: True where it differs from the entry before it."""
    first = np.ones(len(subset), dtype=bool)
    for start in range(1, len(subset), chunk):
        block = np.asarray(subset[start - 1 : start + chunk])
        first[start : start + len(block) - 1] = (block["f0"][1:] != block["f0"][:-1]) | (block["f1"][1:] != block["f1"][:-1])
    return first


# ---------------------------------------------------------------------------------------
# Partition functions


def _uids_in_play(table: pa.Table) -> tuple[np.ndarray, ParsedUids]:
    """(rows in play, their parsed uids)."""
    rows = np.flatnonzero(in_play(table))
    column = table.column(C.UID).combine_chunks() if len(table) else pa.array([], table.schema.field(C.UID).type)
    return rows, parse_uids(column.take(pa.array(rows, pa.int64())))


def _uid_failures(table: pa.Table, rows: np.ndarray, parsed: ParsedUids) -> dict[int, Failure]:
    failures = {}
    for row, problem in zip(rows.tolist(), parsed.problems):
        if problem is not None:
            value = cell(table, C.UID, row)
            detail = "no uid" if problem == "no_uid" else f"uid {str(value)[:80]!r} is not {UID_HEX_DIGITS} hexadecimal digits"
            failures[row] = Failure(problem, detail, cell(table, C.SOURCE_SHARD, row), key=cell(table, C.KEY, row))
    return failures


def check_uids_partition(frame, on_error: str = "report"):
    """Rows in play with a missing or malformed ``uid`` become failures (``no_uid`` / ``bad_uid``) under ``on_error``."""
    backend = backend_of(frame)
    table = backend.to_arrow(frame)
    rows, parsed = _uids_in_play(table)
    return backend.from_arrow(record_failures(table, _uid_failures(table, rows, parsed), on_error))


def select_uids_partition(frame, path: str, stage: str, on_error: str = "report", storage_options: dict | None = None):
    """Rows in play whose uid the subset file lists are kept; the others are marked ``dropped_by=stage``;
    rows with a missing or malformed uid are failures."""
    backend = backend_of(frame)
    table = backend.to_arrow(frame)
    rows, parsed = _uids_in_play(table)
    listed = np.zeros(len(table), dtype=bool)
    if len(rows):
        positions = subset_positions(open_uid_subset(path, storage_options), parsed.pairs)
        listed[rows] = (positions >= 0) & parsed.valid
    dropped = np.zeros(len(table), dtype=bool)
    dropped[rows[parsed.valid]] = True
    dropped &= ~listed
    current = table.column(C.DROPPED_BY).combine_chunks().cast(pa.string()) if C.DROPPED_BY in table.column_names \
        else pa.nulls(len(table), pa.string())
    table = set_column(table, C.DROPPED_BY, pc.if_else(pa.array(dropped), pa.scalar(stage), current))
    return backend.from_arrow(record_failures(table, _uid_failures(table, rows, parsed), on_error))


def subset_hits_partition(frame, path: str, storage_options: dict | None = None) -> np.ndarray:
    """The distinct positions in the sorted subset of the uids that rows in play of the partition have."""
    table = backend_of(frame).to_arrow(frame)
    _, parsed = _uids_in_play(table)
    positions = subset_positions(open_uid_subset(path, storage_options), parsed.pairs[parsed.valid])
    return np.unique(positions[positions >= 0])


def partition_uid_run(frame) -> tuple[np.ndarray, int, int, list[str]]:
    """(sorted uids of the rows in play with a valid uid, rows with a malformed one, rows with none, keys of those rows)."""
    table = backend_of(frame).to_arrow(frame)
    rows, parsed = _uids_in_play(table)
    bad = [row for row, problem in zip(rows.tolist(), parsed.problems) if problem is not None]
    keys = [str(cell(table, C.KEY, row)) for row in bad[:20]]
    return (sort_uids(parsed.pairs[parsed.valid]), sum(p == "bad_uid" for p in parsed.problems),
            sum(p == "no_uid" for p in parsed.problems), keys)
