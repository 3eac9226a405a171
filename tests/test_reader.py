"""read_webdataset: partitions, columns, types, sidecars, path forms, and WebDataset rules."""

from __future__ import annotations

import json
import os

import dask
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from dask.dataframe.dask_expr._expr import ArrowStringConversion

import imgcurate
from imgcurate.common.backend import Backend
from imgcurate.io import reader, tarindex
from imgcurate.io.reader import read_webdataset

from conftest import write_tar


def test_one_partition_per_shard_in_order_with_all_columns(photo_dataset):
    directory, samples = photo_dataset
    df = read_webdataset(directory, with_images=True)
    assert df.npartitions == 3
    frame = df.compute()
    assert frame.key.tolist() == [s["key"] for s in samples]
    assert [bytes(b) for b in frame.image] == [s["image"] for s in samples]
    assert frame.image_ext.tolist() == [s["ext"] for s in samples]
    assert frame.caption.tolist() == [s["caption"] for s in samples]
    assert frame.image_nbytes.tolist() == [len(s["image"]) for s in samples]
    assert frame.source_shard.tolist() == [str(directory / f"{s['shard']:05d}.tar") for s in samples]
    assert frame.groupby("source_shard").source_index.apply(list).tolist() == [list(range(10))] * 3
    assert frame.error.isna().all()
    # the image can be found again by byte range in its shard
    row = frame.iloc[13]
    with open(row.source_shard, "rb") as f:
        f.seek(row._image_offset)
        assert f.read(row.image_nbytes) == samples[13]["image"]


def test_json_fields_are_typed_columns_and_nested_values_are_json(photo_dataset):
    directory, samples = photo_dataset
    df = read_webdataset(directory)
    assert str(df.dtypes["width"]) == "int64[pyarrow]"
    assert str(df.dtypes["score"]) == "double[pyarrow]"
    assert str(df.dtypes["landscape"]) == "bool[pyarrow]"
    assert str(df.dtypes["name"]) == "string"
    assert df.dtypes["info"] == pd.ArrowDtype(pa.json_())
    frame = df.compute()
    assert frame.width.tolist() == [s["json"]["width"] for s in samples]
    assert [json.loads(v) for v in frame["info"]] == [s["json"]["info"] for s in samples]
    # a mask on metadata is plain pandas
    wide = frame[frame.width > frame.height]
    assert set(wide.key) == {s["key"] for s in samples if s["json"]["landscape"]}


def test_partitions_arrive_with_the_meta_types_and_no_string_conversion_step(photo_dataset):
    # Dask's object-to-string pass is left out of the graph: every column is Arrow-backed already,
    # so the partitions must match the declared types without it, under Dask's default config
    directory, _ = photo_dataset
    assert dask.config.get("dataframe.convert-string") in (None, True)
    df = read_webdataset(directory)
    assert not any(isinstance(node, ArrowStringConversion) for node in df.expr.walk())
    partition = df.get_partition(1).compute()
    assert partition.dtypes.to_dict() == df.dtypes.to_dict()
    assert not any(dtype == object for dtype in partition.dtypes)
    assert str(partition.dtypes["key"]) == str(partition.dtypes["caption"]) == "string"
    # later steps still get Dask's usual handling
    assert (df[df.width > 0].key.str.len() > 0).all().compute()


def test_sidecar_parquet_is_joined_on_key(photo_dataset):
    directory, samples = photo_dataset
    frame = read_webdataset(directory).compute()
    assert frame.url.tolist() == [f"https://example.invalid/{s['json']['name']}.jpg" for s in samples]
    assert frame.license.tolist() == ["LGPL" if i % 2 else "CC-BY-SA" for i in range(30)]
    # img2dataset's rows for failed downloads have no tar members and make no samples
    assert len(frame) == 30 and not frame.key.str.endswith("9999").any()
    assert "url" not in read_webdataset(directory, sidecar_parquet=False).columns
    os.remove(directory / "00001.parquet")
    with pytest.raises(FileNotFoundError, match="00001.parquet"):
        read_webdataset(directory, sidecar_parquet=True)


