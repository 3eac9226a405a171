"""The one place that chooses where data lives and where models run.

* dataframe library: ``"pandas"`` (CPU) or ``"cudf"`` (GPU); partitions are built as Arrow
  tables and converted here, so partition code never branches on the library;
* array library: numpy or cupy, matching the dataframe library;
* torch device, precision and batch size of a model: ``"cuda"`` (bf16, large batches) when a GPU
  is visible on the machine that runs the model, else ``"cpu"`` (fp32, small batches). Models
  call :func:`model_runtime` when they run, on the worker, never when the graph is built: a
  client without a GPU must not send CPU settings to GPU workers, nor the reverse.

cuDF has no binary column type, so on the cudf backend bytes columns (``image``, other
components) travel as ``list<uint8>``; :meth:`Backend.to_arrow` turns them back into binary.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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

            return cudf.DataFrame.from_arrow(_binary_to_lists(table))
        if len(set(table.column_names)) < table.num_columns:
            return table.to_pandas(types_mapper=_pandas_type, self_destruct=False)
        # each column wrapped as it is, without to_pandas' metadata and block machinery (0.33 -> 0.20
        # ms for a reader partition; the same frame)
        return pd.DataFrame({name: _pandas_array(column) for name, column in zip(table.column_names, table.columns)},
                            copy=False)

    def to_arrow(self, frame) -> pa.Table:
        if self.name == "cudf":
            return _lists_to_binary(frame.to_arrow())
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
        return self.device.startswith("cuda")


def check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def model_runtime(device: str | None, precision: str | None, batch_size: int | None, *,
                  gpu_batch_size: int, cpu_batch_size: int) -> Runtime:
    """A model's runtime on the machine calling this (a worker): ``None`` choices are made here,
    CUDA with bf16 and ``gpu_batch_size`` when a GPU is visible, else CPU with fp32 and ``cpu_batch_size``."""
    chosen = torch_device(device)
    on_gpu = chosen.startswith("cuda")
    return Runtime(chosen, precision or ("bf16" if on_gpu else "fp32"), batch_size or (gpu_batch_size if on_gpu else cpu_batch_size))


def _binary_to_lists(table: pa.Table) -> pa.Table:
    columns = []
    for column in table.columns:
        if pa.types.is_binary(column.type):
            column = pa.chunked_array(
                [_binary_chunk_to_list(chunk) for chunk in column.chunks], type=pa.list_(pa.uint8())
            )
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


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


def _lists_to_binary(table: pa.Table) -> pa.Table:
    columns = []
    for column in table.columns:
        if column.type == pa.list_(pa.uint8()):
            column = pa.chunked_array([_list_chunk_to_binary(c) for c in column.chunks], type=pa.binary())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)
