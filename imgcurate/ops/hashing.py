"""Image hashes of one partition: SHA-256 of the image bytes and the DCT perceptual hash (pHash).

* ``image_sha256``: 64 hex digits of the SHA-256 of the image member's original bytes (as stored
  in the shard, never re-encoded), so two samples hash alike exactly when their bytes are equal.
* ``phash``: 16 hex digits, the format of ``str(imagehash.phash(image))``: the image in grayscale
  (Pillow's ``convert("L")``), resized to 32×32 with Lanczos, a DCT-II over rows then columns
  (``scipy.fftpack.dct``), and one bit per coefficient of the top-left 8×8 block, set when it is
  above their median; the first coefficient is the most significant bit. EXIF orientation is
  ignored, as ``imagehash`` ignores it.

JPEGs are decoded in Pillow's draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding and
hands back the luma channel alone, the smallest scale that keeps both sides at least
:data:`DRAFT_SIDE` pixels. The hash then differs from ``imagehash.phash`` on the full-size image
in a few bits on some images (measured on real photos in ``benchmarks/README.md``, "Deduplication":
none by more than 2 bits, and no near-duplicate decision changes at the default ``max_distance``);
``draft_side=None`` decodes at full size and gives ``imagehash``'s bits exactly.

An image that cannot be fetched or decoded becomes a failure row (``no_image``,
``unreadable_image``, ``hash_decode_error``, ``image_too_large``) under the ``on_error`` policy,
with null hashes: it is never a duplicate of anything.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from ..common import columns as C
from ..common.backend import backend_of
from ..common.errors import Failure
from .decode import DEFAULT_MAX_PIXELS, DecodeFailure, Preprocess, _open, decode_pool
from .rows import fetch_readable, in_play, member_name, cell, record_failures, set_column

HASH_KINDS = ("sha256", "phash")
HASH_COLUMNS = {"sha256": C.IMAGE_SHA256, "phash": C.PHASH}
DRAFT_SIDE = 64  # JPEGs are decoded at the smallest DCT scale keeping both sides >= this (see the module docstring)
PHASH_BITS = 64
_HASH_SIDE, _HASH_BLOCK = 32, 8  # imagehash.phash's img_size (hash_size * highfreq_factor) and hash_size
CHUNK = 256  # images fetched and hashed at a time (bounds memory)


def check_kinds(kinds) -> tuple[str, ...]:
    """``kinds`` as a tuple of known hash kinds; raises ValueError naming the parameter."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in HASH_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be one or more of {HASH_KINDS}, got {kinds!r}")
    return kinds


