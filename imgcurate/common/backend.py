"""The one place that chooses where data lives and where work runs.

* dataframe library: ``"pandas"`` (CPU) or ``"cudf"`` (GPU); partitions are built as Arrow
  tables and converted here, so partition code never branches on the library;
* array library: numpy or cupy, matching the dataframe library;
* torch device, precision and batch size of a model: ``"cuda"`` (bf16, large batches) when a GPU
  is visible on the machine that runs the model, else ``"cpu"`` (fp32, small batches). Models
  call :func:`model_runtime` when they run, on the worker, never when the graph is built: a
  client without a GPU must not send CPU settings to GPU workers, nor the reverse;
* the image decoder that feeds a model (:func:`decoder_for`: nvJPEG for a model on a GPU) and the
  kind of local cluster a job starts (:func:`cuda_cluster_wanted`).

cuDF holds fewer Arrow types than pandas does (no binary, maps, fixed-size lists or extension
types). On the cudf backend every column is held as a type cuDF documents (:func:`to_cudf_layout`:
binary as ``list<uint8>``, maps as lists of key/value structs, JSON as text, embeddings as lists)
and :meth:`Backend.to_arrow` gives the original table back exactly (:func:`from_cudf_layout`).
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import columns as C

BACKENDS = ("pandas", "cudf")


def _pandas_type(arrow_type: pa.DataType):
    if arrow_type == pa.string() or arrow_type == pa.large_string():
        return pd.StringDtype("pyarrow")
    return pd.ArrowDtype(arrow_type)


def _pandas_array(column: pa.ChunkedArray):
    """The pandas array of the dtype :func:`_pandas_type` gives, holding ``column`` without a copy."""
    if column.type == pa.string() or column.type == pa.large_string():
        return pd.arrays.ArrowStringArray(column)
    return pd.arrays.ArrowExtensionArray(column)


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def cudf_available() -> bool:
    return importlib.util.find_spec("cudf") is not None and cuda_available()


@dataclass(frozen=True)
class Backend:
    name: str = "pandas"

    def __post_init__(self):
        if self.name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.name!r}")
        if self.name == "cudf" and not cudf_available():
            raise RuntimeError(
                "backend='cudf' needs a CUDA GPU and cuDF: pip install 'imgcurate[gpu]' on a GPU machine"
            )

    @property
    def xp(self) -> Any:
        """numpy or cupy."""
        if self.name == "cudf":
            import cupy

            return cupy
        return np

    def from_arrow(self, table: pa.Table):
        if self.name == "cudf":
            import cudf

            return cudf.DataFrame.from_arrow(to_cudf_layout(table))
        if len(set(table.column_names)) < table.num_columns:
            return table.to_pandas(types_mapper=_pandas_type, self_destruct=False)
        # each column wrapped as it is, without to_pandas' metadata and block machinery (0.33 -> 0.20
        # ms for a reader partition; the same frame)
        return pd.DataFrame({name: _pandas_array(column) for name, column in zip(table.column_names, table.columns)},
                            copy=False)

    def to_arrow(self, frame) -> pa.Table:
        if self.name == "cudf":
            return from_cudf_layout(frame.to_arrow(preserve_index=False))
        # Arrow-backed columns hand over their arrays as they are (from_pandas costs twice as much on
        # the reader's frames); other columns convert with pandas' rules (NaN is null)
        return pa.Table.from_arrays(
            [series.array.__arrow_array__() if isinstance(series.array, pd.arrays.ArrowExtensionArray) else pa.array(series)
             for _, series in frame.items()],
            names=[str(name) for name in frame.columns],
        )

    def meta(self, schema: pa.Schema):
        return self.from_arrow(schema.empty_table())


def backend_of(frame) -> Backend:
    """The backend a (pandas or cuDF, partition or Dask) frame lives on."""
    meta = getattr(frame, "_meta", frame)
    return Backend("cudf" if type(meta).__module__.startswith("cudf") else "pandas")


def resolve_backend(backend: str | None = None) -> Backend:
    """``None``/``"auto"``: cuDF when a GPU and cuDF are present, else pandas."""
    if backend in (None, "auto"):
        return Backend("cudf" if cudf_available() else "pandas")
    return Backend(backend)


def torch_device(device: str | None = None) -> str:
    """``None`` picks CUDA when present on this machine; an explicit device is kept as given."""
    if device is not None:
        return device
    return "cuda" if cuda_available() else "cpu"


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs on this machine."""

    device: str
    precision: str
    batch_size: int

    @property
    def on_gpu(self) -> bool:
        return is_gpu_device(self.device)


