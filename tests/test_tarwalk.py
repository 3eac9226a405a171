"""The compiled header walk (io/_tarwalk.c) accepts exactly the tars the Python walk accepts, and
finds the same headers in them (tests/test_tarindex.py runs the whole fast path with each)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcurate.io import tarindex

pytestmark = pytest.mark.skipif(tarindex._tarwalk is None, reason="imgcurate was installed without its C extension")


def _same_scan(data: bytes) -> None:
    compiled, python = tarindex._scan_headers_compiled(data), tarindex._scan_headers_python(data)
    assert (compiled is None) == (python is None)
    if compiled is not None:
        for got, expected in zip(compiled, python):
            assert np.array_equal(got, expected)


_FIELDS = [(0, 100), (124, 12), (148, 8), (156, 1), (257, 8), (345, 1)]  # name, size, checksum, type, magic, prefix


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(_FIELDS), st.binary(min_size=1, max_size=12),
                          st.booleans()), max_size=3),
       st.one_of(st.none(), st.integers(0, 512 * 12)))
def test_the_compiled_scan_agrees_with_the_python_scan(edits, cut):
    """Header fields overwritten (with the checksum fixed afterwards or not), the file cut anywhere:
    both scanners accept the same tars and find the same headers, or both hand the tar on."""
    data = bytearray(write_tar_bytes([("a.jpg", b"1" * 700), ("a.txt", b"one"), ("b.jpg", b"2"), ("b.json", b"{}"),
                                      ("c.jpg", b""), ("c.txt", b"three")]))
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
def test_the_compiled_scan_reads_odd_size_fields_as_the_python_scan(size_field):
    data = bytearray(write_tar_bytes([("a.jpg", b"123"), ("a.txt", b"one")]))
    data[124:136] = size_field
    data[148:156] = b" " * 8
    data[148:155] = b"%06o\0" % sum(data[:512])
    _same_scan(bytes(data))


def write_tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