def phash_bits(image: Image.Image) -> int:
    """The 64-bit pHash of a decoded (or draft-decoded) Pillow image, as ``imagehash.phash`` computes it."""
    import scipy.fftpack

    gray = image if image.mode == "L" else image.convert("L")  # a draft-decoded JPEG is already L
    pixels = np.asarray(gray.resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.LANCZOS))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:_HASH_BLOCK, :_HASH_BLOCK]
    # numpy.median of the 64 values, which is the mean of the middle two, without its overhead (~4 %
    # of a draft-decoded hash)
    middle = np.sort(low, axis=None)[_HASH_BLOCK * _HASH_BLOCK // 2 - 1 : _HASH_BLOCK * _HASH_BLOCK // 2 + 1]
    bits = np.packbits(low > (middle[0] + middle[1]) / 2)
    return int.from_bytes(bits.tobytes(), "big")


def phash_image(data: bytes, draft_side: int | None = DRAFT_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The pHash of image bytes; raises :class:`DecodeFailure` (``hash_decode_error``, ``image_too_large``)."""
    try:
        image = _open(data, Preprocess(max_pixels=max_pixels))
    except DecodeFailure as failure:
        raise DecodeFailure("hash_decode_error" if failure.reason == "decode_error" else failure.reason,
                            failure.detail) from failure
    try:
        if draft_side and image.format == "JPEG":
            image.draft("L", (draft_side, draft_side))
        with warnings.catch_warnings():  # a truncated image raises below; Pillow's own warnings add nothing
            warnings.simplefilter("ignore")
            return phash_bits(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DecodeFailure("hash_decode_error", f"{type(exc).__name__}: {exc}") from exc


def _phash_or_failure(data: bytes, draft_side: int | None) -> int | DecodeFailure:
    try:
        return phash_image(data, draft_side)
    except DecodeFailure as failure:
        return failure


def phash_hex(value: int) -> str:
    """16 hex digits, the format of ``str(imagehash.phash(...))``."""
    return f"{value:016x}"


_HEX_DIGITS = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_DIGITS[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_DIGITS[_c] = 10 + _i


def phash_to_int64(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, valid) of a ``phash`` column: the 64 bits as int64 (the unsigned value's bits; a numpy
    view converts), 0 where ``valid`` is False (null, or not 16 hex digits)."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    array = array.cast(pa.string())
    n = len(array)
    valid = pc.fill_null(pc.equal(pc.utf8_length(array), 16), False).to_numpy(zero_copy_only=False)
    filled = pc.if_else(pa.array(valid), array, pa.scalar("0" * 16))  # every value now 16 bytes
    offsets = np.frombuffer(filled.buffers()[1], dtype=np.int32)[filled.offset : filled.offset + n + 1]
    start = int(offsets[0]) if n else 0
    chars = np.frombuffer(filled.buffers()[2], dtype=np.uint8)[start : start + 16 * n].reshape(n, 16) if n \
        else np.zeros((0, 16), np.uint8)
    digits = _HEX_DIGITS[chars]
    valid &= (digits != 255).all(axis=1)
    digits = np.where(valid[:, None], digits, 0).astype(np.uint64)
    hashes = np.zeros(n, dtype=np.uint64)
    for column in range(16):
        hashes = (hashes << np.uint64(4)) | digits[:, column]
    return hashes.view(np.int64), valid


def hash_table(table: pa.Table, kinds=HASH_KINDS, *, on_error: str = "report", storage_options: dict | None = None,
               draft_side: int | None = DRAFT_SIDE) -> pa.Table:
    """:func:`hash_partition` on an Arrow table."""
    kinds = check_kinds(kinds)
    for name in C.ERROR_COLUMNS:  # the output always has them, so its meta is fixed
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), pa.string()))
    values = {kind: [None] * len(table) for kind in kinds}
    rows = np.flatnonzero(in_play(table))
    failures: dict[int, Failure] = {}
    for start in range(0, len(rows), CHUNK):
        readable = fetch_readable(table, rows[start : start + CHUNK].tolist(), failures, storage_options)
        if "phash" in kinds:
            hashes = decode_pool().map(_phash_or_failure, [data for _, data in readable], [draft_side] * len(readable))
            for (row, _), value in zip(readable, hashes):
                if isinstance(value, DecodeFailure):
                    failures[row] = Failure(value.reason, value.detail, cell(table, C.SOURCE_SHARD, row),
                                            member_name(table, row), cell(table, C.KEY, row))
                else:
                    values["phash"][row] = phash_hex(value)
        if "sha256" in kinds:
            for row, data in readable:
                if row not in failures:
                    values["sha256"][row] = hashlib.sha256(data).hexdigest()
    for kind in kinds:
        table = set_column(table, HASH_COLUMNS[kind], pa.array(values[kind], pa.string()))
    return record_failures(table, failures, on_error)


def hash_partition(frame, kinds=HASH_KINDS, *, on_error: str = "report", storage_options: dict | None = None,
                   draft_side: int | None = DRAFT_SIDE):
    """``frame`` with ``image_sha256`` and/or ``phash`` (see the module docstring) for every row still in play.

    Rows that failed or were dropped before keep null hashes; images that cannot be fetched or
    decoded become failure rows under ``on_error``.
    """
    backend = backend_of(frame)
    table = hash_table(backend.to_arrow(frame), kinds, on_error=on_error, storage_options=storage_options,
                       draft_side=draft_side)
    return backend.from_arrow(table)