def check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def model_runtime(device: str | None, precision: str | None, batch_size: int | None, *,
                  gpu_batch_size: int, cpu_batch_size: int) -> Runtime:
    """A model's runtime on the machine calling this (a worker): ``None`` choices are made here,
    CUDA with bf16 and ``gpu_batch_size`` when a GPU is visible, else CPU with fp32 and ``cpu_batch_size``."""
    chosen = torch_device(device)
    on_gpu = is_gpu_device(chosen)
    return Runtime(chosen, precision or ("bf16" if on_gpu else "fp32"), batch_size or (gpu_batch_size if on_gpu else cpu_batch_size))


def is_gpu_device(device: str | None) -> bool:
    """Whether a torch device string names a CUDA device (``"cuda"``, ``"cuda:1"``)."""
    return device is not None and str(device).split(":", 1)[0] == "cuda"


def decoder_for(device: str) -> str:
    """Which image decoder feeds a model on ``device``: ``"nvjpeg"`` (JPEGs decoded on that GPU, the
    rest on the CPU, see :mod:`imgcurate.ops.decode`) or ``"cpu"`` (the thread pool)."""
    return "nvjpeg" if is_gpu_device(device) else "cpu"


def cuda_cluster_wanted() -> bool:
    """Whether a job started without a scheduler should run on a ``LocalCUDACluster``: when this
    machine has a GPU (dask-cuda itself is imported by :mod:`imgcurate.common.cluster`)."""
    return cuda_available()


def arrow_mask(values) -> pa.Array:
    """A boolean Arrow mask from pandas, cuDF, numpy, cupy or Arrow values; missing means false."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        mask = values
    elif hasattr(values, "to_arrow"):  # cuDF
        mask = values.to_arrow()
    elif type(values).__module__.startswith("cupy"):
        mask = pa.array(values.get())
    else:
        mask = pa.array(values, from_pandas=True)
    return pc.fill_null(mask.cast(pa.bool_()), False)


# ---------------------------------------------------------------------------------------
# The cuDF layout: partitions as cuDF can hold them, and back, exactly
#
# What cuDF holds, as Arrow types: cuDF 26.10's "Supported Data Types" (docs.nvidia.com/cudf/26.10/cudf/
# data-types/index.html, docs/cudf/source/cudf/data-types.md in rapidsai/cudf): signed and unsigned
# integers, float32 and float64, datetime (s, ms, us, ns; with a time zone too), timedelta, category
# (Arrow dictionaries), string, decimal32/64/128, list and struct; and bool, which that table leaves out
# but cuDF's API uses throughout (libcudf BOOL8). libcudf's Arrow import (cpp/src/interop/
# arrow_utilities.cpp) maps these and fails on the rest: binary, fixed-size lists, maps and dates are not
# among them, and extension types (Arrow's JSON) arrive as their storage with the extension's name lost.
CUDF_LEAF_TYPES = frozenset([
    pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
    pa.float32(), pa.float64(), pa.bool_(), pa.string(),
])
CUDF_TYPES_DOC = "https://docs.nvidia.com/cudf/26.10/cudf/data-types/index.html"
BYTES = pa.list_(pa.uint8())  # how cuDF holds binary values
# The original Arrow schema travels in the frame as a categorical column whose one category is that schema
# (IPC-serialised, base64): cuDF drops Arrow metadata, returns all-null and empty nested columns as Arrow's
# null type, and keeps a categorical's categories through masks, serialisation and empty frames (Dask's meta).
ARROW_SCHEMA = C.ARROW_SCHEMA
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")


def cudf_holds(arrow_type: pa.DataType) -> bool:
    """Whether ``arrow_type`` is one of the types cuDF documents (see :data:`CUDF_LEAF_TYPES`), nested ones included."""
    if arrow_type in CUDF_LEAF_TYPES or pa.types.is_timestamp(arrow_type) or pa.types.is_duration(arrow_type):
        return True
    if isinstance(arrow_type, (pa.Decimal32Type, pa.Decimal64Type, pa.Decimal128Type)):
        return True
    if pa.types.is_list(arrow_type):
        return cudf_holds(arrow_type.value_type)
    if pa.types.is_struct(arrow_type):
        return all(cudf_holds(field.type) for field in arrow_type)
    if pa.types.is_dictionary(arrow_type):
        return pa.types.is_integer(arrow_type.index_type) and arrow_type.value_type in CUDF_LEAF_TYPES
    return False


def _is_binary_like(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
            or pa.types.is_fixed_size_binary(arrow_type) or pa.types.is_binary_view(arrow_type))


def _is_list_like(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)
            or pa.types.is_list_view(arrow_type) or pa.types.is_large_list_view(arrow_type))


_PHYSICAL = {pa.date32(): pa.int32(), pa.date64(): pa.int64(), pa.float16(): pa.float32(), pa.null(): pa.string()}


def cudf_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type a column of ``arrow_type`` has in the cuDF layout: binary as ``list<uint8>``, maps as
    ``list<struct<key, value>>``, fixed-size and large lists as lists, extension types as their storage,
    large strings as strings, dates and times as their integers; TypeError where there is no such type."""
    if isinstance(arrow_type, pa.BaseExtensionType):
        return cudf_type(arrow_type.storage_type)
    if pa.types.is_map(arrow_type):
        return pa.list_(pa.struct([("key", cudf_type(arrow_type.key_type)), ("value", cudf_type(arrow_type.item_type))]))
    if _is_list_like(arrow_type):
        return pa.list_(cudf_type(arrow_type.value_type))
    if pa.types.is_struct(arrow_type):
        return pa.struct([(field.name, cudf_type(field.type)) for field in arrow_type])
    if pa.types.is_dictionary(arrow_type) and not cudf_holds(arrow_type):
        return cudf_type(arrow_type.value_type)
    if _is_binary_like(arrow_type):
        return BYTES
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return pa.string()
    if pa.types.is_time32(arrow_type) or pa.types.is_time64(arrow_type):
        return pa.int32() if pa.types.is_time32(arrow_type) else pa.int64()
    if arrow_type in _PHYSICAL:
        return _PHYSICAL[arrow_type]
    if cudf_holds(arrow_type):
        return arrow_type
    raise TypeError(f"cuDF has no column type for Arrow's {arrow_type}")


