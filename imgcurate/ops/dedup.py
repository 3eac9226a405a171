"""Deduplication's partition functions: pure pandas / numpy pieces the global steps in
:mod:`imgcurate.dataframe.duplicates` run on each partition or on each group after a shuffle.

The rule, the same for every method (and the one SemDeDup's reference code applies within a
cluster): order the samples by ``keep``; a sample is a duplicate iff some sample earlier in that
order, kept or not, is within the threshold of it. ``duplicate_of`` names the *nearest* such
earlier sample (smallest Hamming distance, highest cosine similarity), the earliest in keep order
among equally near ones. It is not a transitive closure: a chain a ~ b ~ c with a and c apart
marks b and c as duplicates (b of a, c of b) whether or not b is kept.

Every sample still in play gets a *signature row* (:func:`signature_partition`):

* ``_row``: partition number << 32 | position in the partition, so ordering by it is input
  order (shard order, then position in the shard) however the frame is partitioned;
* ``_order``: the primary key of the keep order (0 for ``"first"``); ties go to ``_row``;
* the method's key: ``_key`` (``image_sha256`` text, or the pHash bits as int64) or ``_vector``
  (the unit-length embedding).

Results come back as *marks*: ``_row`` of a duplicate, ``_of_row`` / ``_of_order`` of the sample
it duplicates, the distance or similarity, and (after :func:`attach_sources`) that sample's
``source_shard`` / ``source_index``; :func:`apply_marks` writes them into the original partition.
Exact and pHash marks are made here; semantic marks (k-means, then SemDeDup's rule) in
:mod:`imgcurate.ops.semantic`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..common import columns as C
from ..common.backend import backend_of
from .embed import embedding_matrix
from .hashing import phash_to_int64
from .rows import in_play, set_column

ROW, ORDER, KEY, VECTOR = "_row", "_order", "_key", "_vector"
OF_ROW, OF_ORDER, DISTANCE, SIMILARITY, CLUSTER = "_of_row", "_of_order", "_distance", "_similarity", "_cluster"
OF_SHARD, OF_INDEX, BUCKET, SAMPLE, DEST = "_of_shard", "_of_index", "_bucket", "_sample", "_dest"
POSITION_BITS = 32
POSITION_MASK = (1 << POSITION_BITS) - 1
METHODS = ("exact", "phash", "semantic")
KEEP_ORDERS = ("first", "random", "hard", "easy")
PAIRS_PER_PASS = 1 << 22  # candidate pairs verified at a time in a bucket partition (bounds memory)


# ---------------------------------------------------------------------------------------
# Signatures


def row_hash(shards, indices, seed: int, purpose: str) -> np.ndarray:
    """A deterministic uint64 per sample from its ``source_shard`` / ``source_index`` and ``seed``:
    the same sample gets the same value however the frame is partitioned."""
    key = hashlib.sha256(f"{purpose}:{seed}".encode()).hexdigest()[:16]
    frame = pd.DataFrame({"s": pd.array(shards, dtype=object), "i": pd.array(indices, dtype="Int64")})
    return pd.util.hash_pandas_object(frame, index=False, hash_key=key).to_numpy(np.uint64)


def unit_fraction(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes as floats uniform in [0, 1)."""
    return (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def keep_order(table: pa.Table, keep: str, ascending: bool, seed: int) -> np.ndarray:
    """The primary keep-order key of every row (lower is earlier; ``hard`` / ``easy`` are set after clustering)."""
    n = len(table)
    if keep in ("first", "hard", "easy"):
        return np.zeros(n)
    if keep == "random":
        return unit_fraction(row_hash(_column(table, C.SOURCE_SHARD), _column(table, C.SOURCE_INDEX), seed, "keep"))
    values = pc.cast(table.column(keep), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    values = values if ascending else -values
    return np.where(np.isnan(values), np.inf, values)  # samples without a value come last


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * len(table)


def unit_vectors(column: pa.ChunkedArray | pa.Array, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, valid): the ``embedding`` column as an (n, dim) float32 matrix of unit rows; rows
    that are null, not finite or zero are invalid (and zero)."""
    n = len(column)
    rows, matrix = _dense_rows(column) or embedding_matrix(column)
    if dim is not None and matrix.shape[1] not in (0, dim) and len(rows):
        raise ValueError(f"embedding_dim: the embeddings are {matrix.shape[1]} wide, not {dim}")
    valid = np.zeros(n, dtype=bool)
    if not len(rows):
        return np.zeros((n, dim if dim is not None else matrix.shape[1]), dtype=np.float32), valid
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64))  # summed in float64, no float64 copy
    good = np.isfinite(norms) & (norms > 0)
    valid[rows[good]] = True
    if good.all() and len(rows) == n and matrix.flags.writeable:  # the usual case: normalised in place
        matrix /= norms[:, None].astype(np.float32)
        return matrix, valid
    vectors = np.zeros((n, matrix.shape[1]), dtype=np.float32)
    vectors[rows[good]] = matrix[good] / norms[good, None].astype(np.float32)
    return vectors, valid


def _dense_rows(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """A float32 fixed-size-list column without nulls as (every row, its matrix), copied once;
    None for anything else (handled by :func:`~imgcurate.ops.embed.embedding_matrix`)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not pa.types.is_fixed_size_list(column.type) or column.type.value_type != pa.float32() or column.null_count:
        return None
    dim, n = column.type.list_size, len(column)
    matrix = np.empty((n, dim), dtype=np.float32)
    row = 0
    for chunk in chunks:
        values = chunk.values
        if values.null_count:
            return None
        flat = np.frombuffer(values.buffers()[1], dtype=np.float32, count=values.offset + len(values))[values.offset:]
        matrix[row : row + len(chunk)] = flat[chunk.offset * dim : (chunk.offset + len(chunk)) * dim].reshape(-1, dim)
        row += len(chunk)
    return np.arange(n), matrix


def signature_schema(method: str, dim: int | None = None) -> pa.Schema:
    fields = [(ROW, pa.int64()), (ORDER, pa.float64())]
    if method == "exact":
        fields.append((KEY, pa.string()))
    elif method == "phash":
        fields.append((KEY, pa.int64()))
    else:
        fields += [(VECTOR, pa.large_binary()), (SAMPLE, pa.float64())]
    return pa.schema(fields + [(C.SOURCE_SHARD, pa.string()), (C.SOURCE_INDEX, pa.int64())])


def signature_partition(frame, method: str, keep: str = "first", ascending: bool = True, seed: int = 42,
                        dim: int | None = None, partition_info: dict | None = None) -> pd.DataFrame:
    """The signature rows (see the module docstring) of the samples of one partition that take part:
    in play (not failed, not dropped) and with a valid key (hash, or a finite non-zero embedding)."""
    table = backend_of(frame).to_arrow(frame)
    number = (partition_info or {}).get("number", 0)
    n = len(table)
    taking = in_play(table)
    columns: dict[str, pa.Array | np.ndarray] = {}
    if method == "exact":
        key = table.column(C.IMAGE_SHA256).combine_chunks().cast(pa.string()) if n else pa.array([], pa.string())
        taking &= key.is_valid().to_numpy(zero_copy_only=False)
        columns[KEY] = key
    elif method == "phash":
        bits, valid = phash_to_int64(table.column(C.PHASH)) if n else (np.zeros(0, np.int64), np.zeros(0, bool))
        taking &= valid
        columns[KEY] = bits
    else:
        vectors, valid = unit_vectors(table.column(C.EMBEDDING), dim)
        taking &= valid
        dim = vectors.shape[1]
        columns[VECTOR] = pack_vectors(vectors)
        columns[SAMPLE] = unit_fraction(row_hash(_column(table, C.SOURCE_SHARD), _column(table, C.SOURCE_INDEX), seed,
                                                 "sample")) if n else np.zeros(0)
    rows = np.flatnonzero(taking)
    order = keep_order(table, keep, ascending, seed)
    out = {ROW: pa.array((np.int64(number) << POSITION_BITS) | rows.astype(np.int64)), ORDER: pa.array(order[rows])}
    everyone = len(rows) == n  # the usual case: nothing to take
    for name, values in columns.items():
        values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        out[name] = values if everyone else values.take(pa.array(rows))
    for name, typ in ((C.SOURCE_SHARD, pa.string()), (C.SOURCE_INDEX, pa.int64())):
        values = table.column(name) if name in table.column_names else pa.nulls(n, typ)
        out[name] = values.take(pa.array(rows)).cast(typ)
    return _frame(pa.table(out).cast(signature_schema(method, dim)))


def _frame(table: pa.Table) -> pd.DataFrame:
    """pandas with numpy numbers (fast in the group steps) and Arrow strings and lists."""
    columns = {}
    for name, column in zip(table.column_names, table.columns):
        if name.startswith("_") and (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            columns[name] = column.to_numpy()
        elif pa.types.is_string(column.type):
            columns[name] = pd.array(column, dtype=pd.StringDtype("pyarrow"))
        else:
            columns[name] = pd.array(column, dtype=pd.ArrowDtype(column.type))
    return pd.DataFrame(columns)


def _sorted_by(frame: pd.DataFrame, *names: str) -> pd.DataFrame:
    """``frame`` sorted by ``names`` (first most significant), then by keep order and input order."""
    keys = [frame[ROW].to_numpy(), frame[ORDER].to_numpy()] + [_values(frame[name]) for name in reversed(names)]
    return frame.iloc[np.lexsort(keys)] if len(frame) else frame


def _values(series: pd.Series) -> np.ndarray:
    return series.to_numpy() if not isinstance(series.dtype, pd.StringDtype) else series.to_numpy(dtype=object)


def pack_vectors(vectors: np.ndarray) -> pa.Array:
    """An (n, dim) float32 matrix as one binary value per row (``dim`` × 4 bytes): Dask's shuffles
    carry binary columns, not fixed-size lists."""
    n, dim = vectors.shape
    data = pa.py_buffer(np.ascontiguousarray(vectors, dtype=np.float32))  # shares the matrix's memory
    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int64) * (dim * 4))
    return pa.Array.from_buffers(pa.large_binary(), n, [None, offsets, data])


def vector_matrix(series: pd.Series) -> np.ndarray:
    """The ``_vector`` column of signature rows (no nulls) as an (n, dim) float32 matrix."""
    array = pa.array(series.array) if not isinstance(series.array, pa.ChunkedArray) else series.array
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    n = len(array)
    if not n:
        return np.zeros((0, 0), dtype=np.float32)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.view(np.float32).reshape(n, -1)


# ---------------------------------------------------------------------------------------
# Marks


def empty_marks() -> pd.DataFrame:
    return pd.DataFrame({ROW: np.zeros(0, np.int64), OF_ROW: np.zeros(0, np.int64), OF_ORDER: np.zeros(0),
                         DISTANCE: np.zeros(0, np.int16)})


def exact_marks(group: pd.DataFrame) -> pd.DataFrame:
    """After a shuffle on ``_key``: every sample with an equal key earlier in keep order is a duplicate
    of the earliest one (distance 0)."""
    frame = _sorted_by(group, KEY)
    if not len(frame):
        return empty_marks()
    keys = _values(frame[KEY])
    first = np.r_[True, keys[1:] != keys[:-1]]
    leader = np.maximum.accumulate(np.where(first, np.arange(len(frame)), 0))
    rows, orders = frame[ROW].to_numpy(), frame[ORDER].to_numpy()
    dup = ~first
    return pd.DataFrame({ROW: rows[dup], OF_ROW: rows[leader[dup]], OF_ORDER: orders[leader[dup]],
                         DISTANCE: np.zeros(int(dup.sum()), np.int16)})


def exact_leaders(group: pd.DataFrame) -> pd.DataFrame:
    """After a shuffle on ``_key``: the earliest sample of each distinct key (the only ones a
    near-duplicate search needs: any later copy is already a duplicate at distance 0)."""
    frame = _sorted_by(group, KEY)
    if not len(frame):
        return frame[[ROW, ORDER, KEY]]
    keys = _values(frame[KEY])
    first = np.r_[True, keys[1:] != keys[:-1]]
    return frame.iloc[np.flatnonzero(first)][[ROW, ORDER, KEY]].reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# pHash near-duplicates: pigeonhole bands


def bands(max_distance: int, bits: int = 64) -> list[tuple[int, int]]:
    """(shift, width) of ``max_distance + 1`` contiguous bands covering ``bits`` bits. Two hashes
    within ``max_distance`` differ in at most that many bands, so they agree on at least one."""
    count = max_distance + 1
    widths = [bits // count + (1 if b < bits % count else 0) for b in range(count)]
    shifts = [bits - sum(widths[: b + 1]) for b in range(count)]
    return list(zip(shifts, widths))


def interleaved_masks(max_distance: int, bits: int = 64) -> list[int]:
    """``max_distance + 1`` masks splitting the bits by position modulo ``max_distance + 1``: two
    hashes within ``max_distance`` agree on every bit of at least one of them."""
    count = max_distance + 1
    return [sum(1 << i for i in range(c, bits, count)) for c in range(count)]


def band_records(leaders: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """One record per sample and band: ``_bucket`` = band number << 32 | the band's bits."""
    hashes = leaders[KEY].to_numpy().view(np.uint64)
    parts = []
    for number, (shift, width) in enumerate(bands(max_distance)):
        value = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        parts.append(pd.DataFrame({BUCKET: (np.uint64(number) << np.uint64(POSITION_BITS) | value).view(np.int64),
                                   KEY: leaders[KEY].to_numpy(), ORDER: leaders[ORDER].to_numpy(),
                                   ROW: leaders[ROW].to_numpy()}))
    if not parts:
        return pd.DataFrame({BUCKET: np.zeros(0, np.int64), KEY: np.zeros(0, np.int64), ORDER: np.zeros(0),
                             ROW: np.zeros(0, np.int64)})
    return pd.concat(parts, ignore_index=True)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads a bucket number over 64 bits before it is combined with hash bits."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def run_pairs(keys: np.ndarray):
    """Every pair (i, j), i < j, of positions in sorted ``keys`` that hold equal values, yielded as
    two position arrays of at most :data:`PAIRS_PER_PASS` pairs each (pairs at offset 1, then 2, …)."""
    n = len(keys)
    if n < 2:
        return
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], n]
    later = np.repeat(ends, ends - starts) - np.arange(n) - 1  # how many equal values follow each position
    positions = np.flatnonzero(later > 0)
    offset = 1
    while len(positions):
        for start in range(0, len(positions), PAIRS_PER_PASS):
            chunk = positions[start : start + PAIRS_PER_PASS]
            yield chunk, chunk + offset
        offset += 1
        positions = positions[later[positions] >= offset]


def best_marks(marks: pd.DataFrame) -> pd.DataFrame:
    """For each ``_row``, the one mark with the smallest distance, then the earliest ``_of_order`` / ``_of_row``."""
    if not len(marks):
        return marks
    order = np.lexsort([marks[OF_ROW].to_numpy(), marks[OF_ORDER].to_numpy(), marks[DISTANCE].to_numpy(),
                        marks[ROW].to_numpy()])
    marks = marks.iloc[order]
    rows = marks[ROW].to_numpy()
    first = np.r_[True, rows[1:] != rows[:-1]]
    return marks.iloc[np.flatnonzero(first)].reset_index(drop=True)


def band_candidates(records: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """After a shuffle on ``_bucket``: marks for every pair of samples in one bucket within
    ``max_distance`` (the later one in keep order marks the earlier), reduced to the best per sample.

    Inside a bucket the pairs are found without comparing all of them: two hashes within the
    distance also agree on one of the interleaved masks, so each mask's equal values are paired.
    """
    if len(records) < 2:
        return empty_marks()
    buckets = _mix(records[BUCKET].to_numpy())
    hashes = records[KEY].to_numpy().view(np.uint64)
    orders, rows = records[ORDER].to_numpy(), records[ROW].to_numpy()
    found = []
    for mask in interleaved_masks(max_distance):
        keys = buckets ^ (hashes & np.uint64(mask))
        sort = np.argsort(keys, kind="stable")
        for a, b in run_pairs(keys[sort]):
            i, j = sort[a], sort[b]
            distance = np.bitwise_count(hashes[i] ^ hashes[j])
            near = distance <= max_distance
            if not near.any():
                continue
            i, j, distance = i[near], j[near], distance[near]
            i_first = (orders[i] < orders[j]) | ((orders[i] == orders[j]) & (rows[i] < rows[j]))
            earlier, later = np.where(i_first, i, j), np.where(i_first, j, i)
            found.append(best_marks(pd.DataFrame({ROW: rows[later], OF_ROW: rows[earlier], OF_ORDER: orders[earlier],
                                                  DISTANCE: distance.astype(np.int16)})))
    return best_marks(pd.concat(found, ignore_index=True)) if found else empty_marks()


# ---------------------------------------------------------------------------------------
# Back to the samples


def with_destination(marks: pd.DataFrame, column: str) -> pd.DataFrame:
    """``marks`` with ``_dest``: the partition number held in ``column``'s high bits (for routing)."""
    return marks.assign(**{DEST: marks[column].to_numpy() >> POSITION_BITS})


def to_named_sample(marks: pd.DataFrame) -> pd.DataFrame:
    """``marks`` with ``_dest`` = the partition of the sample each names (its own, when it names none)."""
    named = np.where(marks[OF_ROW].to_numpy() >= 0, marks[OF_ROW].to_numpy(), marks[ROW].to_numpy())
    return marks.assign(**{DEST: named >> POSITION_BITS})


def attach_sources(signatures: pd.DataFrame, marks: pd.DataFrame) -> pd.DataFrame:
    """``marks`` routed to the partition of the samples they name (``_of_row``), with those samples'
    ``source_shard`` / ``source_index`` as ``_of_shard`` / ``_of_index`` (null where they name none)."""
    marks = marks.reset_index(drop=True)
    if DEST in marks.columns:
        marks = marks.drop(columns=[DEST])
    rows = signatures[ROW].to_numpy()
    wanted = marks[OF_ROW].to_numpy()
    sort = np.argsort(rows, kind="stable")
    at = np.minimum(np.searchsorted(rows, wanted, sorter=sort), max(len(rows) - 1, 0))
    at = sort[at] if len(rows) else np.zeros(len(wanted), np.int64)
    found = (rows[at] == wanted) if len(rows) else np.zeros(len(wanted), bool)
    mask = pa.array(~found)
    shards = pa.array(signatures[C.SOURCE_SHARD].array).cast(pa.string()).take(pa.array(at)) if len(rows) \
        else pa.nulls(len(wanted), pa.string())
    indices = pa.array(signatures[C.SOURCE_INDEX].array).cast(pa.int64()).take(pa.array(at)) if len(rows) \
        else pa.nulls(len(wanted), pa.int64())
    shards = pc.if_else(mask, pa.scalar(None, pa.string()), shards)
    indices = pc.if_else(mask, pa.scalar(None, pa.int64()), indices)
    return marks.assign(**{OF_SHARD: pd.array(shards, dtype=pd.StringDtype("pyarrow")),
                           OF_INDEX: pd.array(indices, dtype=pd.ArrowDtype(pa.int64()))})


def _existing(table: pa.Table, name: str, typ: pa.DataType, default) -> pa.Array:
    if name in table.column_names:
        return table.column(name).combine_chunks().cast(typ)
    return pa.nulls(len(table), typ) if default is None else pa.array([default] * len(table), typ)


def apply_marks(frame, marks: pd.DataFrame, method: str, signatures: pd.DataFrame | None = None):
    """``frame`` (one original partition) with the dedup columns: ``is_duplicate``, ``duplicate_of``
    and, by method, ``phash_distance`` or ``cluster`` / ``max_similarity``.

    ``marks`` are this partition's (routed here); for exact and pHash there may be several per
    sample, and the best is taken. Samples that take no part keep the values an earlier
    deduplication gave them (False / null when there was none); samples that took part and are not
    marked get False / null.
    """
    backend = backend_of(frame)
    table = backend.to_arrow(frame)
    n = len(table)
    marks = marks.reset_index(drop=True)
    if method != "semantic":
        marks = best_marks(marks)
    positions = (marks[ROW].to_numpy() & POSITION_MASK).astype(np.int64)
    took_part = np.zeros(n, dtype=bool)
    if signatures is not None:
        took_part[(signatures[ROW].to_numpy() & POSITION_MASK).astype(np.int64)] = True
    took_part[positions] = True
    duplicate = marks[OF_ROW].to_numpy() >= 0
    is_dup = _existing(table, C.IS_DUPLICATE, pa.bool_(), False).fill_null(False).to_numpy(zero_copy_only=False).copy()
    is_dup[took_part] = False
    is_dup[positions[duplicate]] = True
    of = _existing(table, C.DUPLICATE_OF, C.DUPLICATE_OF_TYPE, None)
    keep_old = ~took_part
    new_shard = np.full(n, None, dtype=object)
    new_index = np.full(n, None, dtype=object)
    if len(marks):
        new_shard[positions[duplicate]] = np.asarray(marks[OF_SHARD].to_numpy(dtype=object))[duplicate]
        new_index[positions[duplicate]] = np.asarray(marks[OF_INDEX].to_numpy(dtype=object))[duplicate]
    fresh = pa.StructArray.from_arrays(
        [pa.array(new_shard.tolist(), pa.string()), pa.array(new_index.tolist(), pa.int64())],
        fields=list(C.DUPLICATE_OF_TYPE), mask=pa.array(~(np.isin(np.arange(n), positions[duplicate]))))
    duplicate_of = pc.if_else(pa.array(keep_old), of, fresh) if n else fresh
    table = set_column(table, C.IS_DUPLICATE, pa.array(is_dup, pa.bool_()))
    table = set_column(table, C.DUPLICATE_OF, duplicate_of)
    if method == "phash":
        table = set_column(table, C.PHASH_DISTANCE, _values_at(n, positions[duplicate],
                                                               marks[DISTANCE].to_numpy()[duplicate], pa.int16()))
    elif method == "semantic":
        table = set_column(table, C.CLUSTER, _values_at(n, positions, marks[CLUSTER].to_numpy(), pa.int32()))
        table = set_column(table, C.MAX_SIMILARITY, _values_at(n, positions, marks[SIMILARITY].to_numpy(), pa.float32()))
    return backend.from_arrow(table)


def _values_at(n: int, positions: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.Array:
    out = np.zeros(n, dtype=typ.to_pandas_dtype())
    valid = np.zeros(n, dtype=bool)
    out[positions], valid[positions] = values, True
    return pa.array(out, typ, mask=~valid)


# ---------------------------------------------------------------------------------------
# What a run found (for the manifest and the report)

EPS_GRID = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
SIMILARITY_BINS = 50
EXAMPLES_PER_DISTANCE = 2
KEY_COLUMN = {"exact": C.IMAGE_SHA256, "phash": C.PHASH, "semantic": C.CLUSTER}  # set on every sample that took part
MISSING = {"exact": "no_image_sha256", "phash": "no_phash", "semantic": "no_embedding"}  # the summary's name for the others
SAMPLE_FIELDS = (C.SOURCE_SHARD, C.SOURCE_INDEX, C.KEY, C.IMAGE_EXT, C.IMAGE_OFFSET, C.IMAGE_NBYTES)


def _mask(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).is_valid().to_numpy(zero_copy_only=False) if name in table.column_names \
        else np.zeros(len(table), dtype=bool)


def example_bucket(method: str, distance: np.ndarray, similarity: np.ndarray, eps: float) -> np.ndarray:
    """The distance bucket of each duplicate for the example pairs: the Hamming distance (pHash), a
    third of the [1 - eps, 1] similarity range (semantic), 0 (exact)."""
    if method == "phash":
        return distance.astype(np.int64)
    if method == "semantic":
        return np.clip(np.floor((1.0 - similarity) / eps * 3), 0, 2).astype(np.int64)
    return np.zeros(len(distance), dtype=np.int64)


def summary_partition(frame, method: str, max_distance: int, eps: float) -> dict:
    """One partition's share of a run's summary (combined by :func:`combine_summaries`): counts,
    the distances of duplicates, the curve of duplicates against the threshold, and the first
    example pairs at each distance."""
    table = backend_of(frame).to_arrow(frame)
    playing = in_play(table)
    has_key = _mask(table, KEY_COLUMN[method])
    considered = playing & has_key
    duplicate = considered & table.column(C.IS_DUPLICATE).fill_null(False).to_numpy(zero_copy_only=False)
    out: dict = {"rows": len(table), "considered": int(considered.sum()), "duplicates": int(duplicate.sum()),
                 "failed": int(_mask(table, C.ERROR).sum()), "dropped_before": int((~playing & ~_mask(table, C.ERROR)).sum()),
                 MISSING[method]: int((playing & ~has_key).sum())}
    distance = np.zeros(len(table))
    similarity = np.zeros(len(table))
    if method == "phash":
        distance = pc.fill_null(table.column(C.PHASH_DISTANCE), 0).to_numpy(zero_copy_only=False)
        out["distance_counts"] = np.bincount(distance[duplicate].astype(np.int64), minlength=max_distance + 1).tolist()
    elif method == "semantic":
        similarity = pc.fill_null(table.column(C.MAX_SIMILARITY), 0).to_numpy(zero_copy_only=False).astype(np.float64)
        counts, _ = np.histogram(similarity[considered], bins=SIMILARITY_BINS, range=(0.0, 1.0))
        out["similarity_counts"] = counts.tolist()
        out["curve"] = [int((similarity[considered] >= 1.0 - value).sum()) for value in sorted(set(EPS_GRID) | {eps})]
        out["cluster_ids"] = set(pc.unique(table.column(C.CLUSTER).drop_null()).to_pylist())
    bucket = example_bucket(method, distance, similarity, eps)
    examples = []
    for b in np.unique(bucket[duplicate]):
        for row in np.flatnonzero(duplicate & (bucket == b))[:EXAMPLES_PER_DISTANCE]:
            of = table.column(C.DUPLICATE_OF)[int(row)].as_py()
            examples.append({"bucket": int(b), "distance": float(distance[row]) if method == "phash" else None,
                             "similarity": float(similarity[row]) if method == "semantic" else None,
                             "duplicate": {name: table.column(name)[int(row)].as_py() for name in SAMPLE_FIELDS
                                           if name in table.column_names},
                             "original": {C.SOURCE_SHARD: of[C.SOURCE_SHARD], C.SOURCE_INDEX: of[C.SOURCE_INDEX]}})
    out["examples"] = examples
    return out


def combine_summaries(parts: list[dict], method: str, eps: float) -> dict:
    """The partitions' summaries added up (in partition order, so the examples are the first in input order)."""
    total: dict = {}
    for part in parts:
        for name, value in part.items():
            if name == "examples":
                continue
            if name == "cluster_ids":
                total[name] = total.get(name, set()) | value
                continue
            if isinstance(value, list):
                total[name] = [a + b for a, b in zip(total.get(name, [0] * len(value)), value)]
            else:
                total[name] = total.get(name, 0) + value
    examples: dict[int, list] = {}
    for part in parts:
        for example in part["examples"]:
            bucket = examples.setdefault(example["bucket"], [])
            if len(bucket) < EXAMPLES_PER_DISTANCE:
                bucket.append(example)
    total["examples"] = [e for b in sorted(examples) for e in examples[b]]
    if method == "phash":
        found = np.cumsum(total.get("distance_counts", [])).tolist()
        total["curve"] = [{"max_distance": t, "duplicates": int(n)} for t, n in enumerate(found)]
    if method == "semantic":
        total["clusters"] = len(total.pop("cluster_ids", ()))
        grid = sorted(set(EPS_GRID) | {eps})
        total["curve"] = [{"eps": value, "duplicates": n} for value, n in zip(grid, total.get("curve", [0] * len(grid)))]
    return total


def lookup_samples(frame, wanted: list[tuple[str, int]]) -> list[dict]:
    """The :data:`SAMPLE_FIELDS` of the rows of ``frame`` whose (source_shard, source_index) is ``wanted``."""
    table = backend_of(frame).to_arrow(frame)
    if not wanted or not len(table):
        return []
    keys = set(wanted)
    shards, indices = _column(table, C.SOURCE_SHARD), _column(table, C.SOURCE_INDEX)
    rows = [i for i, key in enumerate(zip(shards, indices)) if key in keys]
    return [{name: table.column(name)[i].as_py() for name in SAMPLE_FIELDS if name in table.column_names} for i in rows]
