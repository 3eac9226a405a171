"""The backend's conversions between partitions (pandas) and the Arrow tables the I/O code works on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from imgcurate.common.backend import Backend


def test_pandas_frames_convert_to_arrow_as_from_pandas_converts_them():
    frame = pd.DataFrame({
        "key": pd.array(["a", None, "c"], dtype=pd.StringDtype("pyarrow")),
        "image": pd.array([b"x", None, b"z"], dtype=pd.ArrowDtype(pa.binary())),
        "score": np.array([0.5, np.nan, 2.0], dtype=np.float32),  # added by a user's map_partitions: NaN is null
        "tags": [[1, 2], None, []],
        "flag": [True, False, True],
        7: [1, 2, 3],
    }, index=[10, 11, 12])
    table = Backend("pandas").to_arrow(frame)
    assert table.equals(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None))
    assert table.column_names == ["key", "image", "score", "tags", "flag", "7"]
    assert table.column("score").null_count == 1 and table.column("image").to_pylist() == [b"x", None, b"z"]
    back = Backend("pandas").from_arrow(table)
    assert back["key"].tolist()[::2] == ["a", "c"] and back["image"].tolist()[::2] == [b"x", b"z"]


def test_arrow_tables_become_the_frames_to_pandas_makes():
    from imgcurate.common.backend import _pandas_type
    from imgcurate.io.jsontext import JSON_TEXT

    table = pa.table({
        "key": pa.chunked_array([["a", None], ["c"]], pa.string()),  # two chunks, as a concatenated column has
        "long": pa.array(["x", "y", None], pa.large_string()),
        "image": pa.array([b"x", None, b"z"], pa.binary()),
        "n": pa.array([1, None, 3], pa.int64()),
        "extra": pa.array(['{"a": 1}', None, "[]"], pa.string()).cast(JSON_TEXT),
        "members": pa.array([[("seg.png", b"1")], None, []], pa.map_(pa.string(), pa.binary())),
        "flag": pa.array([True, None, False]),
    })
    for t in (table, table.slice(0, 0), table.rename_columns(["a", "b", "a", "c", "d", "e", "f"])):  # duplicate names too
        frame = Backend("pandas").from_arrow(t)
        pd.testing.assert_frame_equal(frame, t.to_pandas(types_mapper=_pandas_type))
        assert isinstance(frame.index, pd.RangeIndex)
