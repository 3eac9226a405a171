"""Property-based tests of the tar scanner and the sample grouping.

Random member lists (names with dots, directories, unicode, bytes that are not UTF-8, unsafe
paths, duplicates; sizes around the 512-byte block) are written with Python's ``tarfile`` in the
ustar, GNU and pax formats, optionally cut at a random point, and read back. The expected
samples come from a reference model built on the webdataset library's own key rule; the
expected byte offsets from ``tarfile``. Damaged headers (random bytes with a valid checksum)
check that nothing but :class:`TarFormatError` leaves the scanner and nothing at all leaves the
grouping or a whole partition read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import tarfile
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from webdataset.tariterators import base_plus_ext

from imgcurate.common.errors import Failure, SampleError
from imgcurate.io.reader import ShardTask, read_partition_table
from imgcurate.io.samples import IMAGE_EXTENSIONS, Sample, iter_samples
from imgcurate.io.tar import TarFormatError, iter_tar

# reproducible (the same examples on every run) and quick: a few seconds for the whole file
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
REGULAR, SYMLINK, HARDLINK, DIRECTORY, FIFO = "regular", "symlink", "hardlink", "directory", "fifo"
TAR_TYPES = {REGULAR: tarfile.REGTYPE, SYMLINK: tarfile.SYMTYPE, HARDLINK: tarfile.LNKTYPE,
             DIRECTORY: tarfile.DIRTYPE, FIFO: tarfile.FIFOTYPE}

# -- strategies ---------------------------------------------------------------------------------

directories = st.lists(st.sampled_from(["d", "dir.x", "ü", "鍵 k", ".", "..", "l" * 120, "m" * 160]), max_size=2)
bases = st.text(alphabet="ab.Z_-ü鍵 \\", min_size=1, max_size=8) | st.sampled_from(["bad\udcffname", ".", "..", "a."])
extensions = st.sampled_from(["jpg", "JPG", "png", "txt", "json", "cls", "seg.png", "txt.gz", "TXT.GZ", "jpg.gz", ""])
prefixes = st.sampled_from(["", "", "", "./", "/", "././"])


@st.composite
def member_names(draw) -> str:
    ext = draw(extensions)
    name = draw(prefixes) + "".join(part + "/" for part in draw(directories)) + draw(bases) + (f".{ext}" if ext else "")
    return name


sizes = st.sampled_from([0, 1, 511, 512, 513, 1024, 1536]) | st.integers(0, 3000)
kinds = st.sampled_from([REGULAR] * 8 + [SYMLINK, HARDLINK, DIRECTORY, FIFO])


@st.composite
def member_lists(draw) -> list[tuple[str, str, int]]:
    """(name, kind, size) per member; names drawn from a small pool, so keys repeat, adjacent or not."""
    pool = draw(st.lists(member_names(), min_size=1, max_size=6))
    picks = draw(st.lists(st.integers(0, len(pool) - 1), min_size=0, max_size=12))
    return [(pool[i], draw(kinds), draw(sizes)) for i in picks]


# -- writing with tarfile -----------------------------------------------------------------------

def payload(index: int, size: int) -> bytes:
    """Bytes unique to each member, so a member read in the wrong place shows."""
    seed = hashlib.sha256(str(index).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def inflates(ext: str) -> bool:
    return ext.endswith(".gz") and ext[:-3] not in IMAGE_EXTENSIONS


def split(name: str) -> tuple[str, str] | None:
    key, ext = base_plus_ext(name)
    return None if key is None else (key, ext.lower())


@dataclass
class Written:
    name: str
    kind: str
    content: bytes  # what the sample should hold (inflated for .gz members)
    header_offset: int = 0  # where the member's first header block starts (long-name/pax records included)
    data_offset: int = 0
    size: int = 0  # bytes stored in the tar


def write(members: list[tuple[str, str, int]], fmt: str) -> tuple[bytes, list[Written]] | None:
    """The tar bytes and what was written, or None when the format cannot hold a name (ustar)."""
    written: list[Written] = []
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w", format=FORMATS[fmt], encoding="utf-8", errors="surrogateescape") as tar:
            for index, (name, kind, size) in enumerate(members):
                info = tarfile.TarInfo(name)
                info.type = TAR_TYPES[kind]
                content = payload(index, size) if kind == REGULAR else b""
                data = content
                parts = split(_clean(name))
                if kind == REGULAR and parts and inflates(parts[1]):
                    data = gzip.compress(content, mtime=0)
                if kind in (SYMLINK, HARDLINK):
                    info.linkname = "/etc/passwd"
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data) if kind == REGULAR else None)
                written.append(Written(name, kind, content))
    except ValueError:  # ustar: a name too long to split into prefix and name
        return None
    raw = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw), encoding="utf-8", errors="surrogateescape") as tar:
        for member, info in zip(written, tar.getmembers(), strict=True):
            member.header_offset, member.data_offset, member.size = info.offset, info.offset_data, info.size
    return raw, written


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


# -- the reference model --------------------------------------------------------------------------

def unsafe(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    name = _clean(name)
    return not name or name.startswith("/") or ".." in name.split("/")


def printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class Expected:
    samples: list[dict] = field(default_factory=list)  # key, index, image_ext, components {ext: bytes}
    failures: list[tuple[str, str | None]] = field(default_factory=list)  # (reason, member)


def expected_outcome(raw: bytes, written: list[Written], cut: int | None) -> Expected:
    """What reading ``written`` should give when the tar is cut at ``cut`` bytes (None: whole)."""
    out = Expected()
    complete = [m for m in written if cut is None or m.data_offset + m.size <= cut]
    broken = written[len(complete)] if len(complete) < len(written) else None
    current: dict | None = None
    index = 0
    for member in complete:
        if member.kind == DIRECTORY:
            continue
        if unsafe(member.name):
            out.failures.append(("unsafe_member_name", printable(member.name)))
            continue
        name = _clean(member.name)
        if member.kind != REGULAR:
            out.failures.append(("special_member" if member.kind == FIFO else "link_member", name))
            continue
        parts = split(name)
        if parts is None:
            out.failures.append(("no_extension", name))
            continue
        key, ext = parts
        ext = ext[:-3] if inflates(ext) else ext
        if current is None or current["key"] != key or ext in current["components"]:
            if current is not None:
                out.samples.append(current)
            current = {"key": key, "index": index, "image_ext": None, "components": {}}
            index += 1
        current["components"][ext] = member.content
        if current["image_ext"] is None and ext in IMAGE_EXTENSIONS:
            current["image_ext"] = ext

    ending = where_the_stream_ends(raw, broken, complete, cut)
    if ending == "clean":
        if current is not None:
            out.samples.append(current)
        return out
    if ending == "not_a_tar":
        out.failures.append(("not_a_tar", None))
        return out
    name_known = ending == "inside data"
    cut_name = _clean(broken.name) if name_known and not unsafe(broken.name) else None
    cut_parts = split(cut_name) if cut_name else None
    cut_member = cut_name or (printable(broken.name) if name_known else None)
    if current is not None:
        cut_ext = cut_parts and (cut_parts[1][:-3] if inflates(cut_parts[1]) else cut_parts[1])
        if cut_parts and cut_parts[0] == current["key"] and cut_ext not in current["components"]:
            out.failures.append(("truncated_sample", cut_member))
        else:
            out.samples.append(current)
    out.failures.append(("truncated_member", cut_member))
    return out


def where_the_stream_ends(raw: bytes, broken: Written | None, complete: list[Written], cut: int | None) -> str:
    """How a scan of ``raw[:cut]`` ends: "clean" (nothing more to read), "not_a_tar", "inside a header"
    (the name of the member being read is not known yet) or "inside data" (of ``broken``, a member
    whose name is known).

    The blocks from where the complete members end are walked as a reader would: long-name and
    pax records, then the member's own header, or the end-of-archive block when all is complete.
    """
    if cut is None:
        return "clean"
    last = complete[-1] if complete else None
    position = broken.header_offset if broken else (last.data_offset + last.size + (-last.size) % 512 if last else 0)
    while True:
        if cut <= position:  # the stream stops at a block boundary, or in padding: nothing is missing yet
            return "clean"
        if cut < position + 512:
            return "not_a_tar" if position == 0 else "inside a header"
        if broken is None:  # a whole end-of-archive block
            return "clean"
        if position + 512 == broken.data_offset:
            return "inside data"
        record_size = int(raw[position + 124 : position + 136].strip(b"\0 ") or b"0", 8)
        if cut < position + 512 + record_size:
            return "inside a header"  # inside a long-name or pax record: the name is not known yet
        position += 512 + record_size + (-record_size) % 512


def observed(items: list, stream_bytes: bytes) -> Expected:
    out = Expected()
    for item in items:
        if isinstance(item, Failure):
            out.failures.append((item.reason, item.member))
            continue
        assert isinstance(item, Sample)
        components = {}
        for ext, member in item.components.items():
            if member.data is None:  # the image, left in the shard: read it where the scanner says it is
                assert ext == item.image_ext
                components[ext] = stream_bytes[member.offset : member.offset + member.size]
            else:
                components[ext] = member.data
        out.samples.append({"key": item.key, "index": item.index, "image_ext": item.image_ext, "components": components})
    return out


# -- properties -----------------------------------------------------------------------------------

@FUZZ
@given(members=member_lists(), fmt=st.sampled_from(sorted(FORMATS)), data=st.data())
def test_scanner_matches_tarfile_and_cuts_keep_every_complete_member(members, fmt, data):
    result = write(members, fmt)
    assume(result is not None)
    raw, written = result
    cut = data.draw(st.none() | st.integers(0, len(raw)), label="cut")
    stream = raw if cut is None else raw[:cut]
    read: list = []
    try:
        for member in iter_tar(io.BytesIO(stream), total_size=len(stream) if data.draw(st.booleans()) else None):
            read.append(member)
    except TarFormatError as error:
        assert cut is not None and error.reason in ("not_a_tar", "truncated_member")
    complete = [m for m in written if cut is None or m.data_offset + m.size <= cut]
    # tarfile ends directory names with "/"
    assert [m.name for m in read] == [m.name + "/" * (m.kind == DIRECTORY and not m.name.endswith("/")) for m in complete]
    for ours, theirs in zip(read, complete):
        assert ours.offset == theirs.data_offset
        if theirs.kind == REGULAR:
            assert ours.size == theirs.size and ours.data == raw[theirs.data_offset : theirs.data_offset + theirs.size]


@FUZZ
@given(members=member_lists(), fmt=st.sampled_from(sorted(FORMATS)), with_images=st.booleans(),
       gzipped=st.booleans(), data=st.data())
def test_grouping_matches_the_reference_model_at_any_cut(members, fmt, with_images, gzipped, data):
    result = write(members, fmt)
    assume(result is not None)
    raw, written = result
    cut = data.draw(st.none() | st.integers(0, len(raw)), label="cut")
    stream_bytes = raw if cut is None else raw[:cut]
    # a gzipped stream has no known length: skipped members are read through instead of seeked over
    stream = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(stream_bytes))) if gzipped else io.BytesIO(stream_bytes)
    items = list(iter_samples(stream, "fuzz.tar", with_images=with_images,
                              total_size=None if gzipped else len(stream_bytes)))
    got, want = observed(items, stream_bytes), expected_outcome(raw, written, cut)
    assert got.samples == want.samples
    assert sorted(got.failures, key=repr) == sorted(want.failures, key=repr)


# -- damaged headers ------------------------------------------------------------------------------

HEADER_FIELDS = [slice(0, 100), slice(100, 108), slice(124, 136), slice(156, 157), slice(157, 257),
                 slice(257, 265), slice(345, 500), slice(0, 512)]


def damage(raw: bytes, block: int, where: slice, noise: bytes) -> bytes:
    """``raw`` with part of one 512-byte block replaced by ``noise``, its tar checksum made valid again."""
    data = bytearray(raw)
    start = block * 512
    header = bytearray(data[start : start + 512].ljust(512, b"\0"))
    width = where.stop - where.start
    header[where] = (noise * (width // max(1, len(noise)) + 1))[:width] if noise else bytes(width)
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    data[start : start + 512] = header
    return bytes(data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(members=member_lists(), fmt=st.sampled_from(sorted(FORMATS)), data=st.data())
def test_damaged_headers_raise_only_tar_format_errors(members, fmt, data, scratch):
    result = write(members, fmt)
    assume(result is not None)
    raw, _ = result
    for _ in range(data.draw(st.integers(1, 3), label="damages")):
        block = data.draw(st.integers(0, max(0, len(raw) // 512 - 1)), label="block")
        raw = damage(raw, block, data.draw(st.sampled_from(HEADER_FIELDS), label="field"),
                     data.draw(st.binary(max_size=24), label="noise"))
    cut = data.draw(st.none() | st.integers(0, len(raw)), label="cut")
    raw = raw if cut is None else raw[:cut]
    limit = len(raw) // 512 + 2  # every member takes at least one block: more items would mean a loop
    try:
        members_read = list(itertools.islice(iter_tar(io.BytesIO(raw), total_size=len(raw)), limit + 1))
        assert len(members_read) <= limit
    except TarFormatError:
        pass
    for with_images in (False, True):
        items = list(itertools.islice(iter_samples(io.BytesIO(raw), "x.tar", with_images=with_images,
                                                   total_size=len(raw)), 2 * limit + 1))
        assert len(items) <= 2 * limit and all(isinstance(item, (Sample, Failure)) for item in items)
    # a whole partition read: bad input becomes failure rows, or a SampleError under on_error="raise"
    shard = scratch / "shard.tar"
    shard.write_bytes(raw)
    for with_images in (False, True):
        table, _ = read_partition_table(ShardTask(str(shard), with_images, None, None, "report"), None)
        failed = table.filter(table.column("error").is_valid()).num_rows
        try:
            strict, _ = read_partition_table(ShardTask(str(shard), with_images, None, None, "raise"), None)
        except SampleError:
            assert failed > 0
        else:
            assert failed == 0 and strict.num_rows == table.num_rows
