"""Look at samples in Jupyter: a grid of thumbnails with key, caption and scores.

:func:`show` takes a pandas or Dask DataFrame (only its first rows are computed), an imgcurate
output directory, or the result of a write. Thumbnails are small JPEG data URIs, so the HTML is
self-contained. Image bytes come from the ``image`` column when the frame carries them, else by
byte range from the source shard (``_image_offset``, recorded by ``read_webdataset``), else by
looking the member up in a tar: the output shard for an output directory, the source shard for
a frame of written metadata (which no longer knows offsets). Failure rows show their reason.

The same pieces render :class:`~imgcurate.io.writer.WriteResult` and
:class:`~imgcurate.stages.pipeline.PipelineResult` as tables in a notebook.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

from ..common import columns as C

THUMBNAIL_PX = 128
DEFAULT_COLUMNS = (C.CAPTION, C.AESTHETIC_SCORE, C.NSFW_SCORE, C.DROPPED_BY)
CAPTION_CHARS = 90

# Inline styles only: notebook front ends may drop <style> elements from outputs.
_GRID_STYLE = "display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;font:12px/1.35 sans-serif"
_TILE_STYLE = "margin:0;padding:6px;border:1px solid #ddd;border-radius:4px;background:#fff;color:#222;overflow-wrap:anywhere"
_BOX_STYLE = f"width:{THUMBNAIL_PX}px;height:{THUMBNAIL_PX}px;display:flex;align-items:center;justify-content:center;margin:0 auto 4px"
_PROBLEM_STYLE = (f"{_BOX_STYLE};background:#fdecea;color:#8a1c12;border:1px dashed #d9534f;font-size:11px;"
                  "text-align:center;overflow:hidden;padding:4px;box-sizing:border-box")
_TABLE_STYLE = "border-collapse:collapse;font:12px sans-serif"
_CELL_STYLE = "border:1px solid #ddd;padding:2px 8px;text-align:right"


@dataclass
class Tile:
    """One sample in a gallery: a thumbnail (or why there is none) and a few labelled values."""

    key: str | None
    fields: list[tuple[str, str]] = field(default_factory=list)
    thumbnail: str | None = None  # a data: URI
    problem: str | None = None


class Gallery:
    """Thumbnails of a few samples; displays as HTML in Jupyter."""

    def __init__(self, tiles: list[Tile], title: str | None = None):
        self.tiles = tiles
        self.title = title

    def __len__(self) -> int:
        return len(self.tiles)

    def _repr_html_(self) -> str:
        heading = f"<div style='font:bold 13px sans-serif;margin:4px 0'>{html.escape(self.title)}</div>" if self.title else ""
        return heading + gallery_html(self.tiles)

    def __repr__(self) -> str:
        lines = [f"Gallery of {len(self.tiles)} samples" + (f": {self.title}" if self.title else "")]
        for tile in self.tiles:
            values = ", ".join(f"{name}={value}" for name, value in tile.fields)
            lines.append(f"  {tile.key}: {values}" + (f" [no image: {tile.problem}]" if tile.problem else ""))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Thumbnails


def thumbnail_uri(data: bytes, size: int = THUMBNAIL_PX) -> str:
    """A JPEG data URI of ``data`` scaled to fit ``size`` pixels; raises ValueError when it cannot be decoded."""
    from ..ops.decode import DEFAULT_MAX_PIXELS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > DEFAULT_MAX_PIXELS:
                raise ValueError(f"{width}x{height} pixels is too large to show")
            image.draft("RGB", (size, size))  # JPEG: let libjpeg downscale while decoding
            image = ImageOps.exif_transpose(image)
            image.thumbnail((size, size))
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, (255, 255, 255))
                image.paste(rgba, mask=rgba.getchannel("A"))
            image = image.convert("RGB")
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=80)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"cannot decode: {exc}") from exc
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    text = str(value)
    return text if len(text) <= CAPTION_CHARS else text[: CAPTION_CHARS - 1] + "…"


def gallery_html(tiles: Sequence[Tile]) -> str:
    if not tiles:
        return "<p style='font:12px sans-serif;color:#666'>(no samples)</p>"
    parts = [f"<div class='imgcurate-gallery' style='{_GRID_STYLE}'>"]
    for tile in tiles:
        key = html.escape(str(tile.key))
        if tile.thumbnail:
            picture = f"<div style='{_BOX_STYLE}'><img src='{tile.thumbnail}' alt='{key}' style='max-width:100%;max-height:100%'></div>"
        else:
            picture = f"<div style='{_PROBLEM_STYLE}'>{html.escape(tile.problem or 'no image')}</div>"
        lines = [f"<b>{key}</b>"] + [
            f"<span style='color:#666'>{html.escape(name)}</span> {html.escape(value)}" for name, value in tile.fields if value
        ]
        parts.append(f"<figure style='{_TILE_STYLE}'>{picture}<figcaption>{'<br>'.join(lines)}</figcaption></figure>")
    parts.append("</div>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------
# Finding image bytes


def tar_members(url: str, names: Iterable[str], storage_options: dict | None = None) -> dict[str, bytes]:
    """The bytes of the named members of one tar, read by walking its headers (other data is skipped)."""
    from ..io.paths import filesystem
    from ..io.tar import TarFormatError, is_compressed_shard, iter_tar, open_shard_stream

    wanted = set(names)
    found: dict[str, bytes] = {}
    if not wanted:
        return found
    fs, path = filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as raw:
            total = None if is_compressed_shard(url) else fs.size(path)
            for member in iter_tar(open_shard_stream(raw, url), want_data=wanted.__contains__, total_size=total):
                if member.data is not None:
                    found[member.name] = member.data
                    if len(found) == len(wanted):
                        break
    except (OSError, TarFormatError):
        pass  # a missing or broken tar: members not found by then are reported as such
    return found


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * len(table)


def _images_by_member(table: pa.Table, tars: list[str | None], storage_options: dict | None) -> list[bytes | str]:
    """Each row's image, looked up as member ``{key}.{image_ext}`` of the tar named for the row."""
    keys, exts = _column(table, C.KEY), _column(table, C.IMAGE_EXT)
    wanted: dict[str, set[str]] = {}
    for tar, key, ext in zip(tars, keys, exts):
        if tar and key is not None and ext:
            wanted.setdefault(tar, set()).add(f"{key}.{ext}")
    found = {tar: tar_members(tar, names, storage_options) for tar, names in wanted.items()}
    out: list[bytes | str] = []
    for tar, key, ext in zip(tars, keys, exts):
        if not ext:
            out.append("no image member")
        elif not tar:
            out.append("no shard to read the image from")
        else:
            data = found[tar].get(f"{key}.{ext}")
            out.append(data if data is not None else f"{key}.{ext} not found in {os.path.basename(tar)}")
    return out


