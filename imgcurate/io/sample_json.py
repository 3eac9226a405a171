"""The ``.json`` member a writer puts in each sample: the row's metadata as one JSON object.

The reader's inverse (:mod:`~imgcurate.io.schema`) turned a sample's ``.json`` into typed columns
and kept what did not fit in ``extra_json``; here both are merged back into one document.
Columns of JSON's own types are encoded by msgspec (compact separators, one call per shard);
other types (timestamps, decimals, …) go through ``json.dumps`` with :func:`json_default`.
JSON has no NaN or infinity: they become null.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from ..common import columns as C
from .jsontext import JSON_TEXT, json_default, parse_json

_ENCODER = msgspec.json.Encoder()  # NaN and infinities (nested in lists or structs) become null


def _json_text(column: pa.ChunkedArray) -> list[str | None]:
    return [v for chunk in column.chunks for v in chunk.storage.to_pylist()]


def _plain_json_type(typ: pa.DataType) -> bool:
    """Whether values of ``typ`` come out of ``to_pylist`` as JSON's own types (str, int, float, bool, None, list, dict)."""
    if typ == JSON_TEXT or any(is_type(typ) for is_type in (
            pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
            pa.types.is_boolean, pa.types.is_null)):
        return True
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return _plain_json_type(typ.value_type)
    if pa.types.is_struct(typ):
        return all(_plain_json_type(typ.field(i).type) for i in range(typ.num_fields))
    return False


def _encode(doc: dict[str, Any], plain: bool) -> bytes:
    if plain:
        try:
            return _ENCODER.encode(doc)
        except UnicodeEncodeError:  # a lone surrogate (from a \ud800 escape): written escaped below
            pass
    try:
        text = json.dumps(doc, ensure_ascii=False, default=json_default, allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(doc, default=json_default, allow_nan=False).encode("ascii")


def sample_json_documents(rows: pa.Table, components: list[str]) -> list[bytes]:
    """The ``.json`` member of each row: its metadata columns (not those in ``components``, which
    are members of their own), with ``extra_json`` merged back."""
    fields = [
        f for f in rows.schema
        if f.name not in C.NOT_IN_SAMPLE_JSON and not C.is_internal(f.name) and f.name not in components
        and not pa.types.is_binary(f.type) and not pa.types.is_large_binary(f.type)
    ]
    plain = all(_plain_json_type(f.type) for f in fields)
    columns = []
    for f in fields:
        column = rows.column(f.name)
        if column.type == JSON_TEXT:
            columns.append([None if v is None else parse_json(v) for v in _json_text(column)])
        elif pa.types.is_floating(column.type):  # JSON has no NaN or infinity: null instead
            columns.append(pc.if_else(pc.is_finite(column), column, None).to_pylist())
        else:
            columns.append(column.to_pylist())
    names = [f.name for f in fields]
    docs = [dict(zip(names, values)) for values in zip(*columns)] if columns else [{} for _ in range(len(rows))]
    if C.EXTRA_JSON in rows.column_names:
        for doc, extra in zip(docs, _json_text(rows.column(C.EXTRA_JSON))):
            if extra is not None:
                for name, value in parse_json(extra).items():
                    doc.setdefault(name, value)
    if plain:
        try:  # one call for the shard: msgspec never writes a raw newline inside a document
            return _ENCODER.encode_lines(docs).split(b"\n")[:-1]
        except UnicodeEncodeError:  # a lone surrogate somewhere: document by document below
            pass
    return [_encode(doc, plain) for doc in docs]
