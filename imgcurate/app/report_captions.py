"""The report's image–text section: the CLIP score histogram with the run's threshold, why pairs have no score,
and the highest and lowest scored pairs as thumbnails with their captions.

Called by :func:`imgcurate.app.report.report_html` when the output has a ``clip_score`` column. The
histogram is computed by DuckDB like the other score charts; the extreme pairs are found by reading
only ``key``, ``image_ext``, ``caption`` and ``clip_score`` of each shard's Parquet file, and only
their images are read.
"""

from __future__ import annotations

import html
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..common import columns as C
from ..common.errors import CAPTION_REASONS
from .charts import histogram_svg, score_histogram
from .display import gallery_html, html_table, shard_files, tiles_from_table

ALIGNMENT_STAGE = "ImageTextAlignmentFilterStage"
EXTREME_PAIRS = 8
_COLUMNS = (C.KEY, C.IMAGE_EXT, C.CAPTION, C.CLIP_SCORE)


def has_clip_scores(tables: dict[str, Any]) -> bool:
    return any(name in tables and C.CLIP_SCORE in tables[name].schema.names for name in ("samples", "dropped"))


def clip_score_setting(manifest: dict[str, Any]) -> dict[str, Any]:
    """The run's CLIP-score cut: {stage, threshold, top_fraction, scored} (empty when there was none)."""
    for stage in (manifest.get("pipeline") or {}).get("stages", []):
        if stage.get("stage") == ALIGNMENT_STAGE:
            parameters = stage.get("parameters", {})
            used = stage.get("threshold_used") or {}
            return {"stage": stage.get("name"), "threshold": used.get("threshold", parameters.get("score_threshold")),
                    "top_fraction": parameters.get("top_fraction"), "scored": used.get("scored")}
    recorded = manifest.get("clip_score")  # the Python recipe's manifest_extra={"clip_score": threshold.describe()}
    if isinstance(recorded, dict) and "threshold" in recorded:
        return {"stage": "clip_score", "threshold": recorded.get("threshold"), "top_fraction": recorded.get("top_fraction"),
                "scored": recorded.get("scored")}
    return {}


def _extremes(directory: str, n: int, storage_options: dict | None) -> tuple[pa.Table, list[str], pa.Table, list[str]]:
    """The ``n`` highest and ``n`` lowest scored written pairs, each with the tar that holds it."""
    from ..io.paths import filesystem

    best: list[pa.Table] = []
    for url in shard_files(directory, storage_options):
        fs, path = filesystem(url, storage_options)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = [name for name in _COLUMNS if name in parquet.schema_arrow.names]
            if C.CLIP_SCORE not in names:
                continue
            table = parquet.read(columns=names)
        table = table.filter(pc.is_valid(table.column(C.CLIP_SCORE)))
        table = table.append_column("_tar", pa.array([url[: -len(".parquet")] + ".tar"] * len(table), pa.string()))
        if len(table) <= 2 * n:  # each row once: both ends of a small shard overlap
            best.append(table)
        else:
            ordered = table.sort_by([(C.CLIP_SCORE, "descending")])
            best += [ordered.slice(0, n), ordered.slice(len(ordered) - n)]
    if not best:
        empty = pa.table({name: [] for name in _COLUMNS})
        return empty, [], empty, []
    pooled = pa.concat_tables(best, promote_options="permissive").sort_by([(C.CLIP_SCORE, "descending")])
    n = min(n, -(-len(pooled) // 2))  # fewer than 2n pairs: the higher half, then the lower half
    top = pooled.slice(0, n)
    bottom = pooled.slice(n).sort_by([(C.CLIP_SCORE, "ascending")]).slice(0, n)
    return top, top.column("_tar").to_pylist(), bottom, bottom.column("_tar").to_pylist()


def _unscored(con, tables: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(reason, description, count) of the pairs written or kept aside without a score because of their caption."""
    parts = [f"SELECT {C.CAPTION_PROBLEM} AS p FROM {name}" for name in ("samples", "dropped")
             if name in tables and C.CAPTION_PROBLEM in tables[name].schema.names]
    if not parts:
        return []
    rows = con.execute(f"SELECT p, count(*) FROM ({' UNION ALL '.join(parts)}) WHERE p IS NOT NULL GROUP BY p ORDER BY p").fetchall()
    return [(reason, CAPTION_REASONS.get(reason, ""), n) for reason, n in rows]


def captions_section(con, tables: dict[str, Any], manifest: dict[str, Any], directory: str, thumbnails: int,
                     storage_options: dict | None = None) -> str:
    """The HTML of the report's "Image–text pairs" section."""

    setting = clip_score_setting(manifest)
    threshold = setting.get("threshold")
    histogram = score_histogram(con, tables, C.CLIP_SCORE, setting.get("stage"), threshold)
    parts = ["<h2>Image–text pairs</h2>"]
    if histogram is not None:
        s = histogram["stats"]
        if setting.get("top_fraction") is not None:
            cut = (f"top {setting['top_fraction']:g} of {setting.get('scored')} scored pairs: keep clip_score ≥ "
                   f"{threshold:.6g}" if threshold is not None else "top fraction: no pair had a score")
        elif threshold is not None:
            cut = f"threshold {threshold:g}: keep clip_score ≥ {threshold:g}"
        else:
            cut = "no threshold (scored, not filtered)"
        parts.append(f"<figure style='margin:0'>{histogram_svg(histogram, 'CLIP score (cosine)', '≥', setting.get('stage'))}"
                     f"<figcaption class='meta'>{s['count']} pairs; min {s['min']:.4g}, median {s['median']:.4g}, "
                     f"mean {s['mean']:.4g}, max {s['max']:.4g}; {html.escape(cut)}. The score is the plain cosine of "
                     "the image and caption embeddings (not ×100).</figcaption></figure>")
    unscored = _unscored(con, tables)
    if unscored:
        parts.append("<p class='meta'>Pairs without a score (the image is fine, the caption is not):</p>"
                     + html_table(("reason", "meaning", "pairs"), unscored))
    if thumbnails:
        top, top_tars, bottom, bottom_tars = _extremes(directory, min(thumbnails, EXTREME_PAIRS), storage_options)
        for title, table, tars in (("Highest scored pairs written", top, top_tars),
                                   ("Lowest scored pairs written", bottom, bottom_tars)):
            if len(table):
                tiles = tiles_from_table(table.drop_columns(["_tar"]), [C.CLIP_SCORE, C.CAPTION], tars=tars,
                                         storage_options=storage_options)
                parts.append(f"<h3>{title}</h3>" + gallery_html(tiles))
    return "".join(parts)
