"""Index a plain tar held in memory in one pass: the fast path of ``read_webdataset``.

Most WebDataset shards are plain: regular files with short ASCII names, written one after
another by ``tarfile``, webdataset's ``TarWriter`` or imgcurate itself. For those, the headers
are found by following the chain of sizes, then checked all at once with numpy (checksums,
types, sizes, names), and members are grouped into samples by comparing keys as Arrow arrays,
without an object per member. Only the small members' bytes are copied out; image bytes are
gathered into one Arrow buffer when wanted, and otherwise only located.

:func:`index_plain_tar` returns ``None`` for anything that is not plain (pax or GNU records,
links, directories, names with a ``./`` prefix or ``..`` or characters outside a safe set, a
repeated extension within a sample, ``.gz`` members, bad checksums, a cut-short file): the
caller then uses the member-by-member scanner (``tar.py``, ``samples.py``), which knows every
rule and reports every failure. On the shards it accepts, both give the same samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .samples import IMAGE_EXTENSIONS, MAX_MEMBER_BYTES
from .tar import BLOCK

_ZERO_BLOCK = bytes(BLOCK)
_KEY_EXT = r"^(?P<key>(?:.*/|)[^.]+)[.](?P<ext>[^/]*)$"  # samples.py's rule, with the groups named for Arrow
_REGULAR = np.array([ord("0"), 0, ord("7")], dtype=np.uint8)  # the type flags tar.py reads as regular files
_POSIX_MAGIC = np.frombuffer(b"ustar\x0000", dtype=np.uint8)
_NAME_CHARS = np.zeros(256, dtype=bool)  # names made only of these need no normalisation
for _chars in (b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"0123456789", b"_-+./,=@%~"):
    _NAME_CHARS[np.frombuffer(_chars, dtype=np.uint8)] = True
_MAX_BINARY_BYTES = 2**31 - 1  # Arrow binary offsets are 32-bit


@dataclass
class PlainShard:
    """The samples of a plain shard, as columns.

    Per sample: ``keys`` and the image member (``image_ext``, ``image_offset``, ``image_nbytes``,
    ``None`` without one; ``images`` holds the bytes when they were wanted). The other members
    are listed in tar order: ``member_sample`` (the sample they belong to), ``member_ext`` and
    ``member_data``.
    """

    keys: list[str]
    image_ext: list[str | None]
    image_offset: list[int | None]
    image_nbytes: list[int | None]
    images: pa.Array | None
    member_sample: list[int]
    member_ext: list[str]
    member_data: list[bytes]

    def __len__(self) -> int:
        return len(self.keys)


def _octal_fields(fields: np.ndarray) -> np.ndarray | None:
    """Values of octal header fields, one per row (digits, then NULs or spaces); None if any is odd."""
    digit = (fields >= ord("0")) & (fields <= ord("7"))
    padding = (fields == 0) | (fields == ord(" "))
    started = np.cumsum(digit, axis=1) > 0
    ended = np.cumsum(started & ~digit, axis=1) > 0
    if not np.all(digit | padding) or np.any(ended & digit) or np.any(~started[:, -1]):
        return None
    values = np.zeros(len(fields), dtype=np.int64)
    for column in range(fields.shape[1]):
        values = np.where(digit[:, column], values * 8 + (fields[:, column].astype(np.int64) - ord("0")), values)
    return values


def _header_chain(buffer, total: int) -> tuple[list[int], list[int]] | None:
    """Header positions and sizes, following each header's size to the next; None where the chain
    does not end cleanly (end-of-archive block or end of file)."""
    starts, sizes = [], []
    pos = 0
    while pos + BLOCK <= total:
        if buffer[pos] == 0 and buffer[pos : pos + BLOCK] == _ZERO_BLOCK:
            return starts, sizes
        field = buffer[pos + 124 : pos + 136]
        if field[0] & 0x80:  # base-256 sizes (8 GiB and more)
            return None
        try:
            size = int(field.split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            return None
        if size < 0 or pos + BLOCK + size > total:
            return None
        starts.append(pos)
        sizes.append(size)
        pos += BLOCK + size + (-size) % BLOCK
    return (starts, sizes) if pos == total else None


def _names(headers: np.ndarray) -> pa.Array | None:
    """The member names as an Arrow string array, when every one is plain."""
    raw = headers[:, :100]
    is_nul = raw == 0
    lengths = np.where(is_nul.any(axis=1), is_nul.argmax(axis=1), 100)
    inside = np.arange(100) < lengths[:, None]
    if np.any(lengths == 0) or not np.all(_NAME_CHARS[raw] | ~inside):
        return None
    offsets = np.zeros(len(raw) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    names = pa.Array.from_buffers(pa.string(), len(raw), [None, pa.py_buffer(offsets), pa.py_buffer(raw[inside])])
    if pc.any(pc.starts_with(names, "./")).as_py() or pc.any(pc.match_substring_regex(names, r"(^|/)\.\.(/|$)")).as_py():
        return None
    return names


def index_plain_tar(buffer, with_images: bool, fd: int | None = None) -> PlainShard | None:
    """The samples of the tar in ``buffer`` (bytes, mmap, …) if it is plain, else None (see the module docstring).

    With ``fd`` (the same file, open), image bytes are read from it with ``pread`` instead of
    copied out of ``buffer``: the kernel copies them once, without faulting in a mapping first.
    """
    total = len(buffer)
    chain = _header_chain(buffer, total)
    if chain is None:
        return None
    starts, sizes = np.asarray(chain[0], dtype=np.int64), np.asarray(chain[1], dtype=np.int64)
    count = len(starts)
    if count == 0:
        return PlainShard([], [], [], [], pa.array([], pa.binary()) if with_images else None, [], [], [])
    blocks = np.frombuffer(buffer, dtype=np.uint8, count=total - total % BLOCK).reshape(-1, BLOCK)
    headers = blocks[starts // BLOCK]
    del blocks  # an mmap cannot be closed while a view of it is alive
    unsigned_sum = headers.sum(axis=1, dtype=np.int64) - headers[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * ord(" ")
    checksums, header_sizes = _octal_fields(headers[:, 148:156]), _octal_fields(headers[:, 124:136])
    posix = np.all(headers[:, 257:265] == _POSIX_MAGIC, axis=1)
    if (checksums is None or header_sizes is None or not np.array_equal(checksums, unsigned_sum)
            or not np.array_equal(header_sizes, sizes) or not np.all(np.isin(headers[:, 156], _REGULAR))
            or np.any(posix & (headers[:, 345] != 0))):
        return None
    names = _names(headers)
    if names is None:
        return None
    parts = pc.extract_regex(names, _KEY_EXT)
    if parts.null_count:  # a name without an extension: the scanner reports it
        return None
    keys, exts = parts.field("key"), pc.utf8_lower(parts.field("ext"))
    if pc.any(pc.ends_with(exts, ".gz")).as_py():
        return None

    # consecutive members with the same key form a sample; an extension repeated within one is left to the scanner
    starts_sample = np.ones(count, dtype=bool)
    starts_sample[1:] = pc.not_equal(keys.slice(1), keys.slice(0, count - 1)).to_numpy(zero_copy_only=False)
    sample_of = np.cumsum(starts_sample) - 1
    encoded = pc.dictionary_encode(exts)
    codes = encoded.indices.to_numpy().astype(np.int64)
    vocabulary = encoded.dictionary.to_pylist()
    if len(np.unique(sample_of * len(vocabulary) + codes)) != count:
        return None

    # the image of a sample is its first member with an image extension
    is_image = np.isin(codes, [i for i, ext in enumerate(vocabulary) if ext in IMAGE_EXTENSIONS])
    candidates = np.flatnonzero(is_image)
    image_members = candidates[np.r_[True, sample_of[candidates[1:]] != sample_of[candidates[:-1]]]] if len(candidates) else candidates
    is_image[:] = False
    is_image[image_members] = True
    loaded = np.flatnonzero(~is_image)
    if np.any(sizes[loaded] > MAX_MEMBER_BYTES) or (with_images and np.any(sizes[image_members] > MAX_MEMBER_BYTES)):
        return None

    samples = int(sample_of[-1]) + 1
    image_sample = sample_of[image_members]
    image_ext: list[str | None] = [None] * samples
    image_offset: list[int | None] = [None] * samples
    image_nbytes: list[int | None] = [None] * samples
    data_offsets = starts + BLOCK
    for sample, code, offset, size in zip(image_sample.tolist(), codes[image_members].tolist(),
                                          data_offsets[image_members].tolist(), sizes[image_members].tolist()):
        image_ext[sample], image_offset[sample], image_nbytes[sample] = vocabulary[code], offset, size
    images = None
    if with_images:
        images = _gather(buffer, fd, data_offsets[image_members], sizes[image_members], image_sample, samples)
        if images is None:
            return None
    member_data = [buffer[offset : offset + size] for offset, size in zip(data_offsets[loaded].tolist(), sizes[loaded].tolist())]
    return PlainShard(
        keys=keys.take(pa.array(np.flatnonzero(starts_sample))).to_pylist(),
        image_ext=image_ext, image_offset=image_offset, image_nbytes=image_nbytes, images=images,
        member_sample=sample_of[loaded].tolist(), member_ext=[vocabulary[c] for c in codes[loaded].tolist()],
        member_data=member_data,
    )


def _gather(buffer, fd: int | None, offsets: np.ndarray, sizes: np.ndarray, rows: np.ndarray, count: int) -> pa.Array | None:
    """An Arrow binary array of ``count`` rows: the byte ranges at ``rows``, null elsewhere."""
    total = int(sizes.sum())
    if total > _MAX_BINARY_BYTES:
        return None
    lengths = np.zeros(count, dtype=np.int64)
    lengths[rows] = sizes
    value_offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(lengths, out=value_offsets[1:])
    if fd is None:
        with memoryview(buffer) as view:
            data = pa.py_buffer(b"".join([view[o : o + s] for o, s in zip(offsets.tolist(), sizes.tolist())]))
    else:
        data = pa.allocate_buffer(total)  # from Arrow's pool, which reuses memory: fewer fresh pages to fault in
        with memoryview(data) as view:
            for start, offset, size in zip(value_offsets[rows].tolist(), offsets.tolist(), sizes.tolist()):
                if os.preadv(fd, [view[start : start + size]], offset) != size:
                    return None  # the file changed under us: the scanner will say how
    valid = np.zeros(count, dtype=bool)
    valid[rows] = True
    validity = None if valid.all() else pa.array(valid).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), count, [validity, pa.py_buffer(value_offsets), data],
                                 null_count=int(count - valid.sum()))
