"""The compiled loops (io/_fastio.c) give what their Python twins give: the header walk accepts
exactly the tars the Python walk accepts and finds the same headers in them (tests/test_tarindex.py
runs the whole fast path with each), and the range reader fills a buffer with the same bytes."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcurate.io import ranges, tarindex

from conftest import write_tar

pytestmark = pytest.mark.skipif(tarindex._fastio is None, reason="imgcurate was installed without its C extension")


def _same_scan(data: bytes) -> None:
    """The C walk over the bytes in memory and over a file holding them (read through its small
    window) answers as the Python walk does."""
    python = tarindex._scan_headers_python(data)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        from_file = tarindex._scanned(tarindex._fastio.scan_file(f.fileno(), len(data)))
    for compiled in (tarindex.scan_headers(data), from_file):
        assert (compiled is None) == (python is None)
        if compiled is not None:
            for got, expected in zip(compiled, python):
                assert np.array_equal(got, expected)


@pytest.fixture(scope="module")
def small_tar(tmp_path_factory) -> bytes:
    members = [("a.jpg", b"1" * 700), ("a.txt", b"one"), ("b.jpg", b"2"), ("b.json", b"{}"), ("c.jpg", b""), ("c.txt", b"three")]
    return write_tar(tmp_path_factory.mktemp("tar") / "00000.tar", members).read_bytes()


_FIELDS = [(0, 100), (124, 12), (148, 8), (156, 1), (257, 8), (345, 1)]  # name, size, checksum, type, magic, prefix


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(_FIELDS), st.binary(min_size=1, max_size=12),
                          st.booleans()), max_size=3),
       st.one_of(st.none(), st.integers(0, 512 * 12)))
def test_the_compiled_scan_agrees_with_the_python_scan(small_tar, edits, cut):
    """Header fields overwritten (with the checksum fixed afterwards or not), the file cut anywhere:
    both scanners accept the same tars and find the same headers, or both hand the tar on."""
    data = bytearray(small_tar)
    headers = [0, 1536, 2560, 3584, 4608, 5120]
    for member, (offset, width), value, fix_checksum in edits:
        at = headers[member] + offset
        data[at : at + min(width, len(value))] = value[:width]
        if fix_checksum:
            data[headers[member] + 148 : headers[member] + 156] = b" " * 8
            data[headers[member] + 148 : headers[member] + 155] = b"%06o\0" % sum(data[headers[member] : headers[member] + 512])
    _same_scan(bytes(data if cut is None else data[:cut]))


@pytest.mark.parametrize("size_field", [b"        3\0\0\0", b" \0       3\0\0", b"3\0 7       \0", b"00000000003 ", b"3           ",
                                        b"0o000000003\0", b"-0000000003\0", b"\x80" + bytes(10) + b"\x03", b"77777777777\0"])
def test_the_compiled_scan_reads_odd_size_fields_as_the_python_scan(tmp_path, size_field):
    data = bytearray(write_tar(tmp_path / "00000.tar", [("a.jpg", b"123"), ("a.txt", b"one")]).read_bytes())
    data[124:136] = size_field
    data[148:156] = b" " * 8
    data[148:155] = b"%06o\0" % sum(data[:512])
    _same_scan(bytes(data))


@pytest.fixture(scope="module")
def source_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ranges") / "source.bin"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 600_000, dtype=np.uint8).tobytes())
    return path


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 700_000), st.integers(0, 70_000)), max_size=40), st.booleans(),
       st.sampled_from([0, 1000, 256 * 2**10]))
def test_the_compiled_range_reader_agrees_with_the_python_one(source_file, pieces, ascending, max_gap):
    """Ranges back to back, apart, overlapping, out of order, past the end of the file."""
    path = source_file
    if ascending:
        pieces = sorted(pieces)
    offsets = np.array([offset for offset, _ in pieces], dtype=np.int64)
    sizes = np.array([size for _, size in pieces], dtype=np.int64)
    places = np.zeros(len(pieces), dtype=np.int64)
    np.cumsum(sizes[:-1], out=places[1:])
    results = []
    with open(path, "rb") as f:
        for read in (tarindex._fastio.read_ranges_into, ranges._read_ranges_into_python):
            destination = bytearray(int(sizes.sum()))
            results.append((read(f.fileno(), offsets, sizes, places, destination, max_gap), destination))
    (compiled, compiled_bytes), (python, python_bytes) = results
    assert compiled == python
    if compiled:
        data = path.read_bytes()
        assert compiled_bytes == python_bytes == b"".join(data[o : o + s] for o, s in pieces)


def test_the_compiled_range_reader_refuses_places_outside_its_destination(tmp_path):
    path = tmp_path / "source.bin"
    path.write_bytes(b"x" * 100)
    with open(path, "rb") as f, pytest.raises(ValueError, match="outside"):
        tarindex._fastio.read_ranges_into(f.fileno(), np.array([0]), np.array([10]), np.array([95]), bytearray(100), 0)


def test_a_file_shorter_than_the_size_given_is_not_plain(tmp_path):
    data = write_tar(tmp_path / "whole.tar", [("a.jpg", b"1" * 700), ("a.txt", b"one")]).read_bytes()
    path = tmp_path / "cut.tar"
    path.write_bytes(data[:1536 + 300])  # ends inside the caption's header
    with open(path, "rb") as f:
        assert tarindex._fastio.scan_file(f.fileno(), len(data)) is None


def test_the_compiled_name_split_takes_the_usual_names():
    fields = np.zeros((3, 100), dtype=np.uint8)
    for i, name in enumerate([b"000001.jpg", b"dir/Sub.d/K-1.SEG.PNG", b"a..b.json"]):
        fields[i, : len(name)] = np.frombuffer(name, dtype=np.uint8)
    keys, exts = tarindex.split_names(fields)
    assert keys.to_pylist() == ["000001", "dir/Sub.d/K-1", "a"] and exts.to_pylist() == ["jpg", "seg.png", ".b.json"]
