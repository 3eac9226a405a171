"""The WebDataset member rules have one specification (imgcurate/io/rules.py); the fast path's name
split, in C and in Python, is held to it on random and hostile names, name by name and shard by shard.

The rules themselves are held to the webdataset library's own key rule in tests/test_fuzz.py.
"""

from __future__ import annotations

import tarfile

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from webdataset.tariterators import base_plus_ext

from conftest import write_tar
from imgcurate.io import rules, tarindex
from imgcurate.io.reader import ShardTask, read_partition_table, read_plain_shard, read_shard_samples
from imgcurate.io.schema import shard_table

RULES = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# plain characters, and hostile ones: spaces, backslashes, colons, non-ASCII, NUL, and uppercase extensions
parts = st.text(st.sampled_from(list("aZ9_-+,=@%~") + [" ", "\\", ":", "é", "鍵", "\0", "A"]), min_size=0, max_size=6)
components = st.one_of(parts, st.sampled_from([".", "..", "", ".hidden", "x.y", "a..b"]))


@st.composite
def hostile_names(draw) -> str:
    path = "/".join(draw(st.lists(components, min_size=0, max_size=3)))
    base = draw(st.one_of(parts, st.sampled_from(["", ".", ".dot", "a.", "k"])))
    ext = draw(st.sampled_from(["", ".jpg", ".JPG", ".seg.png", ".txt.gz", ".", "..json", ".tar.gz"]))
    prefix = draw(st.sampled_from(["", "", "", "./", "/", "././"]))
    return prefix + (path + "/" if path else "") + base + ext


def name_fields(names: list[str]) -> np.ndarray:
    """The headers' 100-byte, NUL-padded name fields of ``names`` (cut at 100 bytes, as a header cuts them)."""
    fields = np.zeros((len(names), tarindex.NAME_FIELD), dtype=np.uint8)
    for i, name in enumerate(names):
        encoded = name.encode("utf-8", "surrogateescape")[: tarindex.NAME_FIELD]
        fields[i, : len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    return fields


def field_names(fields: np.ndarray) -> list[str]:
    return [row.tobytes().split(b"\0", 1)[0].decode("utf-8", "surrogateescape") for row in fields]


def by_rules(names: list[str]) -> tuple[list[str], list[str]] | None:
    """The split the rules give, when every name is plain and has an extension; else None."""
    if not all(rules.is_plain_name(name) for name in names):
        return None
    split = [rules.split_key(name) for name in names]
    if None in split:
        return None
    return [key for key, _ in split], [ext for _, ext in split]


def splits_at_first_dot_of_last_component(name: str) -> bool:
    last = name.rsplit("/", 1)[-1]
    return "." in last and not last.startswith(".")


@RULES
@given(st.lists(hostile_names(), min_size=1, max_size=6))
@example(["a/../b.jpg"]).via("a .. component")
@example(["../a.jpg", "./b.jpg"]).via("a parent or current directory")
@example(["a/..b.JPG", "..c.Txt", "d/.e.f", "g.", "h/i"]).via("dots and slashes that are plain or need the regular expression")
@example(["dir/Sub.d/K-1.SEG.PNG", "a..b.json", "000001.jpg"]).via("the usual names")
def test_the_fast_name_split_is_the_rules_split(names):
    fields = name_fields(names)
    expected = by_rules(field_names(fields))
    python = tarindex._split_by_rules(fields)
    assert (None if python is None else (python[0].to_pylist(), python[1].to_pylist())) == expected
    if tarindex._fastio is not None:
        compiled = tarindex._fastio.split_names(fields)
        if compiled is not None:  # where C splits, it splits as the rules do
            keys, exts = tarindex.split_names(fields)
            assert (keys.to_pylist(), exts.to_pylist()) == expected
        elif expected is not None:  # and it hands on only names the rules must decide
            assert not all(splits_at_first_dot_of_last_component(name) for name in field_names(fields))
    split = tarindex.split_names(fields)
    assert (None if split is None else (split[0].to_pylist(), split[1].to_pylist())) == expected


@RULES
@given(hostile_names())
def test_the_key_rule_is_webdatasets(name):
    """split_key is the webdataset library's own rule (its extension lower-cased)."""
    theirs = base_plus_ext(name)
    ours = rules.split_key(name)
    assert ours == (None if theirs == (None, None) else (theirs[0], theirs[1].lower()))


def test_plain_names_need_no_normalisation():
    for name in ["a.jpg", "dir/x.y/k-1.SEG.png", "a..b.txt", "x/.hidden.txt"]:
        assert rules.is_plain_name(name) and rules.normalize_member_name(name) == name
    for name in ["./a.jpg", "../a.jpg", "a/../b.jpg", "a b.jpg", "é.jpg", "/a.jpg", "", "a\0.jpg"]:
        assert not rules.is_plain_name(name)


@RULES
@given(st.lists(st.tuples(hostile_names(), st.binary(max_size=20)), min_size=1, max_size=8))
def test_hostile_shards_read_the_same_by_the_fast_path_and_the_scanner(tmp_path_factory, reader_loops, members):
    """Whatever the names, a shard reads the same whether the fast path takes it or hands it to the scanner."""
    path = tmp_path_factory.mktemp("rules") / "00000.tar"
    try:
        write_tar(path, [(name, data) for name, data in members], fmt=tarfile.GNU_FORMAT)
    except (UnicodeEncodeError, ValueError):
        return  # tarfile cannot write such a name at all
    task = ShardTask(str(path), True, None, None, "report")
    samples, failures = read_shard_samples(task)
    scanned, _ = shard_table(samples, failures, str(path), with_images=True)
    read, _ = read_partition_table(task, None)
    assert read.equals(scanned)
    if read_plain_shard(task) is not None:  # the fast path took it: every name was plain by the rules
        assert all(rules.is_plain_name(name) for name, _ in members)
