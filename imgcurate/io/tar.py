"""A minimal tar reader and writer for WebDataset shards.

Reading walks the 512-byte headers and records each member's data offset, so a member's
bytes can be read now, skipped (``seek``), or copied later straight from the file by byte
range. ``tarfile`` builds a full ``TarInfo`` per member and cannot skip data it was not
asked for; this reader is the measured hot path of ``read_webdataset`` (see benchmarks/).

Writing emits plain ustar headers (GNU long-name records only for names over 255 bytes,
never PAX records, which DALI rejects) with fixed owner and mtime, so the same samples
always give byte-identical tars.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import numpy as np

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
ZERO_BLOCK = bytes(BLOCK)  # one end-of-archive block: where reading stops

FILE, DIRECTORY, SYMLINK, HARDLINK, SPECIAL = "file", "directory", "symlink", "hardlink", "special"
_KINDS = {
    b"0": FILE, b"\0": FILE, b"7": FILE,
    b"5": DIRECTORY,
    b"2": SYMLINK,
    b"1": HARDLINK,
}
_GNU_LONGNAME, _GNU_LONGLINK, _PAX_LOCAL, _PAX_GLOBAL = b"L", b"K", b"x", b"g"
_POSIX_MAGIC = b"ustar\x0000"
MAX_RECORD_BYTES = 2**20  # long-name and pax records: real ones are tiny, a hostile one could claim gigabytes
_READ_CHUNK = 16 * 2**20  # large members are read in pieces, so memory grows only with bytes really there


@dataclass(slots=True)
class TarMember:
    name: str
    kind: str
    offset: int  # data offset in the (decompressed) stream
    size: int
    data: bytes | None = None
    too_large: bool = False  # its data was wanted but is over ``max_data_bytes``, so it was skipped


class TarFormatError(Exception):
    """The stream stops being a readable tar at ``offset``.

    ``reason`` is ``"not_a_tar"`` when nothing could be read, else ``"truncated_member"``;
    ``member`` names the member being read when it broke, if its header was readable.
    """

    def __init__(self, reason: str, detail: str, offset: int, member: str | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.offset, self.member = reason, detail, offset, member


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for values over 8 GiB
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 1)) if field[0] & 0x40 else value
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = _number(header[148:156])
    except ValueError:
        return False
    # The checksum field counts as eight spaces.
    if stored == sum(header) - sum(header[148:156]) + 256:
        return True
    # Some old writers summed signed chars.
    return stored == 256 + sum(struct.unpack_from("148b8x356b", header))


def _cstring(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse pax records (``"%d %s=%s\\n"``); raises ValueError on a malformed one."""
    records, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        if length <= space - pos or pos + length > len(data):
            raise ValueError(f"pax record length {length} does not fit")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def iter_tar(
    stream: BinaryIO,
    want_data: Callable[[str], bool] = lambda name: True,
    total_size: int | None = None,
    max_data_bytes: int | None = None,
) -> Iterator[TarMember]:
    """Yield the members of a tar stream in order.

    ``want_data(name)`` is asked for each regular file; when it says no, the data is skipped
    with ``seek`` (cheap on local and ranged remote files). ``total_size`` (the stream's
    length, when known) lets skipped members be checked for truncation without reading them.
    A wanted member over ``max_data_bytes`` is skipped too and flagged ``too_large``.
    Raises :class:`TarFormatError` where the stream stops being a valid tar (including a
    compressed stream that breaks off, and header fields that cannot be true); nothing else.
    """
    scanner = _Scanner(stream, want_data, total_size, max_data_bytes)
    while True:
        try:
            member = scanner.next_member()
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise TarFormatError(
                _first_error(scanner.pos), f"compressed stream is broken near byte {scanner.pos}: {exc}", scanner.pos, scanner.name
            ) from exc
        if member is None:
            return
        yield member


