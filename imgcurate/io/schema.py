"""Turn the samples of one shard into an Arrow table with a fixed schema.

A Dask DataFrame needs one schema for all partitions before it reads them. The layout (which
JSON fields, sidecar columns and components exist, with which types) is inferred from the
first shard; every later shard is conformed to it:

* a field or column missing from a shard is null there;
* a value that does not fit its column's type, a JSON field or sidecar column the first shard
  did not have, or one named like a column the reader fills itself, goes into ``extra_json``;
* a component extension the first shard did not have goes into ``extra_members``.

Nested JSON values (objects, arrays) and fields of mixed types are stored as JSON text in
Arrow's JSON extension type, so the writer can restore them as JSON values and DuckDB sees
them as JSON.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..common import columns as C
from ..common.errors import Failure
from .jsontext import JSON_TEXT, json_default, parse_json
from .samples import Sample
from .tarindex import PlainShard



@dataclass(frozen=True)
class Layout:
    """The part of the frame schema that depends on the data (inferred from the first shard)."""

    json_fields: tuple[tuple[str, pa.DataType], ...] = ()
    sidecar_fields: tuple[tuple[str, pa.DataType], ...] = ()
    components: tuple[str, ...] = ()
    with_images: bool = True

    def arrow_schema(self) -> pa.Schema:
        fields = [pa.field(C.KEY, pa.string())]
        if self.with_images:
            fields.append(pa.field(C.IMAGE, pa.binary()))
        fields += [
            pa.field(C.IMAGE_EXT, pa.string()),
            pa.field(C.IMAGE_NBYTES, pa.int64()),
            pa.field(C.CAPTION, pa.string()),
            pa.field(C.CLS, pa.int64()),
        ]
        fields += [pa.field(name, typ) for name, typ in self.json_fields + self.sidecar_fields]
        fields += [pa.field(ext, pa.binary()) for ext in self.components]
        fields += [
            pa.field(C.EXTRA_JSON, JSON_TEXT),
            pa.field(C.EXTRA_MEMBERS, C.EXTRA_MEMBERS_TYPE),
            pa.field(C.SOURCE_SHARD, pa.string()),
            pa.field(C.SOURCE_INDEX, pa.int64()),
            pa.field(C.ERROR, pa.string()),
            pa.field(C.ERROR_MEMBER, pa.string()),
            pa.field(C.ERROR_DETAIL, pa.string()),
            pa.field(C.IMAGE_OFFSET, pa.int64()),
        ]
        return pa.schema(fields)


class _Rows:
    """Column lists for one shard, filled sample by sample.

    ``components`` (members beyond image, caption, class and JSON) and ``extra`` (values kept
    aside for ``extra_json``) are sparse, by row: most samples have neither.
    """

    def __init__(self):
        self.key, self.image, self.image_ext, self.image_nbytes, self.image_offset = [], [], [], [], []
        self.caption, self.cls, self.json = [], [], []
        self.components: dict[int, dict[str, Any]] = {}
        self.index: list[int] = []
        self.extra: defaultdict[int, dict[str, Any]] = defaultdict(dict)

    def __len__(self):
        return len(self.key)

    def as_lists(self) -> None:
        """Keys and captions as lists, where a plain shard left them as Arrow arrays: before
        gaps are filled or rows looked up value by value."""
        if isinstance(self.key, pa.Array):
            self.key = self.key.to_pylist()
        if isinstance(self.caption, pa.Array):
            self.caption = self.caption.to_pylist()


_JSON_DECODER = msgspec.json.Decoder()


def _json_object(data: bytes) -> dict[str, Any]:
    doc = parse_json(data)
    if not isinstance(doc, dict):
        raise ValueError(f"top-level value is {type(doc).__name__}, not an object")
    return doc


def _json_objects(items: pa.BinaryArray) -> list[dict[str, Any]]:
    """:func:`_json_object` of each item, in one msgspec call when every item is a single line
    (each line is parsed on its own, so one document can never run into the next); any doubt
    (a newline inside a document, an empty one, an error, something not an object) and every
    item is parsed by itself."""
    # joined by Arrow, without a bytes object per document
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(items)], pa.int32()), items), b"\n")[0].as_buffer()
    if np.count_nonzero(np.frombuffer(joined, dtype=np.uint8) == ord("\n")) == len(items) - 1:
        try:
            docs = _JSON_DECODER.decode_lines(joined)
        except msgspec.DecodeError:
            docs = None
        if docs is not None and len(docs) == len(items) and all(type(doc) is dict for doc in docs):
            return docs
    return [_json_object(item) for item in items.to_pylist()]


def _captions(items: pa.BinaryArray) -> pa.StringArray:
    """``.txt`` members as text: Arrow checks the UTF-8 as ``bytes.decode`` does, without a str
    per caption; ValueError when one is not UTF-8 (the shard is then decoded member by member,
    so the failure is reported in its place)."""
    try:
        return items.cast(pa.string())
    except pa.ArrowInvalid as exc:
        raise ValueError(str(exc)) from None


def _class_number(data: bytes) -> int:
    try:
        return int(data.strip())
    except ValueError:
        raise ValueError(f"not an integer: {data[:40]!r}") from None


# the members that become row fields: how each decodes (ValueError, with the failure's detail,
# when it does not) and the failure reason when it does not
_DECODERS: dict[str, tuple[Callable[[bytes], Any], str]] = {
    "txt": (lambda data: data.decode("utf-8"), "invalid_caption"),
    "cls": (_class_number, "invalid_cls"),
    "json": (_json_object, "invalid_json"),
}


def _component_value(ext: str, data: bytes, key: str, shard: str, failures: list[Failure]) -> Any:
    """A non-image member's value in its row: caption text (``txt``), class number (``cls``), JSON
    object (``json``), or the bytes of any other component; None, with a failure recorded, when the
    member cannot be decoded."""
    if ext not in _DECODERS:
        return data
    decode, reason = _DECODERS[ext]
    try:
        return decode(data)
    except ValueError as exc:  # UnicodeDecodeError and JSON errors included
        failures.append(Failure(reason, str(exc), shard=shard, member=f"{key}.{ext}", key=key))
        return None


_ROW_FIELDS = {"txt": "caption", "cls": "cls", "json": "json"}


def _decode_sample(sample: Sample, rows: _Rows, shard: str, failures: list[Failure], skip: frozenset[str]) -> None:
    image = sample.image
    fields: dict[str, Any] = {}
    others: dict[str, bytes] = {}
    for ext, member in sample.components.items():
        if member is image or ext in skip:
            continue
        value = _component_value(ext, member.data or b"", sample.key, shard, failures)
        if ext in _ROW_FIELDS:
            fields[_ROW_FIELDS[ext]] = value
        else:
            others[ext] = value
    rows.key.append(sample.key)
    rows.index.append(sample.index)
    rows.image.append(image.data if image is not None else None)
    rows.image_ext.append(sample.image_ext)
    rows.image_nbytes.append(image.size if image is not None else None)
    rows.image_offset.append(image.offset if image is not None and image.offset >= 0 else None)
    rows.caption.append(fields.get("caption"))
    rows.cls.append(fields.get("cls"))
    rows.json.append(fields.get("json"))
    if others:
        rows.components[len(rows.key) - 1] = others


def _decode_plain(shard_columns: PlainShard, rows: _Rows, shard: str, failures: list[Failure], skip: frozenset[str]) -> None:
    """:func:`_decode_sample` for every sample of a plain shard at once (the same rows and failures)."""
    n = len(shard_columns)
    rows.key, rows.index = shard_columns.keys, list(range(n))
    rows.image = shard_columns.images if shard_columns.images is not None else [None] * n
    rows.image_ext, rows.image_nbytes, rows.image_offset = (
        shard_columns.image_ext, shard_columns.image_nbytes, shard_columns.image_offset)
    try:
        columns, rows.components = _decode_by_extension(shard_columns, skip)
    except ValueError:
        # a member that does not decode: again member by member, so failures are reported in tar order
        columns, rows.components = {name: [None] * n for name in _ROW_FIELDS.values()}, {}
        keys, extensions = shard_columns.keys.to_pylist(), shard_columns.extensions
        for sample, code, data in zip(shard_columns.member_sample.tolist(), shard_columns.member_code.tolist(),
                                      shard_columns.member_data.to_pylist()):
            ext = extensions[code]
            if ext in skip:
                continue
            value = _component_value(ext, data, keys[sample], shard, failures)
            if ext in _ROW_FIELDS:
                columns[_ROW_FIELDS[ext]][sample] = value
            else:
                rows.components.setdefault(sample, {})[ext] = value
    rows.caption, rows.cls, rows.json = columns["caption"], columns["cls"], columns["json"]


def _decode_by_extension(shard_columns: PlainShard, skip: frozenset[str] = frozenset()
                         ) -> tuple[dict[str, list[Any]], dict[int, dict[str, Any]]]:
    """The caption, class and JSON columns, decoded one extension at a time, and each sample's
    other components (in tar order), leaving out the extensions in ``skip``; raises ValueError
    when any member does not decode."""
    n = len(shard_columns)
    columns: dict[str, list[Any]] = {name: [None] * n for name in _ROW_FIELDS.values()}
    data, extensions = shard_columns.member_data, shard_columns.extensions
    row_field_codes = [code for code, ext in enumerate(extensions) if ext in _ROW_FIELDS and ext not in skip]
    skipped_codes = [code for code, ext in enumerate(extensions) if ext in skip]
    for code in row_field_codes:
        members = np.flatnonzero(shard_columns.member_code == code)
        if len(members) == 0:
            continue
        ext = extensions[code]
        items = data.take(members)
        if ext == "json":
            values = _json_objects(items)
        elif ext == "txt":
            values = _captions(items)
        else:
            values = list(map(_DECODERS[ext][0], items.to_pylist()))
        if len(members) == n:  # in every sample (an extension appears once per sample)
            columns[_ROW_FIELDS[ext]] = values
        else:
            column = columns[_ROW_FIELDS[ext]]
            for sample, value in zip(shard_columns.member_sample[members].tolist(),
                                     values.to_pylist() if isinstance(values, pa.Array) else values):
                column[sample] = value
    components: dict[int, dict[str, Any]] = {}
    others = np.flatnonzero(~np.isin(shard_columns.member_code, row_field_codes + skipped_codes))
    if len(others):
        for member_data, sample, code in zip(data.take(others).to_pylist(), shard_columns.member_sample[others].tolist(),
                                             shard_columns.member_code[others].tolist()):
            components.setdefault(sample, {})[extensions[code]] = member_data
    return columns, components


def _fill_gap(rows: _Rows, i: int, name: str, value: Any) -> bool:
    """Use ``value`` for a missing caption or class; True when it was used or already there."""
    if name == C.CAPTION and isinstance(value, str):
        if rows.caption[i] is None:
            rows.caption[i] = value
        return rows.caption[i] == value
    if name == C.CLS and isinstance(value, int) and not isinstance(value, bool):
        if rows.cls[i] is None:
            rows.cls[i] = value
        return rows.cls[i] == value
    return name == C.KEY and value == rows.key[i]


def _claim_reserved(rows: _Rows, i: int, name: str, value: Any) -> None:
    """A .json field named like a reader column: fill a gap, drop if redundant, else keep aside."""
    if not _fill_gap(rows, i, name, value):
        rows.extra[i][name] = value


def _json_columns(rows: _Rows, reserved: set[str]) -> dict[str, list[Any]]:
    """The ``.json`` fields as columns, in order of first appearance; fields named like reader
    columns are claimed by their rows instead."""
    docs, n = rows.json, len(rows.json)
    if n and docs[0] is not None:
        # the usual shard: every sample's .json has the same fields in the same order
        names = tuple(docs[0])
        if not reserved.intersection(names) and all(doc is not None and tuple(doc) == names for doc in docs):
            return {name: [doc[name] for doc in docs] for name in names}
    columns: dict[str, list[Any]] = {}
    rows.as_lists()
    for i, doc in enumerate(docs):
        for name, value in (doc or {}).items():
            if name in reserved:
                _claim_reserved(rows, i, name, value)
                continue
            column = columns.get(name)
            if column is None:
                column = columns[name] = [None] * n
            column[i] = value
    return columns


def _infer_type(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    kinds = set(map(type, present))
    if dict in kinds or list in kinds:
        return JSON_TEXT
    try:
        typ = pa.array(present).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return JSON_TEXT
    if pa.types.is_null(typ):
        return pa.string()
    if typ == pa.int64() and bool in kinds:
        return JSON_TEXT  # bools mixed with ints
    return typ


_INT64_RANGE = range(-(2**63), 2**63)


def _fits(value: Any, typ: pa.DataType) -> bool:
    """Whether ``value`` converts to ``typ`` without loss.

    Checked by Python type first: Arrow's own conversion truncates 2.5 into an int64 column and
    turns True into 1.0, silently.
    """
    if typ == JSON_TEXT:
        return True
    if isinstance(value, bool):
        return pa.types.is_boolean(typ)
    if pa.types.is_boolean(typ):
        return False
    if pa.types.is_integer(typ):
        return isinstance(value, int) and (typ != pa.int64() or value in _INT64_RANGE) and _converts(value, typ)
    if pa.types.is_floating(typ):
        return isinstance(value, (int, float))
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return isinstance(value, str)
    return _converts(value, typ)


def _converts(value: Any, typ: pa.DataType) -> bool:
    try:
        pa.scalar(value, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return False
    return True


_EXACT_KINDS = {  # Python types whose values _fits accepts in these columns without further checks
    pa.int64(): frozenset({int}),
    pa.float64(): frozenset({int, float}),
    pa.string(): frozenset({str}),
    pa.bool_(): frozenset({bool}),
}


def _typed_column(values: list[Any], typ: pa.DataType, rows: _Rows, name: str) -> pa.Array:
    """Values as an array of ``typ``; values that do not fit go to the row's extras."""
    if typ == JSON_TEXT:
        text = [None if v is None else json.dumps(v, ensure_ascii=False, default=json_default) for v in values]
        return pa.array(text, pa.string()).cast(JSON_TEXT)
    # the common case: every value already of the column's own Python type (Arrow still refuses overflows)
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if kinds <= _EXACT_KINDS.get(typ, frozenset()):
        try:
            return pa.array(values, type=typ)
        except (pa.ArrowInvalid, OverflowError):
            pass
    fitted = []
    for i, value in enumerate(values):
        if value is None or _fits(value, typ):
            fitted.append(value)
        else:
            fitted.append(None)
            rows.extra[i][name] = value
    return pa.array(fitted, type=typ)


