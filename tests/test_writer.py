"""write_webdataset: exact resharding, byte-identical copies, metadata, determinism, publishing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import dask.dataframe as dd
import duckdb
import fsspec
import pandas as pd
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from imgcurate.dataframe import mark_where, where
from imgcurate.common.errors import OutputExistsError
from imgcurate.io.reader import read_webdataset
from imgcurate.io.assemble import unique_keys
from imgcurate.io.outputdir import MARKER, TMP_DIR, check_output_dir
from imgcurate.io.shardplan import plan_shards
from imgcurate.io.writer import write_webdataset

from conftest import build_photo_dataset, write_tar


def tars(directory: Path) -> list[str]:
    return sorted(str(p) for p in Path(directory).glob("*.tar"))


def read_back(directory: Path) -> list[dict]:
    return list(wds.WebDataset(tars(directory), shardshuffle=False))


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file() and p.name != "_manifest.json"}


@pytest.mark.parametrize("images_per_tar", [1, 7, 10, 11, 30, 31, 1000])
@pytest.mark.parametrize("with_images", [False, True])
def test_exact_shard_sizes_and_same_samples(tmp_path, photo_dataset, images_per_tar, with_images):
    directory, samples = photo_dataset
    out = tmp_path / "out"
    result = write_webdataset(read_webdataset(directory, with_images=with_images), out, images_per_tar=images_per_tar)
    sizes = [sum(1 for _ in wds.WebDataset(t, shardshuffle=False)) for t in tars(out)]
    expected_shards = -(-30 // images_per_tar)
    assert len(sizes) == expected_shards == result.shards
    assert sizes[:-1] == [images_per_tar] * (expected_shards - 1) and 0 < sizes[-1] <= images_per_tar
    back = read_back(out)
    assert [s["__key__"] for s in back] == [s["key"] for s in samples]
    assert [s[x["ext"]] for s, x in zip(back, samples)] == [x["image"] for x in samples]
    assert [s["txt"].decode() for s in back] == [x["caption"] for x in samples]
    docs = [json.loads(s["json"]) for s in back]
    assert [d["width"] for d in docs] == [x["json"]["width"] for x in samples]
    assert [d["info"] for d in docs] == [x["json"]["info"] for x in samples]  # nested JSON restored, not a string
    assert docs[0]["license"] == "CC-BY-SA"  # sidecar columns travel into the sample's JSON too
    index = json.loads((out / "_index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert [e["nsamples"] for e in index["shardlist"]] == sizes
    assert [e["url"] for e in index["shardlist"]] == [Path(t).name for t in tars(out)]


def test_image_bytes_held_by_the_frame_win_over_the_shard(tmp_path, photo_dataset):
    directory, samples = photo_dataset
    df = read_webdataset(directory, with_images=True)

    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[frame.index[::2], "image"] = None  # bytes dropped: the range in the source shard is used
        frame.loc[frame.index[1::4], "image"] = b"EDITED"  # bytes changed: the frame's are written
        return frame

    write_webdataset(df.map_partitions(edit, meta=df._meta), tmp_path / "out", images_per_tar=7)
    expected = []
    for frame in df.to_delayed():
        edited = edit(frame.compute())
        expected += [b"EDITED" if isinstance(image, bytes) and image == b"EDITED" else x["image"]
                     for image, x in zip(edited.image.tolist(), samples[len(expected):])]
    back = read_back(tmp_path / "out")
    assert [s[x["ext"]] for s, x in zip(back, samples)] == expected
    assert expected.count(b"EDITED") >= 5 and len(back) == len(samples)


def test_parquet_metadata_matches_tars_and_is_readable(tmp_path, photo_dataset):
    directory, samples = photo_dataset
    out = tmp_path / "out"
    write_webdataset(read_webdataset(directory), out, images_per_tar=8)
    for tar in tars(out):
        table = pq.read_table(tar.replace(".tar", ".parquet"))
        assert table.column("key").to_pylist() == [s["__key__"] for s in wds.WebDataset(tar, shardshuffle=False)]
        assert "image" not in table.column_names and "_image_offset" not in table.column_names
        assert "error" not in table.column_names
    frame = dd.read_parquet(str(out)).compute()
    assert frame.key.tolist() == [s["key"] for s in samples]
    assert pd.read_parquet(out / "00000.parquet").width.tolist() == [s["json"]["width"] for s in samples[:8]]
    [(count, max_width)] = duckdb.sql(f"SELECT count(*), max(width) FROM read_parquet('{out}/*.parquet')").fetchall()
    assert count == 30 and max_width == max(s["json"]["width"] for s in samples)


def test_keep_image_bytes_in_parquet(tmp_path, photo_dataset):
    directory, samples = photo_dataset
    out = tmp_path / "out"
    write_webdataset(read_webdataset(directory, with_images=False), out, images_per_tar=12, remove_image_data=False)
    frame = dd.read_parquet(str(out)).compute()
    assert [bytes(b) for b in frame.image] == [s["image"] for s in samples]


def test_tar_headers_are_plain_and_deterministic(tmp_path, photo_dataset):
    directory, _ = photo_dataset
    write_webdataset(read_webdataset(directory, with_images=False), tmp_path / "a", images_per_tar=9)
    write_webdataset(read_webdataset(directory, with_images=True), tmp_path / "b", images_per_tar=9)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    for tar in tars(tmp_path / "a"):
        with tarfile.open(tar) as t:
            for info in t.getmembers():
                assert not info.pax_headers and info.mtime == 0 and info.uid == 0 and info.type == tarfile.REGTYPE


def test_order_crosses_partitions_and_filters_that_empty_partitions(tmp_path, photo_dataset):
    directory, samples = photo_dataset
    df = read_webdataset(directory, with_images=False)
    kept = where(df, "source_shard NOT LIKE '%00001.tar' AND width % 2 = 0")
    result = write_webdataset(kept, tmp_path / "out", images_per_tar=4)
    expected = [s["key"] for s in samples if s["shard"] != 1 and s["json"]["width"] % 2 == 0]
    assert [s["__key__"] for s in read_back(tmp_path / "out")] == expected
    assert result.samples == len(expected)


def test_nothing_left_writes_no_shards_and_says_zero(tmp_path, photo_dataset):
    directory, _ = photo_dataset
    result = write_webdataset(where(read_webdataset(directory), "width < 0"), tmp_path / "out", images_per_tar=5)
    assert result.shards == 0 and tars(tmp_path / "out") == []
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["counts"]["written"] == 0 and manifest["shards"] == []
    assert json.loads((tmp_path / "out" / "_index.json").read_text())["shardlist"] == []


def test_marked_rows_are_counted_and_kept_aside_on_request(tmp_path, photo_dataset):
    directory, samples = photo_dataset
    df = mark_where(read_webdataset(directory), "width > height", stage="landscape-only")
    result = write_webdataset(df, tmp_path / "out", images_per_tar=5, keep_dropped=True)
    landscape = [s["key"] for s in samples if s["json"]["landscape"]]
    portrait = [s["key"] for s in samples if not s["json"]["landscape"]]
    assert [s["__key__"] for s in read_back(tmp_path / "out")] == landscape
    assert [s["__key__"] for s in read_back(tmp_path / "out" / "_dropped")] == portrait
    dropped_meta = dd.read_parquet(str(tmp_path / "out" / "_dropped")).compute()
    assert set(dropped_meta.dropped_by) == {"landscape-only"}
    counts = result.counts
    assert counts["read"] == 30 and counts["written"] == len(landscape)
    assert counts["dropped_by_stage"] == {"landscape-only": len(portrait)}
    assert counts["read"] == counts["written"] + counts["dropped"] + counts["failed"] and counts["removed"] == 0
    # the sidecar's failed downloads have no member in any shard: counted, by status
    assert counts["sidecar_only_by_status"] == {"failed_to_download": 3}


def test_rows_removed_before_the_writer_are_counted_as_removed(tmp_path, photo_dataset):
    """read is counted in the input shards: rows a mask or on_error="skip" removed show as removed."""
    directory, samples = photo_dataset
    write_tar(directory / "00003.tar", [("cut.jpg", b"\xff\xd8"), ("cut.txt", b"x" * 600)])
    (directory / "00003.tar").write_bytes((directory / "00003.tar").read_bytes()[:1100])  # cut inside cut.txt
    df = read_webdataset(directory, on_error="skip")
    result = write_webdataset(df[df.width > df.height], tmp_path / "out", images_per_tar=5)
    counts = result.counts
    landscape = sum(s["json"]["landscape"] for s in samples)
    assert counts["read"] == 31 and counts["written"] == landscape and counts["failed"] == 0
    assert counts["removed"] == 31 - landscape  # the portraits (mask) and the cut sample (skipped)
    assert result.manifest["inputs"] == [str(directory / f"{i:05d}.tar") for i in range(4)]


def test_duplicate_keys_are_renamed_deterministically_and_reported(tmp_path, photos):
    write_tar(tmp_path / "in" / "0.tar" if (tmp_path / "in").mkdir() is None else None,
              [("x.jpg", photos[0].read_bytes()), ("y.jpg", photos[1].read_bytes())])
    write_tar(tmp_path / "in" / "1.tar", [("x.jpg", photos[2].read_bytes()), ("x_1.jpg", photos[3].read_bytes())])
    result = write_webdataset(read_webdataset(tmp_path / "in"), tmp_path / "out", images_per_tar=10)
    back = read_back(tmp_path / "out")
    keys = [s["__key__"] for s in back]
    assert keys == ["x", "y", "x_2", "x_1"]  # x_1 is taken by a real key, so the copy of x becomes x_2
    assert [s["jpg"] for s in back] == [p.read_bytes() for p in photos[:4]]
    assert result.manifest["renamed_keys"] == [
        {"key": "x", "written_as": "x_2", "reason": "duplicate key in shard", "shard": "00000.tar"}]
    # in different output shards the same key needs no rename
    write_webdataset(read_webdataset(tmp_path / "in"), tmp_path / "out2", images_per_tar=2)
    assert [s["__key__"] for s in read_back(tmp_path / "out2")] == ["x", "y", "x", "x_1"]


def test_unsafe_keys_from_user_frames_are_made_safe():
    keys, renames = unique_keys(["../etc/passwd", "/abs/key", "a.b", None, "ok", "ok"])
    assert keys == ["etc/passwd", "abs/key", "a_b", "sample", "ok", "ok_1"]
    assert len(renames) == 5
    assert unique_keys(["k1", "k-2", "K_3"]) == (["k1", "k-2", "K_3"], [])
    assert unique_keys(["k1", "k2", "k1"])[0] == ["k1", "k2", "k1_1"]  # plain keys, but one repeats
    assert unique_keys(["k1", "", "k3"])[0] == ["k1", "sample", "k3"]


def test_plan_cuts_across_partitions():
    plans = plan_shards([3, 0, 5, 2], images_per_tar=4, stream="kept")
    assert [p.pieces for p in plans] == [((0, 0, 3), (2, 0, 1)), ((2, 1, 5),), ((3, 0, 2),)]


def test_existing_output_is_refused_unless_overwrite(tmp_path, photo_dataset):
    directory, _ = photo_dataset
    df = read_webdataset(directory, with_images=False)
    write_webdataset(df, tmp_path / "out", images_per_tar=10)
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_webdataset(df, tmp_path / "out", images_per_tar=10)
    write_webdataset(df, tmp_path / "out", images_per_tar=25, overwrite=True)
    assert [p.name for p in sorted((tmp_path / "out").glob("*.tar"))] == ["00000.tar", "00001.tar"]
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="did not write"):
        write_webdataset(df, tmp_path / "out", images_per_tar=10, overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_output_inside_input_is_refused_before_touching_inputs(tmp_path, photo_dataset):
    directory, _ = photo_dataset
    before = digest(directory)
    with pytest.raises(OutputExistsError):
        write_webdataset(read_webdataset(directory, with_images=False), directory, images_per_tar=10, overwrite=True)
    assert digest(directory) == before


def test_interrupted_run_is_recognised_and_replaced(tmp_path, photo_dataset):
    directory, _ = photo_dataset
    df = read_webdataset(directory, with_images=False)
    write_webdataset(df, tmp_path / "clean", images_per_tar=7)
    out = tmp_path / "out"
    # what a run killed while assembling leaves behind: the marker, staging files, no manifest
    (out / TMP_DIR / "kept").mkdir(parents=True)
    (out / TMP_DIR / "kept" / "p000000.arrow").write_bytes(b"half written")
    (out / MARKER).write_text("{}")
    (out / "00000.tar").write_bytes(b"partial")
    result = write_webdataset(df, out, images_per_tar=7)
    assert result.manifest["replaced"] == "interrupted run"
    assert digest(out) == digest(tmp_path / "clean")
    assert not (out / MARKER).exists() and not (out / TMP_DIR).exists()


class Gate:
    """A partition function that holds every partition until released."""

    def __init__(self):
        self.entered, self.released = threading.Event(), threading.Event()

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        self.entered.set()
        self.released.wait(60)
        return frame

    def __dask_tokenize__(self):
        return ("gate", id(self))


def test_a_run_killed_while_holding_the_directory_is_replaced(tmp_path, photo_dataset):
    directory, _ = photo_dataset
    out = tmp_path / "out"
    # a process that takes the directory as a run does, then dies without cleaning up
    holder = subprocess.run([sys.executable, "-c", (
        "import os, sys, fsspec; from imgcurate.io.runlock import hold_marker\n"
        f"with hold_marker(fsspec.filesystem('file'), {str(out)!r}, {MARKER!r}) as marker:\n"
        "    marker.write('test'); os._exit(9)")], timeout=60)
    assert holder.returncode == 9 and (out / MARKER).exists()
    result = write_webdataset(read_webdataset(directory, with_images=False), out, images_per_tar=7)
    assert result.manifest["replaced"] == "interrupted run" and not (out / MARKER).exists()


def test_a_second_run_into_a_directory_being_written_is_refused(tmp_path, photo_dataset):
    directory, samples = photo_dataset
    out = tmp_path / "out"
    df = read_webdataset(directory, with_images=False)
    gate = Gate()
    first: dict = {}
    run = threading.Thread(target=lambda: first.update(
        result=write_webdataset(df.map_partitions(gate, meta=df._meta), out, images_per_tar=7)))
    run.start()
    try:
        assert gate.entered.wait(60)
        staged = sorted(p.relative_to(out) for p in out.rglob("*"))
        with pytest.raises(OutputExistsError, match=rf"another imgcurate run is writing .* \(pid {os.getpid()} on "):
            write_webdataset(df, out, images_per_tar=7, overwrite=True)
        with pytest.raises(OutputExistsError, match="another imgcurate run is writing"):
            check_output_dir(fsspec.filesystem("file"), str(out), True)  # what pipelines check before any work
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == staged  # the live run's files untouched
    finally:
        gate.released.set()
        run.join(120)
    assert first["result"].counts["written"] == len(samples)
    assert [s["__key__"] for s in read_back(out)] == [s["key"] for s in samples]
    write_webdataset(df, out, images_per_tar=7, overwrite=True)  # once it has finished, it can be replaced


def test_a_filesystem_without_locks_is_written_unlocked(tmp_path, photo_dataset, monkeypatch):
    from imgcurate.io import runlock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # what NFS without its lock service answers

    monkeypatch.setattr(runlock.fcntl, "flock", no_locks)
    directory, samples = photo_dataset
    df = read_webdataset(directory, with_images=False)
    out = tmp_path / "out"
    assert write_webdataset(df, out, images_per_tar=7).counts["written"] == len(samples)
    assert not (out / MARKER).exists()
    (out / MARKER).write_text("{}")  # without locks, a marker is taken for an interrupted run's, as before
    assert write_webdataset(df, out, images_per_tar=7).manifest["replaced"] == "interrupted run"


def test_invalid_images_per_tar(tmp_path, photo_dataset):
    directory, _ = photo_dataset
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="images_per_tar"):
            write_webdataset(read_webdataset(directory), tmp_path / "out", images_per_tar=bad)


def test_failures_are_listed_not_written(tmp_path, photos):
    (tmp_path / "in").mkdir()
    write_tar(tmp_path / "in" / "0.tar", [("a.jpg", photos[0].read_bytes()), ("a.json", b"{broken"),
                                         ("../evil.jpg", b"x"), ("b.jpg", photos[1].read_bytes())])
    (tmp_path / "in" / "1.tar").write_bytes(b"this is not a tar" * 64)
    result = write_webdataset(read_webdataset(tmp_path / "in"), tmp_path / "out", images_per_tar=10)
    assert [s["__key__"] for s in read_back(tmp_path / "out")] == ["a", "b"]
    failures = pd.read_parquet(tmp_path / "out" / "_failures")
    assert sorted(failures.error) == ["invalid_json", "not_a_tar", "unsafe_member_name"]
    assert set(failures.error_member.dropna()) == {"a.json", "../evil.jpg"}
    assert result.counts["rejected_members_by_reason"] == {"invalid_json": 1, "unsafe_member_name": 1}
    assert result.counts["rejected_shards_by_reason"] == {"not_a_tar": 1}
    assert result.counts["read"] == 2 == result.counts["written"]


def test_many_partitions_bounded_tasks(tmp_path, photos):
    # 12 single-sample shards into 5-sample outputs: plans span many partitions
    (tmp_path / "in").mkdir()
    for i, photo in enumerate(photos[:12]):
        write_tar(tmp_path / "in" / f"{i:03d}.tar", [(f"{i:03d}.jpg", photo.read_bytes())])
    write_webdataset(read_webdataset(tmp_path / "in", with_images=False), tmp_path / "out", images_per_tar=5)
    back = read_back(tmp_path / "out")
    assert [s["jpg"] for s in back] == [p.read_bytes() for p in photos[:12]]
    assert os.listdir(tmp_path / "out").count("00002.tar") == 1


def test_rewrite_of_an_output_round_trips(tmp_path, photo_dataset):
    directory, samples = photo_dataset
    write_webdataset(read_webdataset(directory), tmp_path / "one", images_per_tar=8)
    write_webdataset(read_webdataset(tmp_path / "one"), tmp_path / "two", images_per_tar=8)
    one, two = read_back(tmp_path / "one"), read_back(tmp_path / "two")
    assert [(s["__key__"], s["txt"], s["json"]) for s in one] == [(s["__key__"], s["txt"], s["json"]) for s in two]


def test_bigger_photo_dataset_in_many_shards(tmp_path, photos):
    directory = tmp_path / "many"
    samples = build_photo_dataset(directory, photos, shards=6, sidecar=False)
    write_webdataset(read_webdataset(directory, with_images=False), tmp_path / "out", images_per_tar=4)
    assert [s["__key__"] for s in read_back(tmp_path / "out")] == [s["key"] for s in samples]


def test_json_members_hold_every_metadata_column(tmp_path, photos):
    """Plain JSON types go through msgspec, others (timestamps, decimals) through json.dumps;
    NaN becomes null, a lone surrogate from a JSON escape is written escaped, big ints stay exact."""
    import datetime
    import decimal

    import pyarrow as pa

    from imgcurate.io.sample_json import sample_json_documents

    plain = pa.table({
        "key": ["a", "b"],
        "score": [0.5, float("nan")],
        "n": [3, None],
        "tags": [["x", "é"], []],
        "nested": [{"w": 1, "h": 2.5}, None],
        "raw": pa.array(['{"big": 1180591620717411303424, "s": "\\ud800"}', None], pa.json_()),
    })
    docs = [json.loads(d) for d in sample_json_documents(plain, [])]
    assert docs[0] == {"score": 0.5, "n": 3, "tags": ["x", "é"], "nested": {"w": 1, "h": 2.5},
                       "raw": {"big": 2**70, "s": "\ud800"}}
    assert docs[1] == {"score": None, "n": None, "tags": [], "nested": None, "raw": None}

    typed = pa.table({
        "key": ["a"],
        "when": pa.array([datetime.datetime(2024, 5, 1, 12, 30)], pa.timestamp("us")),
        "price": pa.array([decimal.Decimal("1.50")], pa.decimal128(5, 2)),
        "caption_len": [7],
    })
    assert json.loads(sample_json_documents(typed, [])[0]) == {"when": "2024-05-01T12:30:00", "price": "1.50", "caption_len": 7}

    # and through a whole write: the .json member of every written sample parses back to its row
    shard = tmp_path / "in" / "00000.tar"
    shard.parent.mkdir()
    write_tar(shard, [("p0.jpg", photos[0].read_bytes()), ("p0.json", b'{"width": 10, "label": "\\u00e9t\\u00e9", "x": NaN}'),
                      ("p1.jpg", photos[1].read_bytes()), ("p1.json", b'{"width": 20, "label": "b", "x": 1.5}')])
    write_webdataset(read_webdataset(str(shard)), str(tmp_path / "out"), images_per_tar=10)
    written = {s["__key__"]: json.loads(s["json"]) for s in read_back(tmp_path / "out")}
    assert written["p0"]["label"] == "été" and written["p0"]["x"] is None and written["p1"]["x"] == 1.5
    assert [written[k]["width"] for k in ("p0", "p1")] == [10, 20]


def test_members_of_a_sample_keep_one_order(tmp_path, photos):
    """Image, .txt, .cls, .json, component columns, then extra members in the order they came."""
    jpeg = photos[0].read_bytes()
    (tmp_path / "in").mkdir()
    write_tar(tmp_path / "in" / "00000.tar", [
        ("a.npy", b"A-npy"), ("a.json", b'{"n": 1}'), ("a.cls", b"3"), ("a.jpg", jpeg), ("a.txt", b"cap a"),
        ("c.txt", b"no image"), ("c.json", b'{"n": 3}'),
    ])
    write_tar(tmp_path / "in" / "00001.tar", [
        ("b.xyz", b"extra 1"), ("b.jpg", jpeg), ("b.abc", b"extra 2"), ("b.npy", b"B-npy"), ("b.json", b'{"n": 2}'),
    ])
    for with_images in (False, True):
        out = tmp_path / f"out-{with_images}"
        write_webdataset(read_webdataset(str(tmp_path / "in"), with_images=with_images), str(out), images_per_tar=2)
        members = []
        for shard in tars(out):
            with tarfile.open(shard) as tar:
                members += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        assert [name for name, _ in members] == [
            "a.jpg", "a.txt", "a.cls", "a.json", "a.npy", "c.txt", "c.json",
            "b.jpg", "b.json", "b.npy", "b.xyz", "b.abc",
        ]
        data = dict(members)
        assert data["a.jpg"] == data["b.jpg"] == jpeg
        assert (data["a.npy"], data["b.xyz"], data["b.abc"], data["a.cls"]) == (b"A-npy", b"extra 1", b"extra 2", b"3")
        assert [json.loads(data[f"{k}.json"])["n"] for k in "acb"] == [1, 3, 2]