class _Scanner:
    def __init__(self, stream: BinaryIO, want_data: Callable[[str], bool], total_size: int | None,
                 max_data_bytes: int | None):
        self.stream, self.want_data, self.total_size = stream, want_data, total_size
        self.max_data_bytes = max_data_bytes
        self.pos = 0
        self.name: str | None = None  # the member being read, for error reports

    def next_member(self) -> TarMember | None:
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            pos = self.pos
            self.name = None
            header = self.stream.read(BLOCK)
            if not header:
                return None  # archives without end-of-archive blocks are common and valid enough
            if len(header) < BLOCK:
                raise TarFormatError(_first_error(pos), f"shard ends inside a tar header at byte {pos}", pos)
            if header == ZERO_BLOCK:
                return None
            if not _checksum_ok(header):
                raise TarFormatError(_first_error(pos), f"invalid tar header at byte {pos}", pos)
            typeflag = header[156:157]
            try:
                size = int(pax["size"]) if "size" in pax else _number(header[124:136])
            except ValueError:
                size = -1
            if size < 0:
                raise TarFormatError(_first_error(pos), f"invalid size field in the tar header at byte {pos}", pos)
            raw_name = _cstring(header[0:100])
            if header[257:265] == _POSIX_MAGIC and header[345] != 0:
                raw_name = _cstring(header[345:500]) + b"/" + raw_name
            name = pax.get("path") or long_name or _decode_name(raw_name)
            self.name = name
            data_offset = pos + BLOCK
            padded = size + (-size) % BLOCK
            self.pos = data_offset + padded

            if typeflag in (_GNU_LONGNAME, _GNU_LONGLINK, _PAX_LOCAL, _PAX_GLOBAL):
                self.name = None  # the member these records describe is not known yet
                if size > MAX_RECORD_BYTES:
                    raise TarFormatError(
                        _first_error(pos), f"long-name or pax record of {size} bytes at byte {pos} is over the limit", pos
                    )
                data = _consume(self.stream, size, padded, pos, None, self.total_size, keep=True)
                if typeflag == _GNU_LONGNAME:
                    long_name = _decode_name(_cstring(data))
                elif typeflag == _PAX_LOCAL:
                    try:
                        pax = _pax_records(data)
                    except ValueError as exc:
                        raise TarFormatError(_first_error(pos), f"malformed pax header at byte {pos}: {exc}", pos) from exc
                continue

            kind = _KINDS.get(typeflag, SPECIAL)
            member = TarMember(name=name, kind=kind, offset=data_offset, size=size if kind == FILE else 0)
            wanted = kind == FILE and self.want_data(name)
            if wanted and self.max_data_bytes is not None and size > self.max_data_bytes:
                wanted, member.too_large = False, True
            if wanted:
                member.data = _consume(self.stream, size, padded, pos, name, self.total_size, keep=True)
            elif self.total_size is not None:
                # skipped without reading: the stream's length says whether the data is all there
                if pos + BLOCK + size > self.total_size:
                    raise _truncated(pos, name)
                if padded:
                    self.stream.seek(self.pos)
            else:
                _consume(self.stream, size, padded, pos, name, None, keep=False)
            return member


def _first_error(pos: int) -> str:
    return "not_a_tar" if pos == 0 else "truncated_member"


def _decode_name(raw: bytes) -> str:
    # Names that are not UTF-8 keep their bytes as surrogates; the sample layer rejects them.
    return raw.decode("utf-8", "surrogateescape")


def _truncated(header_pos: int, name: str | None) -> TarFormatError:
    return TarFormatError(
        "truncated_member", f"shard ends inside the data of the member whose header is at byte {header_pos}", header_pos, name
    )


def _consume(
    stream: BinaryIO, size: int, padded: int, header_pos: int, name: str | None, total_size: int | None, *, keep: bool
) -> bytes:
    """Read a member's data and padding; return the data when ``keep``, else drop it as it comes.

    A header can claim any size, so a size past the stream's end is refused before reading and
    large members are read in pieces. A missing tail of padding is tolerated, missing data is not.
    """
    if total_size is not None and header_pos + BLOCK + size > total_size:
        raise _truncated(header_pos, name)
    if padded <= _READ_CHUNK:
        data = stream.read(padded)
        got = len(data)
    else:
        pieces, got = [], 0
        while got < padded:
            piece = stream.read(min(padded - got, _READ_CHUNK))
            if not piece:
                break
            got += len(piece)
            if keep:
                pieces.append(piece)
        data = b"".join(pieces)
    if got < size:
        raise _truncated(header_pos, name)
    return data[:size] if keep else b""


# ---------------------------------------------------------------------------------------
# Writing


def _octal(value: int, width: int) -> bytes:
    digits = width - 1
    if value < 8**digits:
        return b"%0*o\0" % (digits, value)
    # GNU base-256 for sizes of 8 GiB and more
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _raw_header(name: bytes, size: int, typeflag: bytes, prefix: bytes = b"") -> bytes:
    header = bytearray(BLOCK)
    header[0 : len(name)] = name
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(0, 12)
    header[148:156] = b" " * 8
    header[156:157] = typeflag
    header[257:265] = _POSIX_MAGIC
    header[345 : 345 + len(prefix)] = prefix
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