def shard_table(
    samples: Iterable[Sample] | PlainShard,
    failures: list[Failure],
    shard: str,
    *,
    with_images: bool,
    sidecar: pa.Table | None = None,
    layout: Layout | None = None,
    skip: frozenset[str] = frozenset(),
) -> tuple[pa.Table, Layout]:
    """Build the partition table of one shard (``failures`` gets the member failures found).

    ``samples`` are the shard's samples from the scanner, or the columns of a plain shard
    (:mod:`~imgcurate.io.tarindex`); both give the same table. With ``layout=None`` the layout is
    inferred from this shard and returned. The steps: decode the members into rows, join the
    sidecar, infer (or take) the layout, conform the values to it, build the Arrow table.
    Members with an extension in ``skip`` are not decoded (their columns are null, their decoding
    failures unseen): a read that projects those columns away.
    """
    rows = _decode_rows(samples, shard, failures, skip)
    reserved = set(C.READER_COLUMNS)
    json_values = _json_columns(rows, reserved)
    sidecar_values = _sidecar_columns(rows, sidecar)
    if layout is None:
        layout = infer_layout(rows, json_values, sidecar, sidecar_values, with_images)
    arrays = _conform(rows, json_values, sidecar_values, layout, reserved)
    return _table(rows, arrays, layout, failures, shard), layout