def test_path_forms_select_the_same_shards(photo_dataset):
    directory, _ = photo_dataset
    expected = [str(directory / f"{i:05d}.tar") for i in range(3)]
    for urlpath in (str(directory), str(directory / "*.tar"), str(directory / "{00000..00002}.tar"),
                    [str(directory / "00000.tar"), str(directory / "00001.tar"), str(directory / "00002.tar")],
                    f"file://{directory}/{{00000..00002}}.tar"):
        df = read_webdataset(urlpath, with_images=False)
        assert sorted(df.source_shard.unique().compute()) == expected, urlpath
    assert read_webdataset([str(directory / "00002.tar"), str(directory / "00000.tar")],
                           with_images=False).source_shard.compute().iloc[0].endswith("00002.tar")


def test_symlinked_shards_in_a_directory(tmp_path, photo_dataset):
    directory, samples = photo_dataset
    links = tmp_path / "links"
    links.mkdir()
    for i in range(3):
        (links / f"{i:05d}.tar").symlink_to(directory / f"{i:05d}.tar")
    assert read_webdataset(links, with_images=False).key.compute().tolist() == [s["key"] for s in samples]


def test_bad_paths_fail_clearly(tmp_path, photo_dataset):
    directory, _ = photo_dataset
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_webdataset(tmp_path / "nope.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no shards"):
        read_webdataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="named twice"):
        read_webdataset([directory / "00000.tar", directory / "00000.tar"])
    with pytest.raises(ValueError, match="on_error"):
        read_webdataset(directory, on_error="ignore")


def test_without_images_no_bytes_are_loaded(photo_dataset):
    directory, samples = photo_dataset
    df = read_webdataset(directory, with_images=False)
    assert "image" not in df.columns
    frame = df.compute()
    assert frame.image_nbytes.tolist() == [len(s["image"]) for s in samples]
    assert frame.width.tolist() == [s["json"]["width"] for s in samples]


def test_shared_testdata_compressed_shards_directories_and_gz_members(wds_testdata):
    frame = read_webdataset(wds_testdata / "sample.tgz", with_images=True).compute()
    expected = list(wds.WebDataset(str(wds_testdata / "sample.tgz"), shardshuffle=False))
    assert frame.key.tolist() == [s["__key__"] for s in expected]
    assert [bytes(b) for b in frame.image] == [s["png"] for s in expected]
    assert frame.cls.tolist() == [int(s["cls"]) for s in expected]
    assert frame.error.isna().all()

    frame = read_webdataset(wds_testdata / "compressed.tar", with_images=True).compute()
    # the directory member is ignored; .txt.gz members are inflated into captions
    assert frame.key.tolist() == ["compressed/0001", "compressed/0002", "compressed/0003"]
    assert frame.caption.tolist() == ["hello\n", "world\n", "gzip\n"]
    assert frame.image_ext.isna().all()


def test_webdataset_grouping_rules(tmp_path):
    members = [
        ("./a.jpg", b"A"), ("./a.seg.png", b"SEG"), ("./a.TXT", b"cap a"),
        ("dir/b.jpg", b"B"), ("dir/b.json", b'{"n": 1}'),
        ("a.jpg", b"A2"),  # the same key again, later: a second sample
        ("c.jpg", b"C1"), ("c.jpg", b"C2"),  # the same member twice in a row: two samples
        ("d.png", b"D"), ("d.jpg", b"DJ"),  # two images: the first is the image, the second a component
    ]
    write_tar(tmp_path / "x.tar", members)
    frame = read_webdataset(tmp_path / "x.tar", with_images=True).compute()
    assert frame.key.tolist() == ["a", "dir/b", "a", "c", "c", "d"]
    assert [bytes(b) for b in frame.image] == [b"A", b"B", b"A2", b"C1", b"C2", b"D"]
    assert frame.caption.tolist()[0] == "cap a"  # extensions are lower-cased
    assert bytes(frame["seg.png"].iloc[0]) == b"SEG"
    assert bytes(frame["jpg"].iloc[5]) == b"DJ" and frame.image_ext.iloc[5] == "png"