def _images(table: pa.Table, tars: list[str | None] | None, storage_options: dict | None) -> list[bytes | str]:
    """Image bytes of every row, or a short text saying why there are none."""
    if C.IMAGE in table.column_names:
        return [data if data is not None else "no image" for data in table.column(C.IMAGE).to_pylist()]
    if tars is None and C.IMAGE_OFFSET in table.column_names:
        from ..ops.rows import fetch_images

        fetched = fetch_images(table, range(len(table)), storage_options)
        return [item if isinstance(item, bytes) else f"{item.reason}: {item.detail}" for item in fetched]
    # written metadata knows its source shard and key, not where the bytes are
    return _images_by_member(table, tars if tars is not None else _column(table, C.SOURCE_SHARD), storage_options)


def tiles_from_table(table: pa.Table, columns: Sequence[str] | None = None, *, tars: list[str | None] | None = None,
                     storage_options: dict | None = None) -> list[Tile]:
    """One tile per row of ``table``; ``tars`` names the tar holding each row's image (written output)."""
    if columns is None:
        columns = [name for name in DEFAULT_COLUMNS if name in table.column_names]
    else:
        missing = [name for name in columns if name not in table.column_names]
        if missing:
            raise ValueError(f"no column {', '.join(map(repr, missing))}; the frame has {', '.join(table.column_names)}")
    errors, details = _column(table, C.ERROR), _column(table, C.ERROR_DETAIL)
    in_play = [i for i, error in enumerate(errors) if error is None]
    images = _images(table.take(pa.array(in_play, pa.int64())), None if tars is None else [tars[i] for i in in_play],
                     storage_options) if in_play else []
    image_of = dict(zip(in_play, images))
    values = {name: table.column(name).to_pylist() for name in columns}
    tiles = []
    for i, key in enumerate(_column(table, C.KEY)):
        tile = Tile(key, [(name, _format(values[name][i])) for name in columns if values[name][i] is not None])
        if errors[i] is not None:
            tile.problem = f"{errors[i]}: {details[i]}" if details[i] else errors[i]
        elif isinstance(image_of[i], bytes):
            try:
                tile.thumbnail = thumbnail_uri(image_of[i])
            except ValueError as exc:
                tile.problem = str(exc)
        else:
            tile.problem = image_of[i]
        tiles.append(tile)
    return tiles


