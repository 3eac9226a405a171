"""Hostile input and faults: nothing lost, nothing escapes, every failure explained.

One corpus of bad shards, built here with Python's ``tarfile`` and raw bytes around the real
photos, goes through ``imgcurate reshard`` and ``imgcurate curate`` as a user would run them.
The tests check that every good sample comes out with its bytes unchanged, that every rejected
shard, member and sample is listed with its reason, that nothing is written outside the output
directory or read through a link, that inputs are never modified, and what happens to output
directories left by interrupted or failed runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import stat
import struct
import tarfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from imgcurate.app.cli import main
from imgcurate.common.errors import Failure
from imgcurate.io.rules import normalize_member_name
from imgcurate.io.samples import iter_samples
from imgcurate.io.tar import TarFormatError, iter_tar
from imgcurate.io.outputdir import MARKER, TMP_DIR
from imgcurate.io.reader import read_webdataset
from imgcurate.ops.decode import DecodeFailure, Preprocess, decode_image, validate_image

from conftest import png_bytes, write_tar

THREADS = ["--scheduler", "threads", "--no-progress"]
PASSWD = Path("/etc/passwd")


# -- hostile bytes ------------------------------------------------------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG (valid CRCs) whose IHDR claims ``width`` x ``height`` RGB pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG with its frame header (SOFn) patched to claim ``width`` x ``height`` pixels."""
    data = bytearray(jpeg)
    pos = 2
    while data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        pos += 2 + length
    raise ValueError("no frame header found")


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def cut_inside(tar_bytes: bytes, member: str) -> bytes:
    """The tar cut short in the middle of ``member``'s data (a half-copied file)."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        info = tar.getmember(member)
    return tar_bytes[: info.offset_data + info.size // 2]


def gzip_cut_inside(tar_bytes: bytes, member: str) -> bytes:
    """``tar_bytes`` gzipped, cut at the shortest length whose stream reaches the middle of ``member``."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        info = tar.getmember(member)
    wanted = info.offset_data + info.size // 2
    compressed = gzip.compress(tar_bytes, mtime=0)
    low, high = 0, len(compressed)
    while low < high:  # binary search on the cut: decompressed length grows with it
        middle = (low + high) // 2
        if len(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(compressed[:middle])) >= wanted:
            high = middle
        else:
            low = middle + 1
    return compressed[:low]


@dataclass
class Corpus:
    directory: Path
    secret: bytes  # the content of a file outside the corpus that link members point at
    kept: list[dict] = field(default_factory=list)  # samples expected in the output, in order
    failures: Counter = field(default_factory=Counter)  # (shard file, member, reason) → count
    bad_images: dict[str, str] = field(default_factory=dict)  # key → reason when images are decoded

    def expect(self, key: str, image: tuple[str, bytes] | None = None, caption: str | None = None) -> None:
        self.kept.append({"key": key, "image": image, "caption": caption})

    def fail(self, shard: str, member: str | None, reason: str) -> None:
        self.failures[(shard, member, reason)] += 1


