"""The HTML page of one search: the query, the index, and thumbnails of the results with their similarity and caption.

Self-contained like the run report (:mod:`imgcurate.app.report`): thumbnails are JPEG data URIs
made by :mod:`imgcurate.app.display` from the results' source shards (each image read by walking
its shard's headers; no other bytes are read).
"""

from __future__ import annotations

import html
import os
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from .._version import __version__
from ..common import columns as C
from .display import gallery_html, tiles_from_table

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } .meta { color: #555; } code { background: #f4f4f4; padding: 0 3px; }
.banner { background: #c0392b; color: #fff; font-weight: bold; padding: 10px 14px; margin: 12px 0; border-radius: 4px; }
"""
TILE_COLUMNS = ("similarity", C.CAPTION)


def _describe_query(query: dict[str, Any]) -> str:
    parts = []
    for name, value in query.items():
        if value is None or value == []:
            continue
        shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"<b>{html.escape(name)}</b> <code>{html.escape(shown)}</code>")
    return "; ".join(parts) or "(no query)"


def search_report_html(results, query: dict[str, Any], index=None, thumbnails: int | None = None) -> str:
    """The page for ``results`` (a frame from :func:`imgcurate.search`), best first; ``thumbnails``
    limits how many are drawn (default: all)."""
    shown = results if thumbnails is None else results.head(thumbnails)
    table = pa.Table.from_pandas(shown.reset_index(drop=True), preserve_index=False)
    columns = [name for name in TILE_COLUMNS if name in table.column_names]
    tars = table.column(C.SOURCE_SHARD).to_pylist() if C.SOURCE_SHARD in table.column_names else [None] * len(table)
    tiles = tiles_from_table(table, columns, tars=tars) if len(table) else []
    about = ""
    if index is not None:
        about = (f"<p class='meta'>index <code>{html.escape(index.directory)}</code>: {index.count} vectors, "
                 f"{html.escape(index.kind)} ({html.escape(str(index.document.get('faiss_description')))}), "
                 f"model <code>{html.escape(str(index.model_id))}</code></p>")
        if index.model_id and index.model_id.endswith("/random"):
            about += "<div class='banner' id='random-weights'>RANDOM WEIGHTS: similarities mean nothing</div>"
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    count = f"{len(results)} results" + (f", the first {len(shown)} shown" if len(shown) < len(results) else "")
    return "".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>imgcurate search</title>",
        f"<style>{_STYLE}</style></head><body><h1>imgcurate search</h1>",
        f"<p>{_describe_query(query)}</p>", about,
        f"<p class='meta'>{count}, best first; by imgcurate {__version__} on {generated}</p>",
        gallery_html(tiles), "</body></html>",
    ])


def write_search_report(results, output: str, query: dict[str, Any], index=None, thumbnails: int | None = None) -> str:
    """Write :func:`search_report_html` to ``output`` (a local path or fsspec URL); returns ``output``."""
    from ..io.paths import writable_path

    document = search_report_html(results, query, index, thumbnails)
    fs, path = writable_path(os.fspath(output))
    with fs.open(path, "wb") as f:
        f.write(document.encode("utf-8"))
    return os.fspath(output)
