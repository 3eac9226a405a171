"""Partitions as cuDF holds them: every column of a GPU-bound partition is of a type cuDF documents, and
the conversion back gives the partition exactly, on the partitions imgcurate really builds.

The conversion is pure Arrow (:func:`to_cudf_layout` / :func:`from_cudf_layout`), so it is tested here
without cuDF; ``cudf_output`` below applies what cuDF 26.10's ``DataFrame.to_arrow`` does to a table on
its way back (all-null and empty nested columns come back as Arrow's null type, categoricals with the
smallest signed codes). tests/test_gpu.py runs the same partitions through real cuDF frames.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import imgcurate
from imgcurate.common import columns as C
from imgcurate.common.backend import (
    ARROW_SCHEMA, CUDF_LEAF_TYPES, Backend, cudf_available, cudf_holds, cudf_type, from_cudf_layout, to_cudf_layout,
)
from imgcurate.io.reader import read_webdataset
from imgcurate.models import TINY_MODEL, CLIPImageEmbedder

from conftest import png_bytes, write_tar

# cuDF 26.10, "Supported Data Types" (docs.nvidia.com/cudf/26.10/cudf/data-types/index.html): the
# kinds of data cuDF holds, written here as Arrow types, independently of imgcurate's own list
# (bool is in cuDF's API throughout, though that table leaves it out).
DOCUMENTED_LEAVES = {
    "signed integer": {pa.int8(), pa.int16(), pa.int32(), pa.int64()},
    "unsigned integer": {pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()},
    "floating-point": {pa.float32(), pa.float64()},
    "string": {pa.string()},
    "bool": {pa.bool_()},
}


def documented(arrow_type: pa.DataType) -> bool:
    """Whether cuDF's documented table has ``arrow_type`` (datetime, timedelta, decimal32/64/128, list,
    struct and category are the kinds with parameters)."""
    if any(arrow_type in leaves for leaves in DOCUMENTED_LEAVES.values()):
        return True
    if pa.types.is_timestamp(arrow_type) or pa.types.is_duration(arrow_type):
        return arrow_type.unit in ("s", "ms", "us", "ns")
    if isinstance(arrow_type, (pa.Decimal32Type, pa.Decimal64Type, pa.Decimal128Type)):
        return True
    if pa.types.is_list(arrow_type):  # ListDtype (not large, fixed-size or view lists)
        return documented(arrow_type.value_type)
    if pa.types.is_struct(arrow_type):
        return all(documented(field.type) for field in arrow_type)
    if pa.types.is_dictionary(arrow_type):  # CategoricalDtype
        return documented(arrow_type.value_type) and not pa.types.is_nested(arrow_type.value_type)
    return False


def cudf_output(table: pa.Table) -> pa.Table:
    """What cuDF's ``to_arrow(preserve_index=False)`` gives for a frame made from ``table``: nested columns
    and children whose values are all null (or that have none) as Arrow's null type, nested all-null
    strings too, and categorical codes as the smallest signed integer that holds them."""

    def back(array: pa.Array, nested: bool = False) -> pa.Array:
        all_null = array.null_count == len(array)
        if all_null and (pa.types.is_nested(array.type) or (nested and pa.types.is_string(array.type))):
            return pa.nulls(len(array))
        if pa.types.is_struct(array.type):
            children = [back(child, nested=True) for child in array.flatten()]
            return pa.StructArray.from_arrays(children, names=[f.name for f in array.type], mask=array.is_null()
                                              if array.null_count else None)
        if pa.types.is_list(array.type):
            lengths = np.nan_to_num(array.value_lengths().to_numpy(zero_copy_only=False)).astype(np.int32)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            return pa.ListArray.from_arrays(offsets, back(array.flatten(), nested=True),
                                            mask=array.is_null() if array.null_count else None)
        if pa.types.is_dictionary(array.type):
            return array.cast(pa.dictionary(pa.int8(), array.type.value_type))
        return array

    combined = table.combine_chunks()
    return pa.table({name: back(column.chunk(0) if column.num_chunks else pa.array([], column.type))
                     for name, column in zip(combined.column_names, combined.columns)})


def jpeg(photo, **options) -> bytes:
    out = io.BytesIO()
    Image.open(photo).save(out, format="JPEG", **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos):
    """Three shards of real photos with everything the reader turns into columns: JPEG and PNG images,
    captions, classes, .json with nested values (JSON text), a field whose type changes in a later shard
    (extra_json), a component in the first shard (a bytes column) and one only in a later shard
    (extra_members), a sidecar with a date column, an undecodable caption and an empty image (failures)."""
    import datetime

    import pyarrow.parquet as pq

    directory = tmp_path_factory.mktemp("cudf-layout")
    for shard in range(3):
        members, sidecar = [], []
        for i, photo in enumerate(photos[shard * 6 : shard * 6 + 6]):
            key = f"{shard}{i:04d}"
            image = png_bytes(photo.read_bytes()) if i == 3 else photo.read_bytes()
            doc = {"name": photo.stem, "rank": i if shard < 2 else f"#{i}", "tags": ["kde", str(i)],
                   "info": {"shard": shard, "index": i}, "score": i / 3}
            caption = b"\xff\xfe not utf-8" if (shard, i) == (1, 2) else f"photo {photo.stem}".encode()
            members += [(f"{key}.{'png' if i == 3 else 'jpg'}", b"" if (shard, i) == (2, 4) else image),
                        (f"{key}.txt", caption), (f"{key}.cls", str(i).encode()), (f"{key}.json", json.dumps(doc).encode())]
            if i % 2 == 0:
                members.append((f"{key}.seg.png", png_bytes(jpeg(photo, quality=30))))
            if shard == 1 and i == 1:
                members.append((f"{key}.depth.npy", b"\x93NUMPY fake"))
            sidecar.append({"key": key, "url": f"https://example.invalid/{photo.name}",
                            "taken": datetime.date(2020, 1, 1 + i)})
        write_tar(directory / f"{shard:05d}.tar", members)
        pq.write_table(pa.Table.from_pylist(sidecar), directory / f"{shard:05d}.parquet")
    return directory


def handed_to_the_backend(df) -> list[pa.Table]:
    """The Arrow tables imgcurate hands to ``Backend.from_arrow`` while computing ``df`` (what the cudf
    backend turns into cuDF frames): the reader's partitions and each step's output, metas included."""
    seen: list[pa.Table] = []
    original = Backend.from_arrow

    def recording(self, table):
        seen.append(table)
        return original(self, table)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Backend, "from_arrow", recording)
        df.compute()
    return seen


@pytest.fixture(scope="module")
def gpu_bound(dataset) -> dict[str, list[pa.Table]]:
    """The partitions imgcurate builds, by step, as Arrow tables."""
    import dask

    embedder = CLIPImageEmbedder(TINY_MODEL, pretrained=None, device="cpu")
    with dask.config.set(scheduler="sync"):
        df = read_webdataset(dataset, with_images=True)
        masked = df[df.cls.isin([1, 3, 5])]
        tables = {
            "read": handed_to_the_backend(read_webdataset(dataset, with_images=True)),
            "read without images": handed_to_the_backend(read_webdataset(dataset, with_images=False)),
            "embedded": handed_to_the_backend(imgcurate.embed(read_webdataset(dataset, with_images=False), embedder)),
            "embedded after a mask": handed_to_the_backend(imgcurate.embed(masked, embedder)),
            "through pandas": [Backend("pandas").to_arrow(part) for part in dask.compute(*masked.to_delayed())],
        }
    # beside the embedding (and the id of the model that made it): a text embedding
    last = [t for t in tables["embedded"] if len(t)][-1]
    assert C.EMBEDDING_MODEL in last.column_names
    n = len(last)
    text = pa.FixedSizeListArray.from_arrays(pa.array(np.random.default_rng(0).random(n * 8), pa.float32()), 8)
    tables["embedded"].append(last.append_column(C.TEXT_EMBEDDING, text))
    return tables


def test_the_partitions_have_the_columns_that_need_converting(gpu_bound):
    # the fixture is only worth its name if the partitions hold every kind the reader and embed make
    read = next(t for t in gpu_bound["read"] if t.column(C.EXTRA_MEMBERS).drop_null().to_pylist())
    embedded = gpu_bound["embedded"][-1]
    kinds = {field.name: field.type for table in (read, embedded) for field in table.schema}
    assert kinds[C.IMAGE] == pa.binary() and kinds["seg.png"] == pa.binary()
    assert kinds[C.EXTRA_MEMBERS] == pa.map_(pa.string(), pa.binary())
    assert read.column(C.EXTRA_MEMBERS).drop_null().to_pylist() == [[("depth.npy", b"\x93NUMPY fake")]]
    assert isinstance(kinds[C.EXTRA_JSON], pa.BaseExtensionType) and isinstance(kinds["info"], pa.BaseExtensionType)
    assert pa.types.is_fixed_size_list(kinds[C.EMBEDDING]) and pa.types.is_fixed_size_list(kinds[C.TEXT_EMBEDDING])
    assert kinds["taken"] == pa.date32()
    assert read.column(C.ERROR).drop_null().to_pylist() == ["invalid_caption"]
    assert "decode_error" in [e for t in gpu_bound["embedded"] for e in t.column(C.ERROR).to_pylist()]
    # "rank" is text in the last shard: kept in extra_json
    assert any(t.column(C.EXTRA_JSON).drop_null().to_pylist() for t in gpu_bound["read"])
    # what stops cuDF today: types outside its documented set
    assert {name for name, typ in kinds.items() if not documented(typ)} >= {
        C.IMAGE, "seg.png", C.EXTRA_MEMBERS, C.EXTRA_JSON, "info", "tags", C.EMBEDDING, C.TEXT_EMBEDDING, "taken"}


def test_every_column_of_a_gpu_bound_partition_is_a_documented_cudf_type(gpu_bound):
    for step, tables in gpu_bound.items():
        for table in tables:
            held = to_cudf_layout(table)
            outside = {field.name: str(field.type) for field in held.schema if not documented(field.type)}
            assert not outside, f"{step}: {outside}"
            assert all(cudf_holds(field.type) for field in held.schema)


def test_partitions_come_back_from_the_cudf_layout_exactly(gpu_bound):
    for step, tables in gpu_bound.items():
        for table in tables:
            for piece in (table, table.slice(0, 0), table.slice(2, 3)):
                back = from_cudf_layout(cudf_output(to_cudf_layout(piece)))
                assert back.schema == piece.schema, step
                assert back.equals(piece), step


def test_the_pandas_index_a_mask_leaves_is_dropped(gpu_bound):
    table = [t for t in gpu_bound["read"] if len(t)][0]
    frame = Backend("pandas").from_arrow(table)
    masked = frame[frame["cls"].isin([1, 3, 5])]  # a mask keeps the row labels: from_pandas adds __index_level_0__
    with_index = pa.Table.from_pandas(masked, preserve_index=True)  # as cuDF's to_arrow() keeps a non-range index
    assert "__index_level_0__" in with_index.column_names
    held = to_cudf_layout(with_index)
    assert "__index_level_0__" not in held.column_names
    assert from_cudf_layout(cudf_output(held)).equals(Backend("pandas").to_arrow(masked))


def test_columns_added_or_changed_on_the_gpu_come_back_as_cudf_gives_them(gpu_bound):
    table = [t for t in gpu_bound["read"] if len(t)][1]
    held = cudf_output(to_cudf_layout(table))
    # a user's frame: a new column, a JSON column replaced by plain text, the schema column dropped by a selection
    changed = held.append_column("wide", pa.array([True] * len(held))).set_column(
        held.column_names.index("info"), "info", pa.array(["x"] * len(held)))
    back = from_cudf_layout(changed)
    assert back.column("wide").type == pa.bool_() and back.column("info").to_pylist() == ["x"] * len(held)
    assert back.column(C.EXTRA_MEMBERS).equals(table.column(C.EXTRA_MEMBERS))
    selected = from_cudf_layout(held.select([C.KEY, C.IMAGE, C.CAPTION]))  # no schema column: bytes still come back
    assert selected.equals(table.select([C.KEY, C.IMAGE, C.CAPTION]))


def test_the_conversion_covers_arrow_types_beyond_the_readers():
    import datetime
    import decimal

    table = pa.table({
        "large_text": pa.array(["x", None, "z"], pa.large_string()),
        "large_bytes": pa.array([b"x", None, b""], pa.large_binary()),
        "fixed_bytes": pa.array([b"ab", None, b"cd"], pa.binary(2)),
        "nested": pa.array([{"a": b"1", "b": [{"k": 1}]}, None, {"a": None, "b": None}]),
        "lists_of_maps": pa.array([[[("k", 1)]], None, [None, []]], pa.large_list(pa.map_(pa.string(), pa.int64()))),
        "categories": pa.array(["a", "b", None]).dictionary_encode(),
        "amount": pa.array([decimal.Decimal("1.50"), None, decimal.Decimal("-2.25")]),
        "when": pa.array([datetime.datetime(2024, 1, 1, 12), None, datetime.datetime(1999, 12, 31)], pa.timestamp("us", "UTC")),
        "clock": pa.array([datetime.time(12, 30), None, datetime.time(0, 0)], pa.time64("us")),
        "half": pa.array([1.5, None, -2.0], pa.float16()),
        "nothing": pa.nulls(3),
    })
    for piece in (table, table.slice(1), table.slice(0, 0)):
        held = to_cudf_layout(piece)
        assert all(documented(field.type) for field in held.schema), held.schema
        assert [held.schema.field(name).type for name in piece.column_names] == [cudf_type(t) for t in piece.schema.types]
        assert from_cudf_layout(cudf_output(held)).equals(piece)
    with pytest.raises(TypeError, match="cuDF has no column type"):
        cudf_type(pa.decimal256(50, 2))


def test_the_schema_column_is_a_single_category():
    table = pa.table({"key": ["a", "b"]})
    held = to_cudf_layout(table)
    marker = held.column(ARROW_SCHEMA)
    assert pa.types.is_dictionary(marker.type) and len(marker.chunk(0).dictionary) == 1
    assert set(CUDF_LEAF_TYPES) == set().union(*DOCUMENTED_LEAVES.values())


@pytest.mark.gpu
@pytest.mark.skipif(not cudf_available(), reason="needs a CUDA GPU and cuDF (imgcurate[gpu])")
def test_cudf_frames_hold_the_partitions_and_give_them_back(gpu_bound):
    cudf_backend = Backend("cudf")
    for step, tables in gpu_bound.items():
        for table in tables:
            for piece in (table, table.slice(0, 0)):
                frame = cudf_backend.from_arrow(piece)
                assert type(frame).__module__.startswith("cudf")
                assert cudf_backend.to_arrow(frame).equals(piece), step
                # what cuDF really hands back is what cudf_output stands for
                real = frame.to_arrow(preserve_index=False)
                assert from_cudf_layout(real).equals(piece), step
                if len(piece) > 1:  # a mask on the GPU leaves a non-range index; it never becomes a column
                    keep = np.arange(len(piece)) % 2 == 0
                    masked = cudf_backend.to_arrow(frame[keep])
                    assert masked.equals(piece.filter(pa.array(keep))), step