def _decode_rows(samples: Iterable[Sample] | PlainShard, shard: str, failures: list[Failure], skip: frozenset[str]) -> _Rows:
    rows = _Rows()
    if isinstance(samples, PlainShard):
        _decode_plain(samples, rows, shard, failures, skip)
    else:
        for sample in samples:
            _decode_sample(sample, rows, shard, failures, skip)
    return rows


def _sidecar_columns(rows: _Rows, sidecar: pa.Table | None) -> dict[str, list[Any]]:
    """Each sidecar column's values for the rows, joined on key (the first sidecar row of a key wins)."""
    if sidecar is None:
        return {}
    rows.as_lists()
    sidecar_rows = {k: j for j, k in reversed(list(enumerate(sidecar.column(C.KEY).to_pylist())))}
    lookup = [sidecar_rows.get(k) for k in rows.key]
    values: dict[str, list[Any]] = {}
    for name in sidecar.column_names:
        if name != C.KEY:
            column = sidecar.column(name).to_pylist()
            if sidecar.schema.field(name).type == JSON_TEXT:
                # JSON text (how a nested .json field is written beside the tar) stands for the value it encodes
                column = [_json_value(text) for text in column]
            values[name] = [None if j is None else column[j] for j in lookup]
    return values


def _json_value(text: str | None) -> Any:
    """The value JSON ``text`` encodes; text that is not JSON is kept as the string it is."""
    if text is None:
        return None
    try:
        return parse_json(text)
    except ValueError:
        return text