# what a tile needs besides the values it shows: the key, where the image is, why there is none
_TILE_COLUMNS = (C.KEY, C.IMAGE, C.IMAGE_EXT, C.IMAGE_NBYTES, C.IMAGE_OFFSET, C.SOURCE_SHARD, C.ERROR, C.ERROR_DETAIL)


def _head_table(df, n: int, columns: Sequence[str] | None = None) -> pa.Table:
    """The first ``n`` rows as Arrow; a Dask frame is computed one partition at a time until there are
    enough, reading only the columns the tiles need (the shown ``columns``, or the defaults)."""
    from ..common.backend import backend_of

    backend = backend_of(df)
    if not hasattr(df, "npartitions"):
        return backend.to_arrow(df.iloc[:n] if hasattr(df, "iloc") else df.head(n))
    shown = DEFAULT_COLUMNS if columns is None else columns
    needed = [name for name in df.columns if name in _TILE_COLUMNS or name in shown]
    df = df[needed]  # Dask pushes the selection into the read: nothing else is decoded
    pieces, rows = [], 0
    for number in range(df.npartitions):
        part = backend.to_arrow(df.get_partition(number).compute())
        pieces.append(part.slice(0, n - rows))
        rows += len(pieces[-1])
        if rows >= n:
            break
    return pa.concat_tables(pieces, promote_options="permissive") if pieces else backend.to_arrow(df._meta)


def shard_files(directory: str, storage_options: dict | None = None) -> list[str]:
    """The ``NNNNN.parquet`` metadata files of an imgcurate output directory, in shard order."""
    from ..io.paths import filesystem
    from ..io.outputdir import shard_parquet_files

    fs, root = filesystem(os.fspath(directory), storage_options)
    if not fs.isdir(root):
        raise FileNotFoundError(f"{directory!r} is not a directory")
    return shard_parquet_files(fs, root)


def output_tiles(directory: str, n: int = 12, columns: Sequence[str] | None = None,
                 storage_options: dict | None = None) -> list[Tile]:
    """Tiles of the first ``n`` samples of an imgcurate output directory, images from its tars."""
    from ..io.paths import filesystem

    tables, tars, rows = [], [], 0
    for url in shard_files(directory, storage_options):
        if rows >= n:
            break
        fs, path = filesystem(url, storage_options)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            # metadata only: never the embedding, nor image bytes kept with remove_image_data=False
            names = [name for name in parquet.schema_arrow.names if name not in (C.EMBEDDING, C.IMAGE, C.EXTRA_MEMBERS)]
            batch = next(parquet.iter_batches(batch_size=n - rows, columns=names), None)
        if batch is None:
            continue
        table = pa.Table.from_batches([batch])
        tables.append(table)
        tars += [url[: -len(".parquet")] + ".tar"] * len(table)
        rows += len(table)
    if not tables:
        return []
    return tiles_from_table(pa.concat_tables(tables, promote_options="permissive"), columns, tars=tars,
                            storage_options=storage_options)