def test_layout_from_first_shard_keeps_everything_else_aside(tmp_path):
    write_tar(tmp_path / "0.tar", [("a.jpg", b"A"), ("a.json", b'{"w": 1, "tag": "x"}')])
    write_tar(tmp_path / "1.tar", [("b.jpg", b"B"), ("b.json", b'{"w": "wide", "new": [1, 2], "caption": "from json"}'),
                                   ("b.depth.png", b"DEPTH")])
    frame = read_webdataset(tmp_path).compute().set_index("key")
    assert pd.isna(frame.loc["b", "w"]) and frame.loc["a", "w"] == 1
    assert json.loads(frame.loc["b", "extra_json"]) == {"w": "wide", "new": [1, 2]}
    assert frame.loc["b", "caption"] == "from json"  # fills the missing .txt
    assert dict(frame.loc["b", "extra_members"]) == {"depth.png": b"DEPTH"}
    # reading two shards for the layout makes them columns instead
    frame = read_webdataset(tmp_path, layout_shards=2).compute().set_index("key")
    assert frame.dtypes["w"] == pd.ArrowDtype(pa.json_())
    assert json.loads(frame.loc["b", "w"]) == "wide" and json.loads(frame.loc["a", "w"]) == 1
    assert bytes(frame.loc["b", "depth.png"]) == b"DEPTH"


def test_values_that_do_not_fit_their_column_are_kept_exactly(tmp_path):
    docs = [{"n": 1, "x": 1.5, "flag": True}, {"n": 2.5, "x": 2, "flag": 1}, {"n": True, "x": False, "flag": "yes"},
            {"n": 2**70, "x": None, "flag": None}]
    write_tar(tmp_path / "0.tar", [(f"{i}.json", json.dumps(d).encode()) for i, d in enumerate(docs)][:1])
    write_tar(tmp_path / "1.tar", [(f"{i}.json", json.dumps(d).encode()) for i, d in enumerate(docs)][1:])
    frame = read_webdataset(tmp_path).compute()
    assert frame.n.tolist()[:1] == [1] and frame.n.isna().tolist()[1:] == [True, True, True]
    assert frame.x.tolist()[:2] == [1.5, 2.0] and pd.isna(frame.x.iloc[2])
    assert [json.loads(e) if isinstance(e, str) else None for e in frame.extra_json] == [
        None, {"n": 2.5, "flag": 1}, {"n": True, "x": False, "flag": "yes"}, {"n": 2**70}]


def test_failure_rows_and_policies(tmp_path):
    write_tar(tmp_path / "bad.tar", [("ok.jpg", b"OK"), ("ok.txt", b"\xff\xfe not utf-8"), ("j.jpg", b"J"), ("j.json", b"{nope")])
    frame = read_webdataset(tmp_path / "bad.tar").compute()
    good = frame[frame.error.isna()]
    assert good.key.tolist() == ["ok", "j"] and good.caption.isna().all()
    failures = frame[frame.error.notna()]
    assert failures.error.tolist() == ["invalid_caption", "invalid_json"]
    assert failures.error_member.tolist() == ["ok.txt", "j.json"]
    assert read_webdataset(tmp_path / "bad.tar", on_error="skip").compute().key.tolist() == ["ok", "j"]
    with pytest.raises(imgcurate.common.errors.SampleError, match="invalid_caption"):
        read_webdataset(tmp_path / "bad.tar", on_error="raise").compute()


@pytest.fixture
def shard_reads(monkeypatch) -> list[str]:
    """The URL of every shard read from its file (not from the layout pass's table), in order."""
    reads = []
    read_plain_shard = reader.read_plain_shard
    monkeypatch.setattr(reader, "read_plain_shard", lambda task: reads.append(task.url) or read_plain_shard(task))
    return reads


