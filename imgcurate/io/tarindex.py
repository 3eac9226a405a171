"""Index a plain tar in one pass: the fast path of ``read_webdataset``.

Most WebDataset shards are plain: regular files with short ASCII names, written one after
another by ``tarfile``, webdataset's ``TarWriter`` or imgcurate itself. For those, the headers
are found by following each member's size to the next header, touching no member data, and
checked (magic, checksum, type, size): in C without the GIL (``_fastio.c``), reading a file a few
KiB at a time, when imgcurate was built with it; else by a Python loop over the mapped file and
numpy, with the same answers. Names are split into keys and extensions by the rules of
:mod:`~imgcurate.io.rules` (in C too, where built), and members are grouped into samples by
comparing keys as Arrow arrays, without an object per member. Only the small
members' bytes are read; images are located, and loaded by the caller's reader when wanted.

:func:`index_plain_file` and :func:`index_plain_tar` return ``None`` for anything that is not
plain (headers without the ustar magic, as old v7 tars have; pax or GNU records; links,
directories, names with a ``./`` prefix or ``..`` or characters outside a safe set, a repeated
extension within a sample, ``.gz`` members, bad checksums, a cut-short file): the caller then
uses the member-by-member scanner (``tar.py``, ``samples.py``), which knows every rule and
reports every failure. On the shards it accepts, both give the same samples.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .ranges import read_ranges
from .rules import IMAGE_EXTENSIONS, is_plain_name, split_key
from .samples import MAX_BINARY_BYTES, MAX_MEMBER_BYTES
from .tar import BLOCK, ZERO_BLOCK

try:
    from . import _fastio
except ImportError:  # installed without a C compiler: the same checks run in Python and numpy
    _fastio = None

NAME_FIELD = 100  # bytes of a header's name field
_REGULAR = np.array([ord("0"), 0, ord("7")], dtype=np.uint8)  # the type flags tar.py reads as regular files
_POSIX_MAGIC = np.frombuffer(b"ustar\x0000", dtype=np.uint8)
_USTAR = np.frombuffer(b"ustar", dtype=np.uint8)  # POSIX ("ustar\\x0000") and GNU ("ustar  \\x00") headers
# a header's size field as bytes, in one call (a memoryview slice, then tobytes, made the walk ~17 %
# slower: 920 against 770 µs for an 800-sample shard)
_SIZE_FIELD = struct.Struct("12s").unpack_from
@dataclass
class PlainShard:
    """The samples of a plain shard, as columns.

    Per sample: ``keys`` and the image member (Arrow arrays ``image_ext``, ``image_offset``,
    ``image_nbytes``, null without one; ``images`` holds the bytes when they were wanted). The
    other members are listed in tar order: ``member_sample`` (the sample they belong to),
    ``member_code`` (their extension, as a position in ``extensions``) and ``member_data``.
    """

    keys: pa.Array
    image_ext: pa.Array
    image_offset: pa.Array
    image_nbytes: pa.Array
    images: pa.Array | None
    member_sample: np.ndarray
    member_code: np.ndarray
    extensions: list[str]
    member_data: pa.BinaryArray

    def __len__(self) -> int:
        return len(self.keys)


def _octal_fields(fields: np.ndarray) -> np.ndarray | None:
    """Values of octal header fields, one per row (digits, then NULs or spaces); None if any is odd."""
    digit = (fields >= ord("0")) & (fields <= ord("7"))
    if not np.all(digit | (fields == 0) | (fields == ord(" "))):
        return None
    width = fields.shape[1]
    first = digit.argmax(axis=1)
    last = width - 1 - digit[:, ::-1].argmax(axis=1)
    # at least one digit, and no padding between digits
    if not np.all(digit[np.arange(len(fields)), first]) or np.any(digit.sum(axis=1) != last - first + 1):
        return None
    places = np.clip(last[:, None] - np.arange(width), 0, None)  # each digit's power of 8
    return np.where(digit, (fields.astype(np.int64) - ord("0")) << (3 * places), 0).sum(axis=1)


def _walk_headers(buffer) -> tuple[np.ndarray, np.ndarray] | None:
    """Header positions and member sizes, each header found from the one before it (its size says
    where the next begins); None unless the chain ends cleanly, at an end-of-archive block or at
    the end of the file. Member data is stepped over, never looked at: a tar stored in a member
    is only data.
    """
    starts: list[int] = []
    sizes: list[int] = []
    position = 0
    with memoryview(buffer) as view:
        total = view.nbytes
        while position < total:
            if position + BLOCK > total:
                return None
            (field,) = _SIZE_FIELD(view, position + 124)
            if not field[0]:  # no size: the end-of-archive block, or a header the scanner must judge
                if view[position : position + BLOCK] == ZERO_BLOCK:
                    break
                return None
            try:
                size = int(field.split(b"\0", 1)[0], 8)  # checked against the strict reading below
            except ValueError:
                return None
            if size < 0:
                return None
            starts.append(position)
            sizes.append(size)
            position += BLOCK + size + (-size % BLOCK)
        if position > total:  # the last member is cut short
            return None
    return np.array(starts, dtype=np.int64), np.array(sizes, dtype=np.int64)


def split_names(names: np.ndarray) -> tuple[pa.Array, pa.Array] | None:
    """Each member's key and lower-case extension (Arrow string arrays), when every name (a row of
    ``names``, the headers' 100-byte name fields, NUL-padded) is plain; else None.

    The rules are those of :mod:`~imgcurate.io.rules`: applied in C (``_fastio.split_names``) when the
    extension was built and every name splits at the first dot of its last component (the usual
    case), otherwise name by name by the rules' own functions.
    """
    if _fastio is not None:
        found = _fastio.split_names(np.ascontiguousarray(names))
        if found is not None:
            key_offsets, keys, ext_offsets, exts = found
            return tuple(pa.Array.from_buffers(pa.string(), len(names), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
                         for offsets, data in ((key_offsets, keys), (ext_offsets, exts)))
    return _split_by_rules(names)


def _split_by_rules(names: np.ndarray) -> tuple[pa.Array, pa.Array] | None:
    keys, exts = [], []
    for field in names[:, :NAME_FIELD]:
        raw = field.tobytes().split(b"\0", 1)[0]
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        parts = split_key(name) if is_plain_name(name) else None
        if parts is None:  # not plain, or no extension: the scanner reports it
            return None
        keys.append(parts[0])
        exts.append(parts[1])
    return pa.array(keys, pa.string()), pa.array(exts, pa.string())


def _scan_headers_python(buffer) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Header positions, member sizes and name fields of a plain tar, else None: the chain walked
    in Python, then every header checked at once with numpy."""
    chain = _walk_headers(buffer)
    if chain is None:
        return None
    starts, sizes = chain
    if not len(starts):
        return starts, sizes, np.zeros((0, NAME_FIELD), dtype=np.uint8)
    blocks = np.frombuffer(buffer, dtype=np.uint8, count=int(starts[-1]) + BLOCK).reshape(-1, BLOCK)
    headers = blocks[starts // BLOCK]
    del blocks  # an mmap cannot be closed while a view of it is alive
    if not np.all(headers[:, 257:262] == _USTAR) or not np.array_equal(_octal_fields(headers[:, 124:136]), sizes):
        return None  # old v7 headers, or sizes the strict reading refuses (base-256 for 8 GiB and more, among others)
    unsigned_sum = headers.sum(axis=1, dtype=np.int64) - headers[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * ord(" ")
    checksums = _octal_fields(headers[:, 148:156])
    posix = np.all(headers[:, 257:265] == _POSIX_MAGIC, axis=1)
    if (checksums is None or not np.array_equal(checksums, unsigned_sum) or not np.all(np.isin(headers[:, 156], _REGULAR))
            or np.any(posix & (headers[:, 345] != 0))):
        return None
    return starts, sizes, headers[:, :NAME_FIELD]


def scan_headers(buffer) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Header positions, member sizes and name fields of a plain tar, else None: from the C walk
    (``_fastio.c``; the same checks, one header at a time, without the GIL) when the extension was
    built (setup.py; it needs a C compiler), else from :func:`_scan_headers_python`."""
    return _scan_headers_python(buffer) if _fastio is None else _scanned(_fastio.scan_headers(buffer))


def _scanned(found: tuple[bytes, bytes, bytes] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The C walk's answer as arrays."""
    if found is None:
        return None
    starts, sizes, names = found
    return (np.frombuffer(starts, dtype=np.int64), np.frombuffer(sizes, dtype=np.int64),
            np.frombuffer(names, dtype=np.uint8).reshape(-1, NAME_FIELD))


# reads the images of a shard, given each sample's image offset and size and whether it has one:
# their bytes as one binary array (null for samples without), or None when the file ends first
ImageReader = Callable[[np.ndarray, np.ndarray, np.ndarray], pa.BinaryArray | None]


# the small members (captions, JSON, …) are read by range too, each run of them in one call; they
# sit between images, so a run must not reach across one
_MEMBER_GAP = 4096


def index_plain_file(fd: int, size: int, read_images: ImageReader | None = None, members: bool = True) -> PlainShard | None:
    """:func:`index_plain_tar` of an open file of ``size`` bytes. With the compiled walk, the headers
    are read a few KiB at a time and the small members by range: nothing is mapped (a mapping's
    page faults and its unmapping cost more than these reads). Without it, the file is mapped.
    ``members=False``: the small members' bytes are not read (each is empty): the samples only."""
    if not members:
        return _index(scan_headers_of_file(fd, size), _no_members, None)
    if _fastio is None:
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        try:
            return index_plain_tar(mapped, read_images)
        finally:
            # closing fails while anything still holds a view of the mapping, however briefly (seen
            # now and then in dask workers); the mapping then goes with the last view, instead of
            # failing a read that succeeded
            with contextlib.suppress(BufferError):
                mapped.close()
    members = functools.partial(_read_members, fd)
    return _index(_scanned(_fastio.scan_file(fd, size)), members, read_images)


def scan_headers_of_file(fd: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`scan_headers` of an open file: read a window at a time with the compiled walk, else mapped."""
    if _fastio is not None:
        return _scanned(_fastio.scan_file(fd, size))
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
        found = scan_headers(mapped)
        # the arrays must not keep the mapping alive: copies of the (small) header fields
        return None if found is None else tuple(np.array(part, copy=True) for part in found)


def _no_members(offsets: np.ndarray, sizes: np.ndarray) -> pa.BinaryArray:
    return pa.Array.from_buffers(pa.binary(), len(offsets), [None, pa.py_buffer(np.zeros(len(offsets) + 1, np.int32)),
                                                             pa.py_buffer(b"")])


def _read_members(fd: int, offsets: np.ndarray, sizes: np.ndarray) -> pa.BinaryArray | None:
    return read_ranges(fd, offsets, sizes, np.ones(len(offsets), dtype=bool), max_gap=_MEMBER_GAP)


def index_plain_tar(buffer, read_images: ImageReader | None = None) -> PlainShard | None:
    """The samples of the tar in ``buffer`` (bytes, an Arrow buffer, an mmap, …) if it is plain,
    else None (see the module docstring). The images are located, and loaded by ``read_images``
    when one is given (``reader.read_plain_shard`` reads them from the file by range, so their
    bytes are copied once)."""
    return _index(scan_headers(buffer), functools.partial(_gather, buffer), read_images)


def _index(scanned, read_members: Callable[[np.ndarray, np.ndarray], pa.BinaryArray | None],
           read_images: ImageReader | None) -> PlainShard | None:
    """A plain shard's samples from its headers (``scanned``: starts, sizes and names, or None when
    they are not plain), its small members read by ``read_members``, its images by ``read_images``."""
    if scanned is None:
        return None
    starts, sizes, names = scanned
    count = len(starts)
    if count == 0:
        none = np.zeros(0, dtype=np.int64)
        empty = [pa.array([], typ) for typ in (pa.string(), pa.int64(), pa.int64())]
        return PlainShard(pa.array([], pa.string()), *empty, None if read_images is None else pa.array([], pa.binary()),
                          none, none, [], pa.array([], pa.binary()))
    split = split_names(names)
    if split is None:
        return None
    keys, exts = split
    if pc.any(pc.ends_with(exts, ".gz")).as_py():
        return None

    # consecutive members with the same key form a sample; an extension repeated within one is left to the scanner
    starts_sample = np.ones(count, dtype=bool)
    starts_sample[1:] = pc.not_equal(keys.slice(1), keys.slice(0, count - 1)).to_numpy(zero_copy_only=False)
    sample_of = np.cumsum(starts_sample) - 1
    encoded = pc.dictionary_encode(exts)
    codes = encoded.indices.to_numpy().astype(np.int64)
    vocabulary = encoded.dictionary.to_pylist()
    if np.bincount(sample_of * len(vocabulary) + codes).max() > 1:
        return None

    # the image of a sample is its first member with an image extension
    is_image = np.isin(codes, [i for i, ext in enumerate(vocabulary) if ext in IMAGE_EXTENSIONS])
    candidates = np.flatnonzero(is_image)
    image_members = candidates[np.r_[True, sample_of[candidates[1:]] != sample_of[candidates[:-1]]]] if len(candidates) else candidates
    is_image[:] = False
    is_image[image_members] = True
    loaded = np.flatnonzero(~is_image)
    if np.any(sizes[loaded] > MAX_MEMBER_BYTES) or (read_images is not None and np.any(sizes[image_members] > MAX_MEMBER_BYTES)):
        return None

    samples = int(sample_of[-1]) + 1
    image_sample = sample_of[image_members]
    data_offsets = starts + BLOCK
    # each sample's image: offset, size and extension code, null where it has none
    no_image = np.ones(samples, dtype=bool)
    no_image[image_sample] = False
    by_sample = np.zeros((3, samples), dtype=np.int64)
    by_sample[:, image_sample] = data_offsets[image_members], sizes[image_members], codes[image_members]
    images = None
    if read_images is not None:
        if int(sizes[image_members].sum()) > MAX_BINARY_BYTES:
            return None
        images = read_images(by_sample[0], by_sample[1], ~no_image)
        if images is None:
            return None
    if int(sizes[loaded].sum()) > MAX_BINARY_BYTES:
        return None
    members = read_members(data_offsets[loaded], sizes[loaded])
    if members is None:
        return None
    return PlainShard(
        keys=keys.take(pa.array(np.flatnonzero(starts_sample))),
        image_ext=pa.array(vocabulary, pa.string()).take(pa.array(by_sample[2], mask=no_image)),
        image_offset=pa.array(by_sample[0], mask=no_image), image_nbytes=pa.array(by_sample[1], mask=no_image), images=images,
        member_sample=sample_of[loaded], member_code=codes[loaded], extensions=vocabulary, member_data=members,
    )


def _gather(buffer, offsets: np.ndarray, sizes: np.ndarray) -> pa.Array:
    """The byte ranges of ``buffer`` at ``offsets`` (ascending) as an Arrow binary array.

    One ``take`` copies them all in Arrow's C++ (and without the GIL): ``buffer`` is seen as a
    binary array whose values alternate between the bytes around the ranges and the ranges.
    """
    bounds = np.empty(2 * len(offsets) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, len(buffer)
    bounds[1:-1:2], bounds[2:-1:2] = offsets, offsets + sizes
    pieces = pa.Array.from_buffers(pa.large_binary(), len(bounds) - 1, [None, pa.py_buffer(bounds), pa.py_buffer(buffer)])
    gathered = pieces.take(pa.array(2 * np.arange(len(offsets)) + 1))
    del pieces  # releases the buffer (an mmap cannot be closed while it is exported)
    return gathered.cast(pa.binary())