def show(data, n: int = 12, columns: Sequence[str] | None = None, *, storage_options: dict | None = None) -> Gallery:
    """Thumbnails of the first ``n`` samples, with key, caption and scores, for Jupyter.

    ``data``: a pandas or Dask DataFrame (a Dask frame computes only the partitions it needs),
    an imgcurate output directory, or a ``WriteResult`` / ``PipelineResult``. ``columns``: the
    values shown under each thumbnail (default: caption, scores and ``dropped_by`` when present).
    Failure rows show their reason instead of an image.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    output_dir = None
    if isinstance(data, (str, os.PathLike)):
        output_dir = os.fspath(data)
    elif not hasattr(data, "columns") and hasattr(data, "output_dir"):  # a WriteResult or PipelineResult
        output_dir = data.output_dir
    if output_dir is not None:
        tiles = output_tiles(output_dir, n, columns, storage_options)
        return Gallery(tiles, f"first {len(tiles)} samples of {output_dir}")
    table = _head_table(data, n, columns)
    return Gallery(tiles_from_table(table, columns, storage_options=storage_options), f"first {len(table)} rows")


# ---------------------------------------------------------------------------------------
# Results of a write or a pipeline run


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th style='{_CELL_STYLE};background:#f3f3f3'>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='{_CELL_STYLE}'>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table style='{_TABLE_STYLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _notes(mapping: dict[str, int] | None) -> str:
    return ", ".join(f"{name} {n}" for name, n in (mapping or {}).items())


def write_result_html(result) -> str:
    """A ``WriteResult`` as HTML: what was written and where every other sample went."""
    c = result.counts
    summary = (f"<p style='font:13px sans-serif'>wrote <b>{result.samples}</b> samples in <b>{result.shards}</b> shards "
               f"({result.bytes / 1e6:.1f} MB) to <code>{html.escape(str(result.output_dir))}</code></p>")
    rows = [("read", c.get("read", 0), ""), ("written", c.get("written", 0), ""),
            ("dropped", c.get("dropped", 0), _notes(c.get("dropped_by_stage"))),
            ("failed", c.get("failed", 0), _notes(c.get("failed_by_reason")))]
    if c.get("rejected_members"):
        rows.append(("rejected members", c["rejected_members"], _notes(c.get("rejected_members_by_reason"))))
    if c.get("rejected_shards"):
        rows.append(("rejected shards", c["rejected_shards"], _notes(c.get("rejected_shards_by_reason"))))
    if c.get("renamed_keys"):
        rows.append(("renamed keys", c["renamed_keys"], "listed in _manifest.json"))
    return summary + html_table(("samples", "count", "by stage / reason"), rows)


def stage_rows(stage_counts: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(stage, in, out, filtered, failed) rows of a pipeline's ``stage_counts``."""
    rows = []
    for row in stage_counts:
        failed = _notes({**row.get("failed", {}), **row.get("rejected_members", {}), **row.get("rejected_shards", {})})
        rows.append((row["stage"], row.get("in"), row.get("out"), row.get("filtered") or "", failed))
    return rows


def pipeline_result_html(result) -> str:
    """A ``PipelineResult`` as HTML: samples in and out of every stage, then the writer's summary."""
    banner = ""
    if result.manifest.get("random_weights"):
        banner = ("<p style='font:bold 13px sans-serif;color:#fff;background:#c0392b;padding:4px 8px;display:inline-block'>"
                  "RANDOM WEIGHTS: embeddings and scores are meaningless</p>")
    stages = html_table(("stage", "in", "out", "filtered", "failed"), stage_rows(result.stage_counts))
    return (f"<div style='font:bold 13px sans-serif'>pipeline {html.escape(result.name)}</div>{banner}{stages}"
            + write_result_html(result.write))