def infer_layout(rows: _Rows, json_values: dict[str, list[Any]], sidecar: pa.Table | None,
                 sidecar_values: dict[str, list[Any]], with_images: bool) -> Layout:
    """The layout of one shard: its JSON fields (types inferred from the values), its sidecar's
    columns (their Parquet types) and its other components, none named like a reader column."""
    reserved = set(C.READER_COLUMNS)
    seen_components = list(dict.fromkeys(ext for others in rows.components.values() for ext in others))
    components = tuple(ext for ext in seen_components
                       if ext not in reserved and ext not in json_values and ext not in sidecar_values)
    return Layout(
        json_fields=tuple((name, _infer_type(values)) for name, values in json_values.items() if name not in components),
        sidecar_fields=tuple(
            (name, sidecar.schema.field(name).type)
            for name in sidecar_values
            if name not in reserved and name not in json_values and name not in components
        ),
        components=components,
        with_images=with_images,
    )


def _conform(rows: _Rows, json_values: dict[str, list[Any]], sidecar_values: dict[str, list[Any]], layout: Layout,
             reserved: set[str]) -> dict[str, pa.Array]:
    """The layout's JSON and sidecar fields as typed arrays; what does not fit goes to the rows' extras.

    The same field in ``.json`` and sidecar: ``.json`` wins, the sidecar fills its gaps. Whatever the
    layout lacks is kept: ``.json`` values in ``extra_json`` (the tar member would otherwise be lost
    on rewrite); sidecar copies of reader columns only fill gaps (the sidecar file itself stays).
    """
    n = len(rows)
    json_values, sidecar_values = dict(json_values), dict(sidecar_values)
    arrays: dict[str, pa.Array] = {}
    for name, typ in layout.json_fields:
        values = json_values.pop(name, [None] * n)
        if name in sidecar_values:
            sidecar_column = sidecar_values.pop(name)
            if any(v is not None and s is not None and v != s for v, s in zip(values, sidecar_column)):
                _warn_disagreement(name)
            values = [s if v is None else v for v, s in zip(values, sidecar_column)]
        arrays[name] = _typed_column(values, typ, rows, name)
    for name, typ in layout.sidecar_fields:
        arrays[name] = _typed_column(sidecar_values.pop(name, [None] * n), typ, rows, name)
    for name, values in json_values.items():
        for i, value in enumerate(values):
            if value is not None:
                rows.extra[i].setdefault(name, value)
    for name, values in sidecar_values.items():
        for i, value in enumerate(values):
            if value is None:
                continue
            if name in reserved:
                _fill_gap(rows, i, name, value)
            else:
                rows.extra[i].setdefault(name, value)
    return arrays