def read_alone(shard, with_images=True) -> pd.DataFrame:
    """A shard read by itself, not through the layout pass's table."""
    task = reader.ShardTask(str(shard), with_images, reader._sidecar_for(str(shard), "auto", None), None, "report")
    return Backend("pandas").from_arrow(reader.read_partition_table(task, None)[0])


@pytest.mark.parametrize("with_images", [False, True])
def test_first_shard_is_read_once(photo_dataset, shard_reads, monkeypatch, with_images):
    directory, _ = photo_dataset
    shards = sorted(str(path) for path in directory.glob("*.tar"))
    frame = read_webdataset(directory, with_images=with_images)
    first = frame.get_partition(0).compute()
    frame.compute()
    # the layout pass's read serves the first partition, twice here (its images fetched by byte range)
    assert sorted(shard_reads) == shards
    monkeypatch.undo()
    pd.testing.assert_frame_equal(first, read_alone(shards[0], with_images))


def test_first_shard_changed_after_the_layout_pass_is_read_again(tmp_path):
    shard = write_tar(tmp_path / "0.tar", [("a.jpg", b"A" * 600), ("a.txt", b"one"), ("b.jpg", b"B" * 900), ("b.txt", b"two")])
    frame = read_webdataset(shard, with_images=True)
    os.truncate(shard, 512 * 6 + 400)  # in the middle of b.jpg: its range can no longer be read
    changed = frame.compute()
    assert changed.key.tolist() == ["a", "b"] and changed.error.tolist()[-1] == "truncated_member"
    pd.testing.assert_frame_equal(changed, read_alone(shard))


def test_shard_cut_between_its_header_walk_and_its_image_read_is_read_again(tmp_path, monkeypatch):
    shards = [write_tar(tmp_path / f"{i}.tar", [("a.jpg", b"A" * 600), ("a.txt", b"one"), ("b.jpg", b"B" * 900),
                                                 ("b.txt", b"two")]) for i in range(2)]
    frame = read_webdataset(tmp_path, with_images=True)  # the layout pass reads 0.tar; 1.tar is read by its partition
    read_ranges = reader.read_ranges

    def cut_first(fd, *ranges):  # the file shrinks after the headers were walked, before the images are read
        os.truncate(shards[1], 512 * 6 + 400)
        return read_ranges(fd, *ranges)

    monkeypatch.setattr(reader, "read_ranges", cut_first)
    second = frame.get_partition(1).compute()
    assert second.key.tolist() == ["a", "b"] and second.error.tolist()[-1] == "truncated_member"
    monkeypatch.undo()
    pd.testing.assert_frame_equal(second, read_alone(shards[1]))


def test_first_partition_from_the_layout_pass_matches_a_read_of_the_shard_wherever_it_is_cut(tmp_path):
    whole = write_tar(tmp_path / "whole.tar", [
        ("a.jpg", b"A" * 600), ("a.txt", b"one"), ("a.json", b'{"w": 1}'), ("b.jpg", b"B" * 1500), ("b.txt", b"two"),
        ("c.png", b"C" * 100), ("c.json", b'{"w": 3}'),
    ]).read_bytes()
    shard = tmp_path / "0.tar"
    for cut in range(0, len(whole) + 1, 61):  # inside headers, images, small members, paddings
        shard.write_bytes(whole[:cut])
        pd.testing.assert_frame_equal(read_webdataset(shard, with_images=True).compute(), read_alone(shard), obj=f"cut at {cut}")


def test_first_shard_with_images_too_large_to_load_is_read_again(photo_dataset, shard_reads, monkeypatch):
    directory, _ = photo_dataset
    monkeypatch.setattr(reader, "MAX_MEMBER_BYTES", 1000)  # the photos are larger: their ranges are not fetched
    first = read_webdataset(directory, with_images=True).get_partition(0).compute()
    shard = str(directory / "00000.tar")
    assert shard_reads == [shard, shard]  # the layout pass, then the partition's own read
    monkeypatch.undo()
    pd.testing.assert_frame_equal(first, read_alone(shard))