_BLANK = _raw_header(b"", 0, b"0")
_BLANK_SUM = sum(_BLANK[:148]) + 8 * ord(" ") + sum(_BLANK[156:])  # with the checksum field as spaces


def member_header(name: str, size: int) -> bytes:
    """The header block(s) for a regular file ``name`` of ``size`` bytes."""
    encoded = name.encode("utf-8")
    if len(encoded) <= 100 and size < 8**11:
        return _raw_header(encoded, size, b"0")
    split = encoded.rfind(b"/", 0, 156)
    if 0 < split and len(encoded) - split - 1 <= 100:
        return _raw_header(encoded[split + 1 :], size, b"0", prefix=encoded[:split])
    long_name = encoded + b"\0"
    return (
        _raw_header(b"././@LongLink", len(long_name), _GNU_LONGNAME)
        + long_name
        + padding(len(long_name))
        + _raw_header(encoded[:100], size, b"0")
    )


def member_headers(names: list[str], sizes: list[int]) -> list[bytes]:
    """:func:`member_header` for many members at once: the usual short names and sizes are
    patched into copies of the blank header with numpy, the rest built one by one."""
    encoded = [name.encode("utf-8") for name in names]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    size_values = np.asarray(sizes, dtype=np.int64)
    short = (lengths <= 100) & (size_values < 8**11)
    rows = np.flatnonzero(short)
    headers = np.tile(np.frombuffer(_BLANK, dtype=np.uint8), (len(rows), 1))
    name_bytes = np.frombuffer(b"".join([encoded[i] for i in rows.tolist()]), dtype=np.uint8)
    row_lengths = lengths[rows]
    starts = np.cumsum(row_lengths) - row_lengths
    owner = np.repeat(np.arange(len(rows)), row_lengths)
    headers[owner, np.arange(len(name_bytes)) - starts[owner]] = name_bytes
    digits = (size_values[rows, None] >> (3 * np.arange(10, -1, -1))) & 7
    headers[:, 124:135] = ord("0") + digits
    # the checksum is the byte sum with its own field as spaces: the blank's, plus the name, plus the size digits
    name_sums = np.concatenate([[0], np.cumsum(name_bytes, dtype=np.int64)])
    checksums = _BLANK_SUM + (name_sums[starts + row_lengths] - name_sums[starts]) + digits.sum(axis=1)
    headers[:, 148:154] = ord("0") + ((checksums[:, None] >> (3 * np.arange(5, -1, -1))) & 7)
    # bytes, not memoryviews: bytes are not tracked by the garbage collector, and thousands of
    # memoryviews alive at once made the reshard pay for full collections (measured: 0.5-0.7 per run)
    blocks = headers.tobytes()
    patched = [blocks[start : start + BLOCK] for start in range(0, len(blocks), BLOCK)]
    if len(rows) == len(encoded):
        return patched
    result: list[bytes] = [b""] * len(encoded)
    for member, header in zip(rows.tolist(), patched):
        result[member] = header
    for member in np.flatnonzero(~short).tolist():
        result[member] = member_header(names[member], int(size_values[member]))
    return result


_PADDING = tuple(bytes(n) for n in range(BLOCK))


def padding(size: int) -> bytes:
    """The zeros that round a member of ``size`` bytes up to whole blocks (a shared object: no allocation)."""
    return _PADDING[-size % BLOCK]


def open_shard_stream(fileobj: BinaryIO, url: str) -> BinaryIO:
    """Wrap a raw shard file so reads see the tar stream (gunzip ``.tar.gz``/``.tgz``)."""
    return gzip.GzipFile(fileobj=fileobj, mode="rb") if is_compressed_shard(url) else fileobj


def is_compressed_shard(url: str) -> bool:
    return url.endswith((".tar.gz", ".tgz"))


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress a ``.gz`` member, refusing output over ``limit`` bytes (gzip bombs); ValueError
    when the data is not a complete gzip stream."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:  # not gzip data at all, or corrupt
        raise ValueError(str(exc)) from None
    if len(out) > limit:
        raise ValueError(f"decompresses to more than {limit} bytes")
    if not inflater.eof:
        raise ValueError("incomplete gzip stream")
    return out