_WARNED_DISAGREEMENT: set[str] = set()


def _warn_disagreement(name: str) -> None:
    """Say once per process (and field) that a sample's .json and its sidecar row disagree, and which wins."""
    if name not in _WARNED_DISAGREEMENT:
        _WARNED_DISAGREEMENT.add(name)
        warnings.warn(f"field {name!r} differs between samples' .json and their sidecar Parquet row: the .json value "
                      "is kept (the sidecar only fills values the .json lacks)", UserWarning, stacklevel=2)


def _split_components(rows: _Rows, layout: Layout) -> tuple[dict[str, list[Any]], list[list[tuple[str, bytes]] | None]]:
    """The layout's component columns, and each row's other components (for ``extra_members``)."""
    n = len(rows)
    extra_members: list[list[tuple[str, bytes]] | None] = [None] * n
    component_values: dict[str, list[Any]] = {ext: [None] * n for ext in layout.components}
    for i, others in rows.components.items():
        leftovers = []
        for ext, data in others.items():
            if ext in component_values:
                component_values[ext][i] = data
            else:
                leftovers.append((ext, data))
        extra_members[i] = leftovers or None
    return component_values, extra_members


def _table(rows: _Rows, arrays: dict[str, pa.Array], layout: Layout, failures: list[Failure], shard: str) -> pa.Table:
    """The partition table: one row per sample, then one failure row per failure, in the layout's schema."""
    n, n_fail = len(rows), len(failures)
    component_values, extra_members = _split_components(rows, layout)
    extra_json: list[str | None] = [None] * n
    for i, extra in rows.extra.items():
        if extra:
            extra_json[i] = json.dumps(extra, ensure_ascii=False, default=json_default)
    pad = [None] * n_fail
    table_columns: dict[str, pa.Array | list] = {
        C.KEY: _extend(rows.key, [f.key for f in failures]),
        C.IMAGE: _pad(rows.image, n_fail),
        C.IMAGE_EXT: _pad(rows.image_ext, n_fail),
        C.IMAGE_NBYTES: _pad(rows.image_nbytes, n_fail),
        C.CAPTION: _pad(rows.caption, n_fail),
        C.CLS: rows.cls + pad,
        **{name: _pad(array, n_fail) for name, array in arrays.items()},
        **{ext: values + pad for ext, values in component_values.items()},
        C.EXTRA_JSON: pa.array(extra_json + pad, pa.string()).cast(JSON_TEXT),
        C.EXTRA_MEMBERS: pa.array(extra_members + pad, C.EXTRA_MEMBERS_TYPE),
        C.SOURCE_SHARD: pa.repeat(pa.scalar(shard, pa.string()), n + n_fail),
        C.SOURCE_INDEX: rows.index + pad,
        C.ERROR: [None] * n + [f.reason for f in failures],
        C.ERROR_MEMBER: [None] * n + [f.member for f in failures],
        C.ERROR_DETAIL: [None] * n + [f.detail for f in failures],
        C.IMAGE_OFFSET: _pad(rows.image_offset, n_fail),
    }
    schema = layout.arrow_schema()
    return pa.Table.from_arrays(
        [pa.array(table_columns[f.name], type=f.type) if isinstance(table_columns[f.name], list) else table_columns[f.name]
         for f in schema],
        schema=schema,
    )