def test_a_view_of_the_mapping_still_held_does_not_fail_the_read(tmp_path, monkeypatch):
    shard = write_tar(tmp_path / "0.tar", [("a.jpg", b"A" * 600), ("a.txt", b"one"), ("b.jpg", b"B"), ("b.txt", b"two")])
    held = []
    index_plain_tar = tarindex.index_plain_tar
    # the file is mapped where the compiled walk was not built; as when something else (in a dask
    # worker) still holds a view of the mapped shard as reading ends
    monkeypatch.setattr(tarindex, "_fastio", None)
    monkeypatch.setattr(tarindex, "index_plain_tar", lambda buffer, read_images: held.append(memoryview(buffer))
                        or index_plain_tar(buffer, read_images))
    frame = read_webdataset(shard, with_images=False).compute()
    assert held and frame.caption.tolist() == ["one", "two"] and frame.error.isna().all()
    assert bytes(held[0][512:515]) == b"AAA"  # the mapping outlives the read while the view is held
    held.clear()
    monkeypatch.undo()
    pd.testing.assert_frame_equal(frame, read_alone(shard, with_images=False))


def test_failure_policy_applies_to_a_first_shard_read_once(tmp_path):
    write_tar(tmp_path / "0.tar", [("ok.jpg", b"OK"), ("bad.jpg", b"B"), ("bad.json", b"{nope")])
    write_tar(tmp_path / "1.tar", [("c.jpg", b"C")])
    reported = read_webdataset(tmp_path, with_images=False).compute()
    assert reported.error.dropna().tolist() == ["invalid_json"]
    skipped = read_webdataset(tmp_path, with_images=False, on_error="skip").compute()
    assert skipped.error.isna().all() and skipped.key.tolist() == reported.key[reported.error.isna()].tolist()
    with pytest.raises(imgcurate.common.errors.SampleError, match="invalid_json"):
        read_webdataset(tmp_path, with_images=False, on_error="raise").compute()


def test_dask_string_conversion_leaves_bytes_alone(photo_dataset):
    import dask

    directory, samples = photo_dataset
    with dask.config.set({"dataframe.convert-string": True}):
        frame = read_webdataset(directory, with_images=True).compute()
    assert bytes(frame.image.iloc[0]) == samples[0]["image"]
    assert str(frame.dtypes["image"]) == "binary[pyarrow]"


def test_sidecar_without_key_is_reported(tmp_path):
    write_tar(tmp_path / "0.tar", [("a.jpg", b"A")])
    pq.write_table(pa.table({"name": ["a"]}), tmp_path / "0.parquet")
    frame = read_webdataset(tmp_path).compute()
    assert frame.error.dropna().tolist() == ["invalid_sidecar"]


def test_columns_read_only_what_is_asked(tmp_path, photo_dataset):
    """columns= (or a later selection, pushed into the read) decodes only what those columns are made of."""
    from dask.dataframe.dask_expr.io.io import FromMap

    directory, samples = photo_dataset
    write_tar(directory / "00003.tar", [("j.jpg", b"x"), ("j.txt", b"a caption"), ("j.json", b"{not json")])
    full = read_webdataset(directory).compute()
    assert full.error.dropna().tolist() == ["invalid_json"]
    caption_only = read_webdataset(directory, columns=["caption"])
    assert caption_only.columns.tolist() == ["key", "image_ext", "image_nbytes", "caption", "source_shard", "source_index",
                                             "error", "error_member", "error_detail", "_image_offset"]
    # a caption can be filled from a .json field, so the .json members are still parsed here
    projected = caption_only.compute()
    assert projected.reset_index(drop=True).equals(full[projected.columns].reset_index(drop=True))
    license_only = read_webdataset(directory, columns=["license"]).compute()  # a sidecar column: no .json parsed
    assert license_only.error.isna().all() and license_only.license.tolist()[:30] == full.license.tolist()[:30]
    selected = read_webdataset(directory)[["key", "width"]]
    leaves = list(selected.optimize().expr.find_operations(FromMap))
    assert [leaf.operand("columns") for leaf in leaves] == [["key", "width"]]  # pushed into the read
    assert selected.compute().width.tolist() == full.width.tolist()
    with pytest.raises(ValueError, match="no column 'colour'"):
        read_webdataset(directory, columns=["colour"])


