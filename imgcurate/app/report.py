"""``imgcurate report``: one self-contained HTML file about an imgcurate output directory.

The report shows what the run did: samples in and out of each stage, failures by reason, the
models used (with a banner when their weights are random), histograms of the aesthetic and NSFW
scores with the thresholds of the run drawn on them, and thumbnails of kept and dropped samples.

Everything is inline (SVG charts, JPEG data URIs, one ``<style>``), so the file can be mailed or
archived as it is. Metadata is aggregated by DuckDB straight from the Parquet files; only the
thumbnails' image bytes are read.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from typing import Any

import duckdb

from ..common import columns as C
from .._version import __version__
from .charts import histogram_svg, score_histogram
from .report_captions import captions_section, has_clip_scores
from .report_dedup import dedup_section
from .display import gallery_html, html_table, output_tiles, shard_files, stage_rows, write_result_html
from ..io.paths import filesystem, writable_path
from ..io.outputdir import DROPPED_DIR, MANIFEST_FILE
from ..io.writer import WriteResult

FAILURE_ROWS = 20
# filter stage class → (score column, how the threshold keeps a sample)
SCORE_STAGES = {"ImageAestheticFilterStage": (C.AESTHETIC_SCORE, "≥"), "ImageNSFWFilterStage": (C.NSFW_SCORE, "<")}
SCORE_TITLES = {C.AESTHETIC_SCORE: "Aesthetic score", C.NSFW_SCORE: "NSFW score"}

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.meta { color: #555; } code { background: #f4f4f4; padding: 0 3px; }
.banner { background: #c0392b; color: #fff; font-weight: bold; font-size: 20px; padding: 12px 16px; margin: 16px 0;
          border-radius: 4px; }
.banner span { display: block; font-weight: normal; font-size: 14px; }
.note { background: #f6f6f6; border-left: 4px solid #999; padding: 8px 12px; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; }
"""

# Sets data-images-loaded on <body> once every thumbnail has decoded: a check that the file needs nothing from outside.
_IMAGES_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = decoded === images.length ? "all" : "missing";
  document.body.dataset.imagesDecoded = decoded + "/" + images.length;
});
"""


def _read_manifest(directory: str, storage_options: dict | None) -> dict[str, Any]:
    fs, root = filesystem(directory, storage_options)
    path = f"{root.rstrip('/')}/{MANIFEST_FILE}"
    if not fs.isdir(root):
        raise FileNotFoundError(f"{directory!r}: no such directory")
    if not fs.exists(path):
        raise FileNotFoundError(f"{directory!r} has no {MANIFEST_FILE}: not an output directory written by imgcurate")
    with fs.open(path, "rb") as f:
        return json.load(f)


def thresholds(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Score column → {stage, threshold, rule} for each filter stage of the run's pipeline."""
    found = {}
    for stage in (manifest.get("pipeline") or {}).get("stages", []):
        if stage.get("stage") in SCORE_STAGES:
            column, rule = SCORE_STAGES[stage["stage"]]
            found[column] = {"stage": stage.get("name"), "threshold": stage.get("parameters", {}).get("score_threshold"),
                             "rule": rule}
    return found


def _scores_section(con, tables: dict[str, Any], manifest: dict[str, Any]) -> str:
    found = thresholds(manifest)
    charts, notes = [], []
    for column in (C.AESTHETIC_SCORE, C.NSFW_SCORE):
        setting = found.get(column, {})
        histogram = score_histogram(con, tables, column, setting.get("stage"), setting.get("threshold"))
        if histogram is None:
            continue
        s = histogram["stats"]
        threshold_text = ("no threshold (scored, not filtered)" if setting.get("threshold") is None
                          else f"threshold {setting['threshold']:g}: keep {setting['rule']}")
        charts.append(
            f"<figure style='margin:0'>{histogram_svg(histogram, SCORE_TITLES[column], setting.get('rule'), setting.get('stage'))}"
            f"<figcaption class='meta'>{s['count']} samples; min {s['min']:.4g}, median {s['median']:.4g}, "
            f"mean {s['mean']:.4g}, max {s['max']:.4g}; {html.escape(threshold_text)}</figcaption></figure>")
    if not charts and has_clip_scores(tables):
        return "<p class='meta'>No aesthetic or NSFW scores in this output; its CLIP scores are charted below.</p>"
    if not charts:
        return ("<p class='note'>No scores: this output was written without embedding and scoring "
                "(for example by <code>imgcurate reshard</code> or <code>export</code>), so there is nothing to chart.</p>")
    if manifest.get("counts", {}).get("dropped") and "dropped" not in tables:
        notes.append("<p class='note'>Dropped samples were not kept (write with <code>keep_dropped=True</code> / "
                     "<code>--keep-dropped</code>), so the histograms show the written samples only.</p>")
    return f"<div class='charts'>{''.join(charts)}</div>{''.join(notes)}"


# ---------------------------------------------------------------------------------------
# Other sections


def _models_section(manifest: dict[str, Any]) -> str:
    models = manifest.get("models") or []
    if not models:
        return "<p class='meta'>No models: this output was not embedded or scored.</p>"
    rows = []
    for model in models:
        weights = "RANDOM" if model.get("random_weights") else (model.get("pretrained") or model.get("weights") or "")
        name = model.get("model_name") or ""
        digest = (model.get("weights_sha256") or "")[:12]
        rows.append((model.get("stage"), model.get("model"), name, weights, digest, model.get("device")))
    return html_table(("stage", "model", "name", "weights", "sha256", "device"), rows)