def _null_mask(array: pa.Array) -> pa.Array | None:
    return array.is_null() if array.null_count else None


def _list_offsets(array: pa.Array) -> pa.Array:
    """Offsets (int32, from 0) of the valid lists of a list-like ``array``, as ``array.flatten()`` lays their values out."""
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    return pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32), pa.int32())


def _to_cudf_array(array: pa.Array) -> pa.Array:
    """One chunk in the cuDF layout (its type is :func:`cudf_type` of its own)."""
    arrow_type = array.type
    if isinstance(arrow_type, pa.BaseExtensionType):
        return _to_cudf_array(array.storage)
    if pa.types.is_map(arrow_type):
        entries = pa.struct([pa.field("key", arrow_type.key_type, nullable=False), ("value", arrow_type.item_type)])
        return _to_cudf_array(array.cast(pa.list_(entries)))
    if pa.types.is_list_view(arrow_type) or pa.types.is_large_list_view(arrow_type):
        return _to_cudf_array(array.cast(pa.list_(arrow_type.value_field)))
    if _is_list_like(arrow_type):
        return pa.ListArray.from_arrays(_list_offsets(array), _to_cudf_array(array.flatten()), mask=_null_mask(array))
    if pa.types.is_struct(arrow_type):
        children = [_to_cudf_array(child) for child in array.flatten()]
        return pa.StructArray.from_arrays(children, fields=[pa.field(f.name, c.type) for f, c in zip(arrow_type, children)],
                                          mask=_null_mask(array))
    target = cudf_type(arrow_type)
    if pa.types.is_dictionary(arrow_type) and target != arrow_type:
        return _to_cudf_array(array.dictionary_decode())
    if target == BYTES:
        return _binary_chunk_to_list(array if pa.types.is_binary(arrow_type) else array.cast(pa.binary()))
    return array if target == arrow_type else array.cast(target)


def _from_cudf_array(array: pa.Array, target: pa.DataType) -> pa.Array:
    """A chunk of what cuDF hands back (its layout, with all-null nested values as Arrow's null type) as ``target``."""
    if array.type == target:
        return array
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), target)
    if pa.types.is_null(target) and array.null_count == len(array):
        return pa.nulls(len(array))
    if isinstance(target, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(target, _from_cudf_array(array, target.storage_type))
    if _is_binary_like(target):
        values = _list_chunk_to_binary(array) if array.type == BYTES else array.cast(pa.binary())
        return values if pa.types.is_binary(target) else values.cast(target)
    if pa.types.is_large_list(array.type):
        array = array.cast(pa.list_(array.type.value_field))
    if pa.types.is_map(target):
        entries = _from_cudf_array(array.flatten(), pa.struct([("key", target.key_type), ("value", target.item_type)]))
        return pa.MapArray.from_arrays(_list_offsets(array), entries.field(0), entries.field(1), type=target,
                                       mask=_null_mask(array))
    if _is_list_like(target):
        values = _from_cudf_array(array.flatten(), target.value_type)
        lists = pa.ListArray.from_arrays(_list_offsets(array), values, type=pa.list_(target.value_field), mask=_null_mask(array))
        return lists if pa.types.is_list(target) else lists.cast(target)
    if pa.types.is_struct(target):
        children = [_from_cudf_array(child, field.type) for child, field in zip(array.flatten(), target)]
        return pa.StructArray.from_arrays(children, fields=list(target), mask=_null_mask(array))
    return array.cast(target)


def _without_pandas_index(table: pa.Table) -> pa.Table:
    """``table`` without the index columns pandas and cuDF add (``__index_level_0__`` after a mask) and without schema metadata."""
    index = {name for name in (table.schema.pandas_metadata or {}).get("index_columns", []) if isinstance(name, str)}
    drop = [name for name in table.column_names if name in index or _PANDAS_INDEX.fullmatch(name)]
    return table.drop_columns(drop).replace_schema_metadata(None)


def _schema_column(schema: pa.Schema, n: int) -> pa.DictionaryArray:
    blob = base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([blob], pa.string()))


