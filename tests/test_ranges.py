"""ShardSink and read_ranges: byte ranges of local files land in the output exactly, however they are batched."""

from __future__ import annotations

import errno
import os
import random
import sys

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from imgcurate.io.ranges import RangeSource, ShardSink, read_ranges


@pytest.fixture
def sources(tmp_path):
    rng = random.Random(7)
    files = {}
    for name, size in (("a.bin", 12 * 2**20), ("b.bin", 2**20)):
        path = tmp_path / name
        path.write_bytes(rng.randbytes(size))
        files[name] = path
    return files


def plan(sources) -> list[tuple[str, int, int] | bytes]:
    """Ranges and plain writes, mixing every way ranges can sit next to each other."""
    a, b = str(sources["a.bin"]), str(sources["b.bin"])
    steps: list[tuple[str, int, int] | bytes] = [
        (a, 0, 100), (a, 100, 50),            # back to back
        b"written between",
        (a, 1000, 2000), (a, 3500, 1),        # small gaps: one read
        (a, 600_000, 10),                     # a gap wider than the scratch area
        (b, 5, 7), (a, 4000, 3),              # another file, then back
        (a, 20, 30),                          # backwards
        (a, 2**20, 9 * 2**20),                # larger than the sink's buffer
        (b, 0, 0),                            # empty
        b"w" * (2**20 + 5),                   # written bytes larger than the buffer
        (a, 77, 5),
    ]
    steps += [(b, 10 * i, 5) for i in range(1500)]  # more ranges than one preadv call takes
    steps += [(a, 1000 * i, 1000) for i in range(9000)]  # more bytes than the buffer holds: several flushes
    return steps


def expected_bytes(steps) -> bytes:
    out = bytearray()
    for step in steps:
        if isinstance(step, bytes):
            out += step
        else:
            url, offset, size = step
            with open(url, "rb") as f:
                f.seek(offset)
                out += f.read(size)
    return bytes(out)


def run(steps, url: str) -> int:
    with RangeSource() as source:
        sink = ShardSink(url)
        try:
            for step in steps:
                if isinstance(step, bytes):
                    sink.write(step)
                else:
                    sink.copy_range(source, *step)
        finally:
            sink.close()
    return sink.size


def test_ranges_land_exactly_on_a_local_sink(tmp_path, sources):
    steps = plan(sources)
    out = tmp_path / "out.bin"
    size = run(steps, str(out))
    expected = expected_bytes(steps)
    assert size == len(expected)
    assert out.read_bytes() == expected


def test_ranges_land_exactly_on_a_remote_sink(sources):
    steps = plan(sources)[:40]
    run(steps, "memory://sink/out.bin")
    with fsspec.open("memory://sink/out.bin", "rb") as f:
        assert f.read() == expected_bytes(steps)


def test_a_source_that_shrank_is_an_error_naming_it(tmp_path, sources):
    path = sources["b.bin"]
    out = tmp_path / "out.bin"
    with RangeSource() as source:
        sink = ShardSink(str(out))
        sink.copy_range(source, str(path), 0, 100)
        sink.copy_range(source, str(path), 900_000, 1000)
        os.truncate(path, 500_000)  # after the ranges were queued, before they are read
        with pytest.raises(OSError) as err:
            sink.close()
    assert err.value.errno == errno.EIO
    assert str(path) in str(err.value) and "901000" in str(err.value)


@pytest.mark.parametrize("expected_size", [0, 10, 4096, 2**20])
def test_reserved_space_never_outlives_what_was_written(tmp_path, sources, expected_size):
    out = tmp_path / "out.tar"
    sink = ShardSink(str(out), expected_size=expected_size)
    if sys.platform.startswith("linux"):  # reserved at once (tmp_path is on a filesystem with fallocate)
        assert out.stat().st_size == expected_size
    sink.write(b"header")
    with RangeSource() as source:
        sink.copy_range(source, str(sources["b.bin"]), 100, 4000)
        sink.close()
    assert out.read_bytes() == b"header" + sources["b.bin"].read_bytes()[100:4100]


def test_read_ranges_fills_one_array_with_nulls_where_asked(sources):
    data = sources["a.bin"].read_bytes()
    # back to back, a small gap, a gap wider than the scratch area, an empty range, nulls at either end
    starts = np.array([0, 0, 100, 4000, 900_000, 900_010, 12 * 2**20 - 5, 0])
    lengths = np.array([7, 100, 50, 1, 10, 0, 5, 3])
    valid = np.array([False, True, True, True, True, True, True, False])
    with open(sources["a.bin"], "rb") as f:
        got = read_ranges(f.fileno(), starts, lengths, valid)
    expected = [data[s : s + n] if ok else None for s, n, ok in zip(starts.tolist(), lengths.tolist(), valid.tolist())]
    assert got.type == pa.binary() and got.to_pylist() == expected


def test_read_ranges_past_the_end_of_the_file_gives_none(sources):
    with open(sources["b.bin"], "rb") as f:
        assert read_ranges(f.fileno(), np.array([0, 2**20 - 10]), np.array([10, 11]), np.array([True, True])) is None