def build_corpus(root: Path, photos: list[Path]) -> Corpus:
    """The hostile shards in ``root / "in"``; a secret file beside them that no output may contain."""
    good = [p.read_bytes() for p in photos]
    noise = np.random.default_rng(7).bytes(3000)
    secret_file = root / "secret.txt"
    secret = b"secret-" + hashlib.sha256(b"imgcurate hostile corpus").hexdigest().encode()
    secret_file.write_bytes(secret)
    corpus = Corpus(root / "in", secret)
    corpus.directory.mkdir()

    # 00000.tar: a bit of everything that can go wrong with members and images
    with tarfile.open(corpus.directory / "00000.tar", "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for name, data in (("g0.jpg", good[0]), ("g0.txt", b"a good photo"), ("g0.json", b'{"n": 0}')):
            add_member(tar, name, data)
        corpus.expect("g0", ("jpg", good[0]), "a good photo")
        bad_images = {
            "corrupt": ("jpg", good[1][:200] + b"\0" * 500 + good[1][700:], "decode_error"),
            "trunc": ("jpg", good[2][: len(good[2]) // 2], "decode_error"),
            "empty": ("jpg", b"", "decode_error"),
            "random": ("jpg", noise, "decode_error"),
            "bomb": ("png", png_claiming(40_000, 40_000), "image_too_large"),  # 1.6 gigapixels in 74 bytes
        }
        for key, (ext, data, reason) in bad_images.items():
            add_member(tar, f"{key}.{ext}", data)
            corpus.expect(key, (ext, data))
            corpus.bad_images[key] = reason
        add_member(tar, "somedir/", kind=tarfile.DIRTYPE)  # directories are ignored, not failures
        for name in ("../escape.jpg", "/abs/path.jpg", "bad\udcffname.jpg"):
            add_member(tar, name, good[3])
        corpus.fail("00000.tar", "../escape.jpg", "unsafe_member_name")
        corpus.fail("00000.tar", "/abs/path.jpg", "unsafe_member_name")
        corpus.fail("00000.tar", "bad\\xffname.jpg", "unsafe_member_name")
        for name, kind, target in (("sym.jpg", tarfile.SYMTYPE, str(PASSWD)), ("secret.jpg", tarfile.SYMTYPE, str(secret_file)),
                                   ("hard.jpg", tarfile.LNKTYPE, "g0.jpg"), ("hard2.jpg", tarfile.LNKTYPE, str(secret_file))):
            add_member(tar, name, kind=kind, link=target)
            corpus.fail("00000.tar", name, "link_member")
        for name, kind in (("dev.jpg", tarfile.CHRTYPE), ("blk.jpg", tarfile.BLKTYPE), ("fifo.jpg", tarfile.FIFOTYPE)):
            add_member(tar, name, kind=kind)
            corpus.fail("00000.tar", name, "special_member")
        add_member(tar, "badcap.jpg", good[4])
        add_member(tar, "badcap.txt", b"\xff\xfe not UTF-8 \x80")
        corpus.expect("badcap", ("jpg", good[4]))
        corpus.fail("00000.tar", "badcap.txt", "invalid_caption")
        add_member(tar, "badjson.jpg", good[5])
        add_member(tar, "badjson.json", b"{not json")
        corpus.expect("badjson", ("jpg", good[5]))
        corpus.fail("00000.tar", "badjson.json", "invalid_json")
        add_member(tar, "caponly.txt", b"a caption without an image")
        corpus.expect("caponly", None, "a caption without an image")
        corpus.bad_images["caponly"] = "no_image"  # only a stage that needs the pixels rejects it
        nocap = png_bytes(good[6])
        add_member(tar, "nocap.png", nocap)
        corpus.expect("nocap", ("png", nocap))
        for name, data in (("dup.jpg", good[7]), ("g1.jpg", good[8]), ("dup.jpg", good[9])):  # "dup" twice, apart
            add_member(tar, name, data)
            corpus.expect(name.split(".")[0], ("jpg", data))

    (corpus.directory / "00001.tar").write_bytes(b"this is not a tar archive\n" * 100)
    corpus.fail("00001.tar", None, "not_a_tar")
    (corpus.directory / "00002.tar").write_bytes(b"")  # a copy that never started
    corpus.fail("00002.tar", None, "not_a_tar")
    (corpus.directory / "00003.tar").write_bytes(b"\0" * 1024)  # a valid empty tar: no samples, no failure

    # 00004.tar: "dup" again (another shard), then cut inside the image that starts sample t1
    members = [("dup.jpg", good[10]), ("t0.jpg", good[11]), ("t0.txt", b"t0"), ("t1.jpg", good[12]), ("t1.txt", b"t1")]
    tar_bytes = write_tar(root / "whole-4.tar", members).read_bytes()
    (corpus.directory / "00004.tar").write_bytes(cut_inside(tar_bytes, "t1.jpg"))
    corpus.expect("dup", ("jpg", good[10]))
    corpus.expect("t0", ("jpg", good[11]), "t0")
    corpus.fail("00004.tar", "t1.jpg", "truncated_member")

    # 00005.tar (pax): cut inside the caption of u1, whose image is complete: the sample is lost
    members = [("u0.jpg", good[13]), ("u0.txt", b"u0"), ("u1.jpg", good[14]), ("u1.txt", b"u" * 3000)]
    tar_bytes = write_tar(root / "whole-5.tar", members, tarfile.PAX_FORMAT).read_bytes()
    (corpus.directory / "00005.tar").write_bytes(cut_inside(tar_bytes, "u1.txt"))
    corpus.expect("u0", ("jpg", good[13]), "u0")
    corpus.fail("00005.tar", "u1.txt", "truncated_sample")
    corpus.fail("00005.tar", "u1.txt", "truncated_member")

    # 00006.tar.gz: a compressed shard that breaks off inside v2.jpg
    members = [(f"v{i}.{ext}", data) for i in range(4) for ext, data in (("jpg", good[15 + i]), ("txt", f"v{i}".encode()))]
    tar_bytes = write_tar(root / "whole-6.tar", members).read_bytes()
    (corpus.directory / "00006.tar.gz").write_bytes(gzip_cut_inside(tar_bytes, "v2.jpg"))
    for i in range(2):
        corpus.expect(f"v{i}", ("jpg", good[15 + i]), f"v{i}")
    corpus.fail("00006.tar.gz", "v2.jpg", "truncated_member")
    for whole in root.glob("whole-*.tar"):
        whole.unlink()
    return corpus


@pytest.fixture
def corpus(tmp_path, photos) -> Corpus:
    return build_corpus(tmp_path, photos)


# -- reading outputs back -------------------------------------------------------------------------

def snapshot(root: Path, outside_of: Path) -> dict[str, tuple]:
    """Every path under ``root`` except ``outside_of``: files with size, mtime and hash, links with their target."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path == outside_of or outside_of in path.parents:
            continue
        info = path.lstat()
        if path.is_symlink():
            state[str(path.relative_to(root))] = ("link", str(path.readlink()))
        elif stat.S_ISREG(info.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[str(path.relative_to(root))] = ("file", info.st_size, info.st_mtime_ns, digest)
        else:  # a directory's mtime changes whenever an entry comes or goes: its entries are listed instead
            state[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode),)
    return state


def output_samples(out: Path, manifest: dict) -> list[dict]:
    """The output samples in order (read with the webdataset library), keys mapped back through the renames."""
    renames = {(r["shard"], r["written_as"]): r["key"] for r in manifest["renamed_keys"]}
    samples = []
    for shard in sorted(out.glob("*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False):
            sample["key"] = renames.get((shard.name, sample["__key__"]), sample["__key__"])
            samples.append(sample)
    return samples


def assert_kept_exactly(out: Path, expected: list[dict]) -> dict:
    manifest = json.loads((out / "_manifest.json").read_text())
    samples = output_samples(out, manifest)
    assert [s["key"] for s in samples] == [e["key"] for e in expected]
    for sample, want in zip(samples, expected):
        if want["image"] is not None:
            ext, data = want["image"]
            assert sample[ext] == data, want["key"]  # the original bytes, not re-encoded
        assert sample.get("txt", b"").decode() == (want["caption"] or "")
    return manifest


def assert_output_tars_are_safe(out: Path, secret: bytes) -> None:
    """Only regular members with safe names; no byte of a link target anywhere in the output."""
    forbidden = [secret] + ([PASSWD.read_bytes().split(b"\n")[0]] if PASSWD.is_file() else [])
    for tar_path in out.rglob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for info in tar.getmembers():
                assert info.isreg(), info.name
                assert normalize_member_name(info.name) == info.name, info.name
        raw = tar_path.read_bytes()
        assert not any(text in raw for text in forbidden)
    for table_path in out.rglob("*.parquet"):
        if table_path.is_file():
            values = repr(pq.read_table(table_path).to_pylist()).encode()
            assert not any(text in values for text in forbidden)


def failure_rows(out: Path) -> Counter:
    failures = pd.read_parquet(out / "_failures")
    return Counter(
        (Path(shard).name, None if pd.isna(member) else member, reason)
        for shard, member, reason in zip(failures.source_shard, failures.error_member, failures.error)
    )


def summary_line(stdout: str) -> Counter:
    """The CLI's one-line failure summary: "failures: reason n, reason n (details: …)"."""
    [line] = [line for line in stdout.splitlines() if line.startswith("failures: ")]
    listed = line[len("failures: ") : line.index(" (details:")]
    return Counter({reason: int(n) for reason, n in (item.rsplit(" ", 1) for item in listed.split(", "))})


def by_reason(failures: Counter) -> Counter:
    counts = Counter()
    for (_, _, reason), n in failures.items():
        counts[reason] += n
    return counts


# -- reshard --------------------------------------------------------------------------------------

def test_reshard_keeps_every_good_sample_and_explains_every_failure(corpus, tmp_path, capsys):
    before = snapshot(tmp_path, outside_of=tmp_path / "out")
    code = main(["reshard", str(corpus.directory), "-o", str(tmp_path / "out"), "--images-per-tar", "7", *THREADS])
    stdout = capsys.readouterr().out
    assert code == 0

    # without --validate-images the bad images are copied as they are: reshard does not decode
    manifest = assert_kept_exactly(tmp_path / "out", corpus.kept)
    assert failure_rows(tmp_path / "out") == corpus.failures
    counts = manifest["counts"]
    reasons = by_reason(corpus.failures)
    assert counts["failed_by_reason"] == {"truncated_sample": 1}
    assert counts["rejected_members_by_reason"] == {r: n for r, n in reasons.items() if r not in ("truncated_sample", "not_a_tar")}
    assert counts["rejected_shards_by_reason"] == {"not_a_tar": 2}
    # read is counted from the input shards, not worked out from the output: the identity can fail
    assert counts["read_counted_from"] == "input shards" and counts["removed"] == 0
    assert counts["read"] == counts["written"] + counts["failed"] == len(corpus.kept) + 1
    assert summary_line(stdout) == reasons
    # "dup" came three times into the second output shard; every copy is kept under its own name
    assert [(r["key"], r["written_as"]) for r in manifest["renamed_keys"]] == [("dup", "dup_1"), ("dup", "dup_2")]

    assert_output_tars_are_safe(tmp_path / "out", corpus.secret)
    # nothing written outside the output directory, no input touched (contents and mtimes)
    assert snapshot(tmp_path, outside_of=tmp_path / "out") == before


def test_validate_images_lists_bad_images_instead_of_copying_them(corpus, tmp_path, capsys):
    code = main(["reshard", str(corpus.directory), "-o", str(tmp_path / "out"), "--validate-images", *THREADS])
    assert code == 0
    decode_failures = {k: r for k, r in corpus.bad_images.items() if r != "no_image"}  # a caption-only sample is fine here
    assert_kept_exactly(tmp_path / "out", [s for s in corpus.kept if s["key"] not in decode_failures])
    expected = corpus.failures + Counter(
        ("00000.tar", f"{key}.{ext}", decode_failures[key])
        for key, ext in ((s["key"], s["image"][0]) for s in corpus.kept if s["key"] in decode_failures)
    )
    assert failure_rows(tmp_path / "out") == expected
    assert summary_line(capsys.readouterr().out) == by_reason(expected)

    # export checks only what its predicate keeps
    code = main(["export", str(corpus.directory), "-o", str(tmp_path / "exported"), "--where", "key LIKE 'g%'",
                 "--validate-images", *THREADS])
    assert code == 0
    assert_kept_exactly(tmp_path / "exported", [s for s in corpus.kept if s["key"].startswith("g")])
    assert not any(reason in ("decode_error", "image_too_large") for _, _, reason in failure_rows(tmp_path / "exported"))


def test_strict_stops_with_one_line_and_leaves_no_output(corpus, tmp_path, capsys):
    before = snapshot(tmp_path, outside_of=tmp_path / "out")
    code = main(["reshard", str(corpus.directory), "-o", str(tmp_path / "out"), "--strict", *THREADS])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err and err.startswith("imgcurate reshard: error: ")
    assert err.split(": ")[2] in {reason for _, _, reason in corpus.failures}
    assert snapshot(tmp_path, outside_of=tmp_path / "out") == before
    assert not list((tmp_path / "out").glob("*.tar")) and not (tmp_path / "out" / "_manifest.json").exists()
    # what the failed run left does not stand in the way of the next one
    assert main(["reshard", str(corpus.directory), "-o", str(tmp_path / "out"), *THREADS]) == 0
    assert_kept_exactly(tmp_path / "out", corpus.kept)


def test_strict_validation_stops_at_the_first_bad_image(corpus, tmp_path, capsys):
    shard = write_tar(tmp_path / "one.tar", [("a.jpg", corpus.kept[0]["image"][1]), ("b.jpg", b"GIF89a not really")])
    code = main(["reshard", str(shard), "-o", str(tmp_path / "out"), "--strict", "--validate-images", *THREADS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("imgcurate reshard: error: decode_error:") and "'b.jpg'" in err
    assert not (tmp_path / "out").exists()


# -- curate ---------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*score_threshold:UserWarning")  # thresholds that keep everything, on purpose
def test_curate_with_the_tiny_model_keeps_every_decodable_sample(corpus, tmp_path, capsys):
    before = snapshot(tmp_path, outside_of=tmp_path / "out")
    code = main(["curate", str(corpus.directory), "-o", str(tmp_path / "out"), "--model", "imgcurate-tiny-vit",
                 "--pretrained", "random", "--aesthetic-weights", "random", "--nsfw-weights", "random",
                 # random heads: thresholds that keep everything, so only failures remove samples
                 "--aesthetic-threshold=-1e9", "--nsfw-threshold", "1.5", "--images-per-tar", "5", *THREADS])
    stdout = capsys.readouterr().out
    assert code == 0
    manifest = assert_kept_exactly(tmp_path / "out", [s for s in corpus.kept if s["key"] not in corpus.bad_images])
    expected = corpus.failures + Counter(
        ("00000.tar", f"{s['key']}.{s['image'][0]}" if s["image"] else None, corpus.bad_images[s["key"]])
        for s in corpus.kept if s["key"] in corpus.bad_images
    )
    assert failure_rows(tmp_path / "out") == expected
    assert summary_line(stdout) == by_reason(expected)
    assert manifest["counts"]["failed_by_reason"] == {"decode_error": 4, "image_too_large": 1, "no_image": 1,
                                                      "truncated_sample": 1}
    assert_output_tars_are_safe(tmp_path / "out", corpus.secret)
    assert snapshot(tmp_path, outside_of=tmp_path / "out") == before


def test_curate_strict_stops_at_the_first_image_that_does_not_decode(photos, tmp_path, capsys):
    shard = write_tar(tmp_path / "one.tar", [("a.jpg", photos[0].read_bytes()), ("b.jpg", b"\xff\xd8\xff not a JPEG")])
    code = main(["curate", str(shard), "-o", str(tmp_path / "out"), "--model", "imgcurate-tiny-vit", "--pretrained", "random",
                 "--aesthetic-weights", "random", "--nsfw-weights", "random", "--strict", *THREADS])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith("imgcurate curate: error: decode_error:") and "'b.jpg'" in err
    assert not (tmp_path / "out").exists()


# -- decompression bombs --------------------------------------------------------------------------

@pytest.mark.parametrize("claim", ["png-1.6-gigapixels", "png-100-megapixels", "jpeg-4.3-gigapixels"])
def test_bombs_are_refused_from_the_header_quickly(photos, claim):
    data = {"png-1.6-gigapixels": lambda: png_claiming(40_000, 40_000),
            "png-100-megapixels": lambda: png_claiming(10_000, 10_000),  # over the limit, under Pillow's own error
            "jpeg-4.3-gigapixels": lambda: jpeg_claiming(photos[0].read_bytes(), 65_500, 65_500)}[claim]()
    assert len(data) < 100_000
    for check in (validate_image, lambda d: decode_image(d, Preprocess(size=64))):
        started = time.perf_counter()
        with pytest.raises(DecodeFailure) as refused:
            check(data)
        assert time.perf_counter() - started < 2.0
        assert refused.value.reason == "image_too_large"


def test_validate_image_accepts_real_photos_and_rejects_damaged_ones(photos):
    for photo in photos[:5]:
        validate_image(photo.read_bytes())
        validate_image(png_bytes(photo.read_bytes()))
    data = photos[0].read_bytes()
    for damaged in (data[: len(data) // 2], data[:-200], b"", b"\xff\xd8\xff" + bytes(500)):
        with pytest.raises(DecodeFailure) as refused:
            validate_image(damaged)
        assert refused.value.reason == "decode_error"


# -- headers that lie -----------------------------------------------------------------------------

def patched_header(tar_bytes: bytes, member_index: int, field: slice, value: bytes) -> bytes:
    """``tar_bytes`` with one field of a member's header replaced and its checksum made valid again."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        offset = tar.getmembers()[member_index].offset
    data = bytearray(tar_bytes)
    header = bytearray(data[offset : offset + 512])
    header[field] = value.ljust(field.stop - field.start, b"\0")
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    data[offset : offset + 512] = header
    return bytes(data)


SIZE = slice(124, 136)


@pytest.mark.parametrize("size_field, reason", [
    (bytes([0x80]) + (2**40).to_bytes(11, "big"), "truncated_member"),  # a terabyte, in GNU base-256
    (bytes([0xFF]) * 12, "truncated_member"),  # base-256 for -1
    (b"not octal!", "truncated_member"),
])
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("with_images", [False, True])
def test_lying_size_fields_end_the_shard_cleanly(tmp_path, photos, size_field, reason, compressed, with_images):
    members = [("a.jpg", photos[0].read_bytes()), ("a.txt", b"kept"), ("b.txt", b"lies about its size"),
               ("c.jpg", photos[1].read_bytes())]
    raw = patched_header(write_tar(tmp_path / "t.tar", members).read_bytes(), 2, SIZE, size_field)
    stream = io.BytesIO(gzip.compress(raw) if compressed else raw)
    if compressed:
        stream = gzip.GzipFile(fileobj=stream)
    started = time.perf_counter()
    items = list(itertools.islice(
        iter_samples(stream, "t.tar", with_images=with_images, total_size=None if compressed else len(raw)), 10))
    assert time.perf_counter() - started < 2.0
    samples = [item for item in items if not isinstance(item, Failure)]
    failures = [item for item in items if isinstance(item, Failure)]
    assert [s.key for s in samples] == ["a"] and samples[0].components["txt"].data == b"kept"
    assert [f.reason for f in failures] == [reason]


def test_malformed_pax_and_oversized_name_records_raise_only_tar_format_errors(tmp_path):
    pax = write_tar(tmp_path / "p.tar", [("ü" * 10 + ".txt", b"x")], tarfile.PAX_FORMAT).read_bytes()
    assert pax[512:515] == b"33 "  # the pax record, right after its header
    broken = bytearray(pax)
    broken[512:514] = b"99"  # a record length running past the record's data
    gnu = write_tar(tmp_path / "g.tar", [("n" * 200 + ".txt", b"x")], tarfile.GNU_FORMAT).read_bytes()
    huge_name = patched_header(gnu, 0, SIZE, b"%011o" % (2**30))  # the ././@LongLink record claims 1 GiB
    for data in (bytes(broken), huge_name):
        with pytest.raises(TarFormatError):
            list(iter_tar(io.BytesIO(data), total_size=len(data)))


def test_members_over_the_memory_limit_are_reported_and_skipped(tmp_path):
    members = [("big.txt", bytes(20 * 2**20)), ("small.txt", b"fine"), ("after.txt", b"still read")]
    compressed = gzip.compress(write_tar(tmp_path / "t.tar", members).read_bytes())  # 20 MiB of zeros: ~20 KiB
    items = list(iter_samples(gzip.GzipFile(fileobj=io.BytesIO(compressed)), "t.tar.gz", max_member_bytes=2**20))
    assert [(item.reason, item.member) for item in items if isinstance(item, Failure)] == [("member_too_large", "big.txt")]
    assert [(s.key, s.components["txt"].data) for s in items if not isinstance(s, Failure)] == [
        ("small", b"fine"), ("after", b"still read")]


# -- output directories left behind ---------------------------------------------------------------

def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "_manifest.json"}


@pytest.mark.parametrize("marked", [True, False])
def test_interrupted_output_is_replaced_and_said_so(corpus, tmp_path, caplog, marked):
    assert main(["reshard", str(corpus.directory), "-o", str(tmp_path / "clean"), "--images-per-tar", "4", *THREADS]) == 0
    out = tmp_path / "out"
    # what a killed run leaves: the marker, half-staged files, a half-written shard, a shard of an earlier run;
    # staging without the marker is what tasks still running after a failed run's clean-up can leave
    (out / TMP_DIR / "kept").mkdir(parents=True)
    (out / TMP_DIR / "kept" / "p000003.arrow").write_bytes(b"ARROW1 half")
    if marked:
        (out / MARKER).write_text("{}")
    (out / "00001.tar").write_bytes(b"partial")
    (out / "00042.tar").write_bytes(b"from an earlier, bigger run")
    with caplog.at_level("WARNING", logger="imgcurate"):
        assert main(["reshard", str(corpus.directory), "-o", str(out), "--images-per-tar", "4", *THREADS]) == 0
    assert any("interrupted run" in record.getMessage() for record in caplog.records)
    assert digest(out) == digest(tmp_path / "clean")
    assert json.loads((out / "_manifest.json").read_text())["replaced"] == "interrupted run"


def test_directories_that_are_not_replaced_say_why(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reshard", str(corpus.directory), "-o", str(out), *THREADS]) == 0
    capsys.readouterr()
    # a finished output needs --overwrite; the message says so, and how interrupted runs are treated
    assert main(["reshard", str(corpus.directory), "-o", str(out), *THREADS]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and MARKER in err

    # an interrupted run's directory that also holds someone's file is never cleared
    (out / MARKER).write_text("{}")
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path, outside_of=tmp_path / "nowhere")
    for extra in ([], ["--overwrite"]):
        assert main(["reshard", str(corpus.directory), "-o", str(out), *extra, *THREADS]) == 2
        err = capsys.readouterr().err
        assert "notes.txt" in err and "interrupted" in err and err.count("\n") == 1
    assert snapshot(tmp_path, outside_of=tmp_path / "nowhere") == before


def test_a_failed_run_leaves_the_earlier_output_as_it_was(corpus, tmp_path):
    out = tmp_path / "out"
    assert main(["reshard", str(corpus.directory), "-o", str(out), "--images-per-tar", "3", *THREADS]) == 0
    before = snapshot(tmp_path, outside_of=tmp_path / "nowhere")
    assert main(["reshard", str(corpus.directory), "-o", str(out), "--overwrite", "--strict", *THREADS]) == 2
    assert snapshot(tmp_path, outside_of=tmp_path / "nowhere") == before  # no marker, no staging, shards intact


def test_absolute_names_in_an_otherwise_plain_shard_are_rejected(tmp_path):
    """A shard of regular files with ASCII names, some of them absolute: the fast path must not take
    it as plain (it once did, and kept key "/a"); the absolute members are unsafe_member_name."""
    shard = write_tar(tmp_path / "00000.tar", [("/a.jpg", b"x"), ("/a.txt", b"cap"), ("b.jpg", b"y"), ("b.txt", b"ok")])
    df = read_webdataset(str(shard), with_images=False).compute()
    assert df.key.dropna().tolist() == ["b"]
    assert sorted(df.error_member.dropna()) == ["/a.jpg", "/a.txt"] and set(df.error.dropna()) == {"unsafe_member_name"}


def test_a_gz_member_that_is_not_gzip_is_reported_not_raised(tmp_path):
    shard = write_tar(tmp_path / "00000.tar", [("k.jpg", b"x"), ("k.txt.gz", b"\0\0 not gzip")])
    df = read_webdataset(str(shard)).compute()
    assert df.error.dropna().tolist() == ["invalid_gzip"] and df.error_member.dropna().tolist() == ["k.txt.gz"]
    assert df.key.dropna().tolist() == ["k", "k"]  # the sample, and its rejected member's row
