"""The tar scanner and header writer against Python's tarfile, on real and edge-case archives."""

from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcurate.io.tar import (
    DIRECTORY, FILE, HARDLINK, SPECIAL, SYMLINK, TarFormatError, iter_tar, member_header, member_headers, padding,
    END_OF_ARCHIVE,
)

from conftest import write_tar


def scan(data: bytes, **kwargs):
    return list(iter_tar(io.BytesIO(data), **kwargs))


def test_members_match_tarfile_on_real_photos(tmp_path, photos):
    members = [(f"dir/{p.stem}.jpg", p.read_bytes()) for p in photos[:10]]
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = write_tar(tmp_path / f"t{fmt}.tar", members, fmt)
        ours = scan(path.read_bytes())
        with tarfile.open(path) as tar:
            theirs = tar.getmembers()
            assert [m.name for m in ours] == [t.name for t in theirs]
            assert [m.offset for m in ours] == [t.offset_data for t in theirs]
            assert [m.data for m in ours] == [tar.extractfile(t).read() for t in theirs]


def test_long_names_in_gnu_and_pax_and_ustar_prefix(tmp_path):
    long_dir = "a" * 120 + "/" + "b" * 60
    names = [f"{long_dir}/key.jpg", "x" * 150 + ".txt", "ünïcode/ключ.json"]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = write_tar(tmp_path / f"long{fmt}.tar", [(n, n.encode()) for n in names], fmt)
        ours = scan(path.read_bytes())
        assert [m.name for m in ours] == names
        assert [m.data for m in ours] == [n.encode() for n in names]


def test_skipped_data_is_never_read(tmp_path, photos):
    data = photos[0].read_bytes()
    path = write_tar(tmp_path / "t.tar", [("k.jpg", data), ("k.txt", b"caption")])

    class CountingFile(io.BytesIO):
        bytes_read = 0

        def read(self, n=-1):
            out = super().read(n)
            CountingFile.bytes_read += len(out)
            return out

    raw = path.read_bytes()
    members = list(iter_tar(CountingFile(raw), want_data=lambda name: not name.endswith(".jpg"), total_size=len(raw)))
    assert members[0].data is None and members[0].size == len(data)
    assert members[1].data == b"caption"
    assert CountingFile.bytes_read < len(data)  # headers and the caption only
    assert raw[members[0].offset : members[0].offset + members[0].size] == data


def test_kinds_of_members(tmp_path):
    path = tmp_path / "kinds.tar"
    with tarfile.open(path, "w") as tar:
        for name, kind in (("d", tarfile.DIRTYPE), ("s.jpg", tarfile.SYMTYPE), ("h.jpg", tarfile.LNKTYPE),
                           ("f.jpg", tarfile.FIFOTYPE), ("c.jpg", tarfile.CHRTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "target" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(info)
        info = tarfile.TarInfo("r.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    kinds = [(m.name, m.kind) for m in scan(path.read_bytes())]
    assert kinds == [("d/", DIRECTORY), ("s.jpg", SYMLINK), ("h.jpg", HARDLINK), ("f.jpg", SPECIAL),
                     ("c.jpg", SPECIAL), ("r.txt", FILE)]


@pytest.mark.parametrize("cut", [100, 512 + 10, 1024 + 700])
def test_truncation_is_reported_where_it_happens(tmp_path, cut):
    path = write_tar(tmp_path / "t.tar", [("a.txt", b"x" * 600), ("b.txt", b"y" * 600)])
    data = path.read_bytes()[:cut]
    with pytest.raises(TarFormatError) as err:
        scan(data, total_size=len(data))
    assert err.value.reason == ("not_a_tar" if cut < 512 else "truncated_member")


def test_truncation_detected_without_reading_skipped_data(tmp_path):
    path = write_tar(tmp_path / "t.tar", [("a.jpg", b"x" * 5000)])
    data = path.read_bytes()[:3000]
    with pytest.raises(TarFormatError) as err:
        scan(data, want_data=lambda name: False, total_size=len(data))
    assert err.value.member == "a.jpg"


def test_not_a_tar_and_empty_tar(tmp_path):
    with pytest.raises(TarFormatError) as err:
        scan(b"this is not a tar file" * 100)
    assert err.value.reason == "not_a_tar"
    assert scan(b"") == []
    empty = write_tar(tmp_path / "empty.tar", [])
    assert scan(empty.read_bytes()) == []


def test_broken_gzip_stream_is_a_truncation(tmp_path):
    random = np.random.default_rng(0)
    payloads = [random.bytes(20000), random.bytes(20000)]  # incompressible, so half the stream is half the tar
    path = write_tar(tmp_path / "t.tar", [("a.bin", payloads[0]), ("b.bin", payloads[1])])
    compressed = gzip.compress(path.read_bytes())
    stream = gzip.GzipFile(fileobj=io.BytesIO(compressed[: len(compressed) * 3 // 4]))
    seen = []
    with pytest.raises(TarFormatError) as err:
        for member in iter_tar(stream):
            seen.append(member)
    assert err.value.reason == "truncated_member"
    assert [m.data for m in seen] == payloads[:1]


@pytest.mark.parametrize("name", ["k.jpg", "d" * 99 + ".x", "dir/" * 30 + "key.jpg", "z" * 300 + ".txt", "ünï/ключ.txt"])
def test_written_headers_are_read_by_tarfile_without_pax(tmp_path, name):
    payload = b"payload-bytes"
    blob = member_header(name, len(payload)) + payload + padding(len(payload)) + END_OF_ARCHIVE
    assert b"PaxHeader" not in blob and b"path=" not in blob
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        (info,) = tar.getmembers()
        assert info.name == name and info.size == len(payload) and info.mtime == 0 and info.uid == 0
        assert info.type == tarfile.REGTYPE and not info.pax_headers
        assert tar.extractfile(info).read() == payload


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="ab/._-é€", min_size=1, max_size=130),
                          st.one_of(st.integers(0, 1030), st.integers(0, 8**12))), max_size=30))
def test_headers_built_at_once_are_the_ones_built_one_by_one(members):
    names, sizes = [name for name, _ in members], [size for _, size in members]
    assert [bytes(h) for h in member_headers(names, sizes)] == [member_header(n, s) for n, s in members]


def test_headers_and_padding_are_objects_the_garbage_collector_does_not_track():
    # a shard has thousands of members: objects the collector tracks, alive all at once, made
    # resharding pay for full collections (tens of milliseconds each, more with torch imported)
    import gc

    headers = member_headers([f"{i:06d}.{ext}" for i in range(500) for ext in ("jpg", "txt", "json")], [700, 5, 90] * 500)
    assert all(type(h) is bytes and not gc.is_tracked(h) for h in headers)
    assert all(type(padding(n)) is bytes and not gc.is_tracked(padding(n)) and len(padding(n)) == -n % 512 for n in range(0, 2000, 7))
