"""The plain-shard fast path (io/tarindex.py) gives exactly what the member-by-member scanner gives.

Every test reads the same shard both ways: ``read_partition_table`` (fast path when the shard is
plain) and ``read_shard_samples`` + ``shard_table`` (the scanner), and compares the tables.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import build_photo_dataset, write_tar
from imgcurate.io.reader import ShardTask, read_partition_table, read_plain_shard, read_shard_samples
from imgcurate.io.jsontext import parse_json
from imgcurate.io.schema import shard_table
from imgcurate.io.tarindex import _octal_fields, index_plain_tar

pytestmark = pytest.mark.usefixtures("reader_loops")  # every test runs with the compiled loops and the Python ones


def both_ways(path: Path, with_images: bool):
    task = ShardTask(str(path), with_images, None, None, "report")
    fast, fast_layout = read_partition_table(task, None)
    samples, failures = read_shard_samples(task)
    slow, slow_layout = shard_table(samples, failures, str(path), with_images=with_images)
    return fast, slow, fast_layout, slow_layout


def assert_same(path: Path) -> None:
    for with_images in (True, False):
        fast, slow, fast_layout, slow_layout = both_ways(path, with_images)
        assert fast_layout == slow_layout
        assert fast.equals(slow), (path, with_images)


def is_plain(path: Path) -> bool:
    return read_plain_shard(ShardTask(str(path), True, None, None, "report")) is not None


def test_real_photo_shards_take_the_fast_path_and_match(tmp_path, photos):
    build_photo_dataset(tmp_path, photos, sidecar=False)
    shards = sorted(tmp_path.glob("*.tar"))
    for shard in shards:
        assert is_plain(shard)
        assert_same(shard)
    fast, _, _, _ = both_ways(shards[0], True)
    jpeg = photos[0].read_bytes()
    assert fast.column("image")[0].as_py() == jpeg  # the original bytes, gathered from the file
    assert fast.column("_image_offset")[0].as_py() == jpeg_offset(shards[0], "000000.jpg")


def jpeg_offset(shard: Path, name: str) -> int:
    with tarfile.open(shard) as tar:
        return tar.getmember(name).offset_data


def test_webdataset_testdata_matches(wds_testdata):
    shard = wds_testdata / "compressed.tar"
    assert_same(shard)


@pytest.mark.parametrize("members", [
    [("a.jpg", b"x" * 10), ("a.txt", b"\xff\xfe not utf-8"), ("b.jpg", b"y"), ("b.json", b"{not json"),
     ("c.jpg", b"z"), ("c.cls", b"seven"), ("d.json", b"[1, 2]")],  # decode failures, in member order
    [("a.txt", b"no image"), ("b.jpg", b"1"), ("b.png", b"2"), ("b.seg.png", b"3"), ("b.txt", b"two images")],
    [("s/01.json", b'{"n": 1, "big": 18446744073709551616}'), ("s/01.jpg", b"1"),
     ("s/02.json", b'{"n": 2.5, "big": 3}'), ("s/02.jpg", b"2"), ("s/03.jpg", b"")],  # values that do not fit their column
    [("a.JPG", b"1"), ("a.Txt", b"upper case extensions")],
    # .json documents that would read as valid if they ran into each other: each must fail on its own
    [("a.jpg", b"1"), ("a.json", b'{"a": [1'), ("b.jpg", b"2"), ("b.json", b'2]}'), ("c.jpg", b"3"), ("c.json", b'{"x": 1},{"y": 2}')],
    [("a.jpg", b"1"), ("a.json", b'{\n "w": 1,\n "h": [2,\n 3]\n}'), ("b.jpg", b"2"), ("b.json", b'{"w": 4, "h": [5, 6]}'),
     ("c.jpg", b"3"), ("c.json", b"")],  # a document over several lines, an empty one
    # .json fields named like reader columns: a key that agrees and one that does not, a caption
    # that fills a missing .txt and one that disagrees with it
    [("a.jpg", b"1"), ("a.txt", b"cap"), ("a.json", b'{"key": "a", "caption": "other", "w": 1}'),
     ("b.jpg", b"2"), ("b.json", b'{"key": "not b", "caption": "from json", "w": 2}')],
    [],
])
def test_plain_shards_match(tmp_path, members):
    shard = write_tar(tmp_path / "00000.tar", members)
    assert is_plain(shard)
    assert_same(shard)


@pytest.mark.parametrize("text", [
    b"plain", "caf\u00e9 \u2603 \U0001F600".encode(), b"", b"nul\0inside", "\ufeffbom".encode(), "\uffff\ufffe".encode(),
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xc0\x80", b"\xe0\x80\x80",  # overlong forms
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xe2\x82", b"\x80", b"\xff",  # cut short, a lone continuation byte, a byte UTF-8 never uses
])
def test_captions_decode_as_python_decodes_them(tmp_path, text):
    """The fast path checks a shard's captions with Arrow; a caption Python would not decode must
    fail there too (and then be reported as the scanner reports it)."""
    shard = write_tar(tmp_path / "00000.tar", [("a.jpg", b"1"), ("a.txt", b"ok"), ("b.jpg", b"2"), ("b.txt", text)])
    assert_same(shard)
    try:
        expected = text.decode("utf-8")
    except UnicodeDecodeError:
        expected = None
    caption = both_ways(shard, True)[0].column("caption")[1].as_py()
    assert caption == expected


@pytest.mark.parametrize("names", [
    ["d.x/a.jpg", "d.x/a.txt", "d.x/b.Tar.GZIP"],  # dots in a directory name, an extension with a dot
    ["a..b.jpg", "a..b.txt", "c.d..e.jpg"],  # two dots inside a name are not a ".." component
    ["dir/.hidden.jpg", "dir/.hidden.txt", "x.jpg"],  # a last component starting with a dot: the regex decides
    ["deep/er/path/K-1_2+3.JPEG", "deep/er/path/K-1_2+3.TXT"],
])
def test_names_split_as_the_scanner_splits_them(tmp_path, names):
    shard = write_tar(tmp_path / "00000.tar", [(name, str(i).encode()) for i, name in enumerate(names)])
    assert is_plain(shard)
    assert_same(shard)


def unplain(path: Path, kind: str) -> Path:
    """A shard the fast path must hand to the scanner."""
    ordinary = [("a.jpg", b"1"), ("a.txt", b"one"), ("b.jpg", b"2"), ("b.txt", b"two")]
    if kind == "directory":
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            tar.addfile(_dir("d"))
            for name, data in ordinary:
                _add(tar, f"d/{name}", data)
        return path
    if kind == "long_name":
        return write_tar(path, [("x" * 120 + ".jpg", b"1")] + ordinary, fmt=tarfile.GNU_FORMAT)
    if kind == "pax":
        return write_tar(path, [("café.jpg", b"1")] + ordinary, fmt=tarfile.PAX_FORMAT)
    if kind == "dot_slash":
        return write_tar(path, [(f"./{n}", d) for n, d in ordinary])
    if kind == "dot_dot":
        return write_tar(path, [("../a.jpg", b"1")] + ordinary)
    if kind == "repeated_extension":
        return write_tar(path, [("a.jpg", b"1"), ("a.jpg", b"2"), ("a.txt", b"t")])
    if kind == "gzip_member":
        import gzip

        return write_tar(path, [("a.jpg", b"1"), ("a.txt.gz", gzip.compress(b"zipped caption"))])
    if kind == "no_extension":
        return write_tar(path, ordinary + [("README", b"x")])
    if kind == "symlink":
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in ordinary:
                _add(tar, name, data)
            link = tarfile.TarInfo("c.jpg")
            link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
            tar.addfile(link)
        return path
    data = write_tar(path, ordinary).read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: 512 * 3 + 100])
    elif kind == "bad_checksum":
        path.write_bytes(data[:148] + b"0000000\0" + data[156:])
    elif kind == "no_end_blocks_cut_header":
        path.write_bytes(data[: 512 * 4 + 200])
    return path


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["directory", "long_name", "pax", "dot_slash", "dot_dot", "repeated_extension",
                                  "gzip_member", "no_extension", "symlink", "truncated", "bad_checksum",
                                  "no_end_blocks_cut_header"])
def test_shards_that_are_not_plain_go_to_the_scanner(tmp_path, kind):
    shard = unplain(tmp_path / "00000.tar", kind)
    assert index_plain_tar(shard.read_bytes()) is None
    assert not is_plain(shard)
    assert_same(shard)  # and the reader still gives the scanner's answer


def test_tar_without_end_of_archive_blocks_is_plain(tmp_path):
    shard = write_tar(tmp_path / "00000.tar", [("a.jpg", b"1" * 700), ("a.txt", b"one")])
    data = shard.read_bytes()
    end = 512 * 2 + 1024 + 512 + 512  # two headers, 700 bytes padded to 1024, caption padded to 512
    shard.write_bytes(data[:end])
    assert is_plain(shard)
    assert_same(shard)


names = st.sampled_from(["a", "b", "c", "dir/a", "dir/b"])
extensions = st.sampled_from(["jpg", "png", "txt", "json", "cls", "npy"])
payloads = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"3", b"caption", json.dumps({"w": 1, "h": 2}).encode(), b'{"w": "wide"}', b"{bad"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(names, extensions, payloads), max_size=12))
def test_random_shards_read_the_same_both_ways(tmp_path, members):
    shard = write_tar(tmp_path / "00000.tar", [(f"{key}.{ext}", data) for key, ext, data in members])
    assert_same(shard)


def test_a_tar_stored_in_a_tar_is_read_the_same(tmp_path):
    # the inner archive's headers carry the ustar mark inside a member's data, on block boundaries
    inner = write_tar(tmp_path / "inner.tar", [("x.jpg", b"1" * 700), ("x.txt", b"inner")]).read_bytes()
    shard = write_tar(tmp_path / "00000.tar", [("a.jpg", b"2"), ("a.tar", inner), ("b.jpg", b"3"), ("b.txt", b"outer")])
    assert is_plain(shard)  # the header walk steps over member data, so the inner headers are never seen
    assert_same(shard)
    fast, _, _, _ = both_ways(shard, True)
    assert fast.column("key").to_pylist() == ["a", "b"] and fast.column("tar")[0].as_py() == inner


@pytest.mark.parametrize("size_field, plain", [
    (b"        3\0\0\0", True),  # right-aligned with leading spaces, as some tar writers do
    (b"0o000000003\0", False), (b"0000_000003\0", False), (b"-0000000003\0", False),  # int() reads these; tar does not write them
])
def test_odd_size_fields_are_read_as_the_scanner_reads_them(tmp_path, size_field, plain):
    data = bytearray(write_tar(tmp_path / "00000.tar", [("a.jpg", b"123"), ("a.txt", b"one")]).read_bytes())
    data[124:136] = size_field
    data[148:156] = b" " * 8
    data[148:155] = b"%06o\0" % sum(data[:512])
    shard = tmp_path / "00000.tar"
    shard.write_bytes(bytes(data))
    assert (index_plain_tar(bytes(data)) is not None) == plain
    assert_same(shard)


def test_old_tar_without_the_ustar_mark_goes_to_the_scanner(tmp_path):
    data = bytearray(write_tar(tmp_path / "00000.tar", [("a.jpg", b"1"), ("a.txt", b"one")]).read_bytes())
    for header in (0, 1024):  # each member: a header block, one data block
        data[header + 257 : header + 265] = bytes(8)
        data[header + 148 : header + 156] = b" " * 8
        data[header + 148 : header + 155] = b"%06o\0" % sum(data[header : header + 512])
    shard = tmp_path / "00000.tar"
    shard.write_bytes(bytes(data))
    assert index_plain_tar(bytes(data)) is None
    assert_same(shard)
    assert both_ways(shard, False)[0].column("caption").to_pylist() == ["one"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(json_values, st.booleans())
def test_json_members_parse_as_the_standard_library_parses_them(value, ascii_only):
    text = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    assert repr(parse_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", [b'{"n": NaN, "i": Infinity}', b'{"f": 1e400}', b'{"s": "\\ud800"}', b"\xef\xbb\xbf{}",
                                  b'{"big": -9223372036854775809}', b'{"a": 1, "a": 2}', b" [1, 2] \n"])
def test_json_the_fast_parser_refuses_still_parses_as_before(text):
    assert repr(parse_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", [b"{bad", b"", b'{"a": 1} x', b"\xff"])
def test_invalid_json_still_raises_a_value_error(text):
    with pytest.raises(ValueError):
        parse_json(text)


def _octal_reference(field: bytes) -> int | None:
    """What the fast path reads: padding, one run of octal digits, padding (anything else goes to the scanner)."""
    if any(b not in b"01234567 \0" for b in field):
        return None
    digits = field.strip(b" \0")
    return int(digits, 8) if digits and all(48 <= b <= 55 for b in digits) else None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.integers(0, 8**11 - 1).map(lambda n: f"{n:011o}".encode() + b"\0"),  # what tarfile writes
    st.integers(0, 8**6).map(lambda n: f"{n:o}".encode().rjust(8, b" ").ljust(12, b"\0")),
    st.binary(min_size=12, max_size=12),
    st.text("0127 \0x", min_size=12, max_size=12).map(str.encode),
), min_size=1, max_size=20))
def test_octal_fields_read_every_row_or_refuse_the_shard(fields):
    expected = [_octal_reference(f) for f in fields]
    got = _octal_fields(np.frombuffer(b"".join(fields), dtype=np.uint8).reshape(len(fields), 12))
    if any(value is None for value in expected):
        assert got is None
    else:
        assert got is not None and got.tolist() == expected