def test_json_wins_over_the_sidecar_and_says_so_once(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgcurate.io import schema

    schema._WARNED_DISAGREEMENT.clear()
    write_tar(tmp_path / "00000.tar", [("a.jpg", b"x"), ("a.json", b'{"width": 100}'), ("b.jpg", b"y"), ("b.json", b'{"width": 7}')])
    pq.write_table(pa.table({"key": ["a", "b"], "width": [100, 300]}), tmp_path / "00000.parquet")
    with pytest.warns(UserWarning, match="'width' differs between samples' .json and their sidecar.*.json value is kept"):
        frame = read_webdataset(tmp_path).compute()
    assert frame.width.tolist() == [100, 7]


def test_json_typed_sidecar_columns_are_read_as_json_values(tmp_path):
    """A sidecar's JSON column (how imgcurate writes nested .json fields) holds JSON text: it is compared
    with the .json's value as the value it encodes, and a field only in the sidecar is not encoded twice."""
    import warnings

    from imgcurate.io import schema
    from imgcurate.io.jsontext import JSON_TEXT

    schema._WARNED_DISAGREEMENT.clear()
    write_tar(tmp_path / "00000.tar", [("a.jpg", b"x"), ("a.json", b'{"tags": ["red", "noise"]}'),
                                       ("b.jpg", b"y"), ("b.json", b'{"tags": ["blue"]}')])
    pq.write_table(pa.table({"key": ["a", "b"],
                             "tags": pa.array(['["red", "noise"]', '["blue"]']).cast(JSON_TEXT),
                             "box": pa.array(['{"x": 1}', None]).cast(JSON_TEXT)}), tmp_path / "00000.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = read_webdataset(tmp_path).compute()
    assert [json.loads(t) for t in frame.tags] == [["red", "noise"], ["blue"]]
    assert json.loads(frame.box.iloc[0]) == {"x": 1} and frame.box.isna().tolist() == [False, True]
    pq.write_table(pa.table({"key": ["b"], "tags": pa.array(['["green"]']).cast(JSON_TEXT)}), tmp_path / "00000.parquet")
    with pytest.warns(UserWarning, match="'tags' differs"):
        assert json.loads(read_webdataset(tmp_path).compute().tags.iloc[1]) == ["blue"]


def test_reading_an_imgcurate_output_gives_no_warning(tmp_path, photo_dataset):
    """Nested .json fields go to both the tar's .json and the Parquet beside it; reading the output back
    finds them equal."""
    import warnings

    from imgcurate.io import schema

    directory, _ = photo_dataset
    first = read_webdataset(directory).compute()
    assert first["info"].notna().all()  # a nested field in every sample
    imgcurate.write_webdataset(read_webdataset(directory), tmp_path / "out", images_per_tar=7)
    schema._WARNED_DISAGREEMENT.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = read_webdataset(tmp_path / "out").compute()
    assert again["info"].map(json.loads).tolist() == first["info"].map(json.loads).tolist()


def test_samples_are_counted_where_they_were_read(photo_dataset, monkeypatch):
    """The writer's count of a shard's samples is what the read found (no second pass in the same
    process), and the same as a pass over the shard's headers."""
    from imgcurate.io import reader
    from imgcurate.io.reader import ShardTask, read_partition_table

    directory, _ = photo_dataset
    task = ShardTask(str(directory / "00000.tar"), False, str(directory / "00000.parquet"), None, "report")
    reader._READ_COUNTS.clear()
    walked = reader.count_samples(task)
    assert walked == {"shard": task.url, "samples": 10, "sidecar_only": {"failed_to_download": 1}}
    read_partition_table(task, None)
    monkeypatch.setattr(reader, "read_plain_shard", lambda *a, **k: pytest.fail("the shard was walked again"))
    assert reader.count_samples(task) == walked