def merge_layouts(layouts: list[Layout]) -> Layout:
    """One layout holding every field of ``layouts``; a field typed differently becomes JSON text."""

    def merge_fields(groups):
        merged: dict[str, pa.DataType] = {}
        for fields in groups:
            for name, typ in fields:
                if name not in merged:
                    merged[name] = typ
                elif merged[name] != typ:
                    numeric = pa.types.is_integer(merged[name]) and pa.types.is_floating(typ)
                    merged[name] = typ if numeric else (merged[name] if pa.types.is_floating(merged[name]) and pa.types.is_integer(typ) else JSON_TEXT)
        return tuple(merged.items())

    json_fields = merge_fields(layout.json_fields for layout in layouts)
    json_names = {name for name, _ in json_fields}
    components = tuple(dict.fromkeys(ext for layout in layouts for ext in layout.components if ext not in json_names))
    sidecar_fields = tuple(
        (name, typ) for name, typ in merge_fields(layout.sidecar_fields for layout in layouts)
        if name not in json_names and name not in components
    )
    return Layout(json_fields, sidecar_fields, components, with_images=layouts[0].with_images)


def _extend(values: pa.Array | list, more: list) -> pa.Array | list:
    """``values`` (an Arrow array from a plain shard, or a list of a scanned shard's rows) with
    ``more`` after them."""
    if isinstance(values, list):
        return values + more
    return pa.concat_arrays([values, pa.array(more, values.type)]) if more else values


def _pad(values: pa.Array | list, n: int) -> pa.Array | list:
    """``values`` and ``n`` nulls after them (the failure rows)."""
    return _extend(values, [None] * n)