def _failures_section(con, tables: dict[str, Any], counts: dict[str, Any]) -> str:
    by_reason = [(kind, reason, n) for kind, key in (("sample", "failed_by_reason"), ("member", "rejected_members_by_reason"),
                                                     ("shard", "rejected_shards_by_reason"))
                 for reason, n in counts.get(key, {}).items()]
    if not by_reason:
        return "<p>No failures.</p>"
    parts = [html_table(("what", "reason", "count"), sorted(by_reason, key=lambda row: -row[2]))]
    if "failures" in tables:
        rows = con.execute(
            f"SELECT {C.SOURCE_SHARD}, {C.SOURCE_INDEX}, {C.KEY}, {C.ERROR}, {C.ERROR_MEMBER}, {C.ERROR_DETAIL} FROM failures "
            f"ORDER BY {C.SOURCE_SHARD}, {C.SOURCE_INDEX} NULLS FIRST LIMIT {FAILURE_ROWS}").fetchall()
        total = con.execute("SELECT count(*) FROM failures").fetchone()[0]
        listed = [(os.path.basename(shard or ""), *rest) for shard, *rest in rows]
        parts.append(f"<p class='meta'>The first {len(listed)} of {total} in <code>_failures/</code>:</p>")
        parts.append(html_table(("shard", "index", "key", "reason", "member", "detail"), listed))
    return "".join(parts)


def _gallery_section(directory: str, n: int, total: int, storage_options: dict | None, empty: str) -> str:
    if not n:
        return "<p class='meta'>No thumbnails asked for.</p>"
    tiles = output_tiles(directory, n, storage_options=storage_options)
    if not tiles:
        return f"<p class='meta'>{html.escape(empty)}</p>"
    return f"<p class='meta'>The first {len(tiles)} of {total}, in output order.</p>" + gallery_html(tiles)


def _result_of(directory: str, manifest: dict[str, Any]) -> WriteResult:
    shards = manifest.get("shards", [])
    counts = manifest.get("counts", {})
    return WriteResult(directory, len(shards), counts.get("written", 0), sum(s.get("bytes", 0) for s in shards), counts, manifest)


def report_html(dataset: str, thumbnails: int = 24, storage_options: dict | None = None) -> str:
    """The report on the imgcurate output directory ``dataset`` as one HTML document."""
    from ..dataframe.sql import dataset_tables

    directory = os.fspath(dataset).rstrip("/")
    manifest = _read_manifest(directory, storage_options)
    # an output where every sample was dropped or failed has no shards, so no metadata to query
    tables = dataset_tables(directory, storage_options) if shard_files(directory, storage_options) else {}
    counts = manifest.get("counts", {})
    fs, root = filesystem(directory, storage_options)
    has_dropped = fs.isdir(f"{root}/{DROPPED_DIR}")

    con = duckdb.connect()
    try:
        for name, table in tables.items():
            con.register(name, table)
        scores = _scores_section(con, tables, manifest)
        pairs = captions_section(con, tables, manifest, directory, thumbnails, storage_options) if has_clip_scores(tables) else ""
        failures = _failures_section(con, tables, counts)
    finally:
        con.close()

    banner = ""
    if manifest.get("random_weights"):
        banner = ("<div class='banner' id='random-weights'>RANDOM WEIGHTS — scores meaningless"
                  "<span>At least one model of this run had randomly initialised weights: its embeddings and scores "
                  "carry no information, and the filtering below demonstrates the pipeline, not a curation.</span></div>")
    stages = ""
    if manifest.get("stage_counts"):
        stages = "<h2>Stages</h2>" + html_table(("stage", "in", "out", "filtered", "failed"), stage_rows(manifest["stage_counts"]))
    pipeline_name = (manifest.get("pipeline") or {}).get("name")
    if has_dropped:
        dropped = _gallery_section(f"{directory}/{DROPPED_DIR}", thumbnails, counts.get("dropped", 0), storage_options, "No dropped samples.")
    elif counts.get("dropped"):
        dropped = ("<p class='note'>Dropped samples were counted but not kept; write with <code>keep_dropped=True</code> "
                   "(<code>--keep-dropped</code>) to see them here.</p>")
    else:
        dropped = "<p class='meta'>No sample was dropped.</p>"
    title = f"imgcurate report: {directory}"
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return "".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>written by imgcurate {html.escape(str(manifest.get('imgcurate_version')))} on "
        f"{html.escape(str(manifest.get('created')))}"
        + (f", pipeline <b>{html.escape(pipeline_name)}</b>" if pipeline_name else "")
        + f", from {len(manifest.get('inputs', []))} input shards in {manifest.get('elapsed_seconds')} s; "
        f"report by imgcurate {__version__} on {generated}</p>",
        banner,
        "<h2>Counts</h2>", write_result_html(_result_of(directory, manifest)),
        stages,
        "<h2>Models</h2>", _models_section(manifest),
        "<h2>Scores</h2>", scores, pairs,
        "<h2>Failures</h2>", failures,
        dedup_section(manifest, storage_options),
        "<h2>Kept samples</h2>", _gallery_section(directory, thumbnails, counts.get("written", 0), storage_options,
                                              "No samples were written."),
        "<h2>Dropped samples</h2>", dropped,
        f"<script>{_IMAGES_CHECK}</script></body></html>",
    ])


def write_report(dataset: str, output: str, thumbnails: int = 24, storage_options: dict | None = None) -> str:
    """Write the HTML report on the imgcurate output directory ``dataset`` to ``output``; returns ``output``.

    ``thumbnails``: how many kept (and how many dropped) samples to show.
    """
    if thumbnails < 0:
        raise ValueError(f"thumbnails must be 0 or more, got {thumbnails}")
    document = report_html(dataset, thumbnails, storage_options)
    fs, path = writable_path(os.fspath(output), storage_options)
    with fs.open(path, "wb") as f:
        f.write(document.encode("utf-8"))
    return os.fspath(output)