def _schema_from(column: pa.ChunkedArray) -> pa.Schema | None:
    if not pa.types.is_dictionary(column.type) or column.num_chunks == 0 or len(column.chunk(0).dictionary) != 1:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(column.chunk(0).dictionary[0].as_py())))
    except (pa.ArrowException, ValueError, TypeError):
        return None


def to_cudf_layout(table: pa.Table) -> pa.Table:
    """``table`` with every column of a type cuDF holds (:func:`cudf_type`), the pandas index dropped, and its
    schema in the :data:`ARROW_SCHEMA` column so that :func:`from_cudf_layout` gives ``table`` back."""
    table = _without_pandas_index(table)
    if ARROW_SCHEMA in table.column_names:
        table = table.drop_columns([ARROW_SCHEMA])
    columns = [pa.chunked_array([_to_cudf_array(chunk) for chunk in column.chunks], type=cudf_type(column.type))
               for column in table.columns]
    return pa.Table.from_arrays([*columns, _schema_column(table.schema, table.num_rows)],
                                names=[*table.column_names, ARROW_SCHEMA])


def from_cudf_layout(table: pa.Table) -> pa.Table:
    """The Arrow table a cuDF frame in :func:`to_cudf_layout`'s layout stands for (``frame.to_arrow()``
    in, without its index). Columns the stored schema names come back as they were; columns a user
    added or changed keep what cuDF gives, ``list<uint8>`` as binary."""
    table = _without_pandas_index(table)
    schema = None
    if ARROW_SCHEMA in table.column_names:
        schema = _schema_from(table.column(ARROW_SCHEMA))
        table = table.drop_columns([ARROW_SCHEMA])
    known = {} if schema is None else {f.name: f for f in schema if schema.get_all_field_indices(f.name) == [schema.get_field_index(f.name)]}
    fields, columns = [], []
    for name, column in zip(table.column_names, table.columns):
        field = known.get(name)
        try:
            restored = None if field is None else pa.chunked_array(
                [_from_cudf_array(chunk, field.type) for chunk in column.chunks], type=field.type)
        except (pa.ArrowException, TypeError, ValueError):  # a user's own values under that name
            restored = None
        if restored is None:
            field = pa.field(name, pa.binary() if column.type == BYTES else column.type)
            restored = pa.chunked_array([_list_chunk_to_binary(chunk) for chunk in column.chunks], type=pa.binary()) \
                if column.type == BYTES else column
        fields.append(field)
        columns.append(restored)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _binary_chunk_to_list(chunk: pa.BinaryArray) -> pa.ListArray:
    validity, offsets, data = chunk.buffers()
    offsets_array = pa.Array.from_buffers(pa.int32(), len(chunk) + 1, [None, offsets], offset=chunk.offset)
    start, end = offsets_array[0].as_py(), offsets_array[-1].as_py()
    # rebase a sliced chunk so its offsets start at 0 (Arrow needs that alongside a null mask)
    offsets_array = pc.subtract(offsets_array, pa.scalar(start, pa.int32()))
    values = pa.Array.from_buffers(pa.uint8(), end - start, [None, data or pa.py_buffer(b"")], offset=start)
    return pa.ListArray.from_arrays(offsets_array, values, mask=chunk.is_null() if chunk.null_count else None)


def _list_chunk_to_binary(chunk: pa.ListArray) -> pa.BinaryArray:
    values = chunk.values
    data = values.buffers()[1] or pa.py_buffer(b"")
    if values.offset:
        data = data.slice(values.offset)
    validity, offsets = chunk.buffers()[:2]
    return pa.Array.from_buffers(pa.binary(), len(chunk), [validity, offsets, data], offset=chunk.offset)
