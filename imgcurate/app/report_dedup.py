"""The report's deduplication section: what each dedup stage of a run found, from ``_manifest.json``.

For each method: the samples considered and the duplicates removed; the distances of the
duplicates to what they duplicate (pHash: Hamming distance; semantic: SemDeDup's
``max_similarity``, for every sample considered); the fraction that would be removed at each
threshold (``max_distance`` up to the one used; a grid of ``eps``), the curve a user reads to
pick a threshold; and example pairs side by side at several distances, fetched by byte range from
the source shards (or, when those are gone, from the output's own tars).
"""

from __future__ import annotations

import html
from typing import Any

from ..common import columns as C
from .charts import histogram_svg
from .display import Tile, gallery_html, html_table, thumbnail_uri

# why the default max_distance is what it is (benchmarks/README.md, "Deduplication")
PHASH_DEFAULT_WHY = (
    "The default max_distance of 4 comes from measuring pHash distances on the 30 real photos of imgcurate's tests: "
    "every JPEG re-encode (quality 70, 30, 10), downscale (to 1/2, 1/4, 1/8), PNG→JPEG recompression, contrast, blur "
    "and greyscale change stayed within 4 bits of the original, and 29 of 30 brightness changes (+20 %; the last at 6), "
    "while no two different photos came closer than 20 bits. Crops and rotations of a few percent move the hash by "
    "2–22 bits: no pHash threshold catches them without catching different photos; semantic deduplication does. "
    "A larger max_distance also costs more: the search pairs more candidates in each band."
)
CHART_W, CHART_H = 500, 260


def _fraction(n: int, total: int) -> str:
    return f"{n / total:.1%}" if total else "—"


def curve_svg(points: list[tuple[float, float]], title: str, x_label: str, used: float | None, log_x: bool = False) -> str:
    """A line chart of (threshold, fraction removed) as inline SVG, the threshold used marked."""
    import math

    left, right, top, bottom = 56, 20, 36, 40
    plot_w, plot_h = CHART_W - left - right, CHART_H - top - bottom
    xs = [math.log10(x) if log_x else x for x, _ in points]
    low, high = min(xs), max(xs)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    peak = max(max((y for _, y in points), default=0.0), 1e-9)

    def at(x: float, y: float) -> tuple[float, float]:
        x = math.log10(x) if log_x else x
        return left + (x - low) / (high - low) * plot_w, top + plot_h - y / peak * plot_h

    out = [f"<svg width='{CHART_W}' height='{CHART_H}' viewBox='0 0 {CHART_W} {CHART_H}' role='img' "
           f"aria-label='{html.escape(title)}' style='background:#fff;border:1px solid #ddd'>",
           f"<text x='{left}' y='18' font-size='14' font-weight='bold'>{html.escape(title)}</text>"]
    axis_y = top + plot_h
    out.append(f"<line x1='{left}' y1='{axis_y}' x2='{left + plot_w}' y2='{axis_y}' stroke='#333'/>"
               f"<line x1='{left}' y1='{top}' x2='{left}' y2='{axis_y}' stroke='#333'/>")
    path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(at(x, y) for x, y in points))
    out.append(f"<path d='{path}' fill='none' stroke='#d9822b' stroke-width='2'/>")
    for x, y in points:
        px, py = at(x, y)
        out.append(f"<circle cx='{px:.1f}' cy='{py:.1f}' r='3' fill='#d9822b'><title>{x:g}: {y:.2%}</title></circle>"
                   f"<text x='{px:.1f}' y='{axis_y + 14}' font-size='10' text-anchor='middle'>{x:g}</text>")
    out.append(f"<text x='{left - 6}' y='{top + 4}' font-size='11' text-anchor='end'>{peak:.1%}</text>"
               f"<text x='{left - 6}' y='{axis_y}' font-size='11' text-anchor='end'>0</text>"
               f"<text x='{left + plot_w / 2:.0f}' y='{CHART_H - 6}' font-size='11' text-anchor='middle'>"
               f"{html.escape(x_label)}</text>")
    if used is not None:
        ux, _ = at(used, 0)
        anchor, shift = ("end", -4) if ux > left + plot_w * 0.7 else ("start", 4)
        out.append(f"<line x1='{ux:.1f}' y1='{top - 4}' x2='{ux:.1f}' y2='{axis_y}' stroke='#c0392b' stroke-width='2' "
                   f"stroke-dasharray='5,3'/><text x='{ux + shift:.1f}' y='{top - 8}' font-size='11' fill='#c0392b' "
                   f"text-anchor='{anchor}'>used: {used:g}</text>")
    out.append("</svg>")
    return "".join(out)


def bars_svg(counts: list[int], labels: list[str], title: str, x_label: str) -> str:
    """A bar per value (e.g. per Hamming distance) as inline SVG, each labelled under its bar."""
    left, right, top, bottom = 56, 20, 36, 40
    plot_w, plot_h = CHART_W - left - right, CHART_H - top - bottom
    peak = max(max(counts, default=0), 1)
    width = plot_w / max(len(counts), 1)
    axis_y = top + plot_h
    out = [f"<svg width='{CHART_W}' height='{CHART_H}' viewBox='0 0 {CHART_W} {CHART_H}' role='img' "
           f"aria-label='{html.escape(title)}' style='background:#fff;border:1px solid #ddd'>",
           f"<text x='{left}' y='18' font-size='14' font-weight='bold'>{html.escape(title)}</text>",
           f"<line x1='{left}' y1='{axis_y}' x2='{left + plot_w}' y2='{axis_y}' stroke='#333'/>",
           f"<line x1='{left}' y1='{top}' x2='{left}' y2='{axis_y}' stroke='#333'/>"]
    for i, (n, label) in enumerate(zip(counts, labels)):
        h = n / peak * plot_h
        x = left + i * width
        out.append(f"<rect x='{x + 2:.1f}' y='{axis_y - h:.1f}' width='{max(width - 4, 1):.1f}' height='{h:.1f}' "
                   f"fill='#d9822b'><title>{n}</title></rect>"
                   f"<text x='{x + width / 2:.1f}' y='{axis_y + 14}' font-size='11' text-anchor='middle'>{html.escape(label)}</text>")
    out.append(f"<text x='{left - 6}' y='{top + 4}' font-size='11' text-anchor='end'>{peak}</text>"
               f"<text x='{left - 6}' y='{axis_y}' font-size='11' text-anchor='end'>0</text>"
               f"<text x='{left + plot_w / 2:.0f}' y='{CHART_H - 6}' font-size='11' text-anchor='middle'>"
               f"{html.escape(x_label)}</text></svg>")
    return "".join(out)


def _distance_chart(summary: dict[str, Any]) -> str:

    method, parameters = summary["method"], summary.get("parameters", {})
    if method == "phash" and summary.get("distance_counts"):
        counts = summary["distance_counts"]
        return bars_svg(counts, [str(d) for d in range(len(counts))], "Duplicates by distance to what they duplicate",
                        "Hamming distance (bits)")
    if method == "semantic" and summary.get("similarity_counts"):
        counts = summary["similarity_counts"]
        bins = len(counts)
        cut = 1.0 - float(parameters.get("eps", 0.0))
        this = [n if (i + 1) / bins > cut else 0 for i, n in enumerate(counts)]
        kept = [n - t for n, t in zip(counts, this)]
        histogram = {"low": 0.0, "high": 1.0, "bins": bins, "threshold": cut,
                     "counts": {"kept": kept, "this": this, "other": [0] * bins}}
        return histogram_svg(histogram, "max_similarity to an earlier sample", "<",
                             summary["stage"])
    return ""


def _curve_chart(summary: dict[str, Any]) -> str:
    considered = max(summary.get("considered", 0), 1)
    parameters = summary.get("parameters", {})
    if summary["method"] == "phash" and summary.get("curve"):
        points = [(p["max_distance"], p["duplicates"] / considered) for p in summary["curve"]]
        return curve_svg(points, "Fraction removed by max_distance", "max_distance (bits)", parameters.get("max_distance"))
    if summary["method"] == "semantic" and summary.get("curve"):
        points = [(p["eps"], p["duplicates"] / considered) for p in summary["curve"]]
        return curve_svg(points, "Fraction removed by eps (same clusters)", "eps (log scale)", parameters.get("eps"),
                         log_x=True)
    return ""


def _images(samples: list[dict[str, Any]], storage_options: dict | None) -> list[bytes | str]:
    """Each sample's image bytes (by byte range from its source shard), or why there are none."""
    import pyarrow as pa

    from ..ops.rows import fetch_images

    names = (C.SOURCE_SHARD, C.KEY, C.IMAGE_OFFSET, C.IMAGE_NBYTES)
    if not samples:
        return []
    table = pa.table({name: pa.array([s.get(name) for s in samples],
                                     pa.int64() if name in (C.IMAGE_OFFSET, C.IMAGE_NBYTES) else pa.string()) for name in names})
    return [item if isinstance(item, bytes) else f"{item.reason}: {item.detail}"
            for item in fetch_images(table, range(len(table)), storage_options)]


def _tile(sample: dict[str, Any], image: bytes | str, label: str) -> Tile:
    shard = "/".join(str(sample.get(C.SOURCE_SHARD) or "").rstrip("/").split("/")[-2:])  # shards of two inputs may share a name
    tile = Tile(sample.get(C.KEY) or "?", [("", label), ("from", f"{shard} #{sample.get(C.SOURCE_INDEX)}")])
    if isinstance(image, bytes):
        try:
            tile.thumbnail = thumbnail_uri(image)
        except ValueError as exc:
            tile.problem = str(exc)
    else:
        tile.problem = image
    return tile


def _pairs(summary: dict[str, Any], storage_options: dict | None) -> str:
    examples = summary.get("examples") or []
    if not examples:
        return "<p class='meta'>No duplicate pairs to show.</p>"
    images = _images([side for e in examples for side in (e["duplicate"], e["original"])], storage_options)
    parts = []
    for number, example in enumerate(examples):
        if summary["method"] == "phash":
            measure = f"Hamming distance {example['distance']:g}"
        elif summary["method"] == "semantic":
            measure = f"cosine similarity {example['similarity']:.4f}"
        else:
            measure = "identical bytes"
        tiles = [_tile(example["duplicate"], images[2 * number], "duplicate (removed)"),
                 _tile(example["original"], images[2 * number + 1], "duplicates this one")]
        parts.append(f"<div class='dedup-pair' style='width:340px'><div class='meta'>{html.escape(measure)}</div>"
                     f"{gallery_html(tiles)}</div>")
    return ("<p class='meta'>The first duplicates of the input at each distance, beside the sample they duplicate.</p>"
            f"<div class='charts'>{''.join(parts)}</div>")


def _summary_table(summaries: list[dict[str, Any]]) -> str:
    rows = []
    for s in summaries:
        parameters = s.get("parameters", {})
        threshold = {"phash": f"max_distance {parameters.get('max_distance')}",
                     "semantic": f"eps {parameters.get('eps')}, n_clusters {parameters.get('n_clusters') or 'default'}"
                                 f" ({s.get('clusters', '?')} found)",
                     "exact": "equal SHA-256"}.get(s["method"], "")
        skipped = ", ".join(f"{name.replace('_', ' ')} {s[name]}" for name in sorted(s)
                            if (name.startswith("no_") or name in ("failed", "dropped_before")) and s[name])
        rows.append((s["stage"], s["method"], threshold, f"keep {parameters.get('keep', 'first')}", s.get("considered", 0),
                     s.get("duplicates", 0), _fraction(s.get("duplicates", 0), s.get("considered", 0)), skipped or "—"))
    return html_table(("stage", "method", "threshold", "order", "considered", "duplicates", "removed", "not considered"), rows)


def dedup_section(manifest: dict[str, Any], storage_options: dict | None = None) -> str:
    """The report's "Deduplication" section, or "" when the run had no dedup stage."""
    summaries = manifest.get("dedup") or []
    if not summaries:
        return ""
    parts = ["<h2>Deduplication</h2>", _summary_table(summaries),
             "<p class='meta'>A sample is a duplicate when a sample before it in the keep order, kept or not, is within "
             "the threshold; duplicate_of names the nearest such sample.</p>"]
    for summary in summaries:
        parts.append(f"<h3>{html.escape(summary['stage'])}</h3>")
        charts = [chart for chart in (_distance_chart(summary), _curve_chart(summary)) if chart]
        if charts:
            parts.append(f"<div class='charts'>{''.join(charts)}</div>")
        if summary["method"] == "phash":
            parts.append("<p class='meta'>The curve stops at the max_distance this run searched; run again with a "
                         "larger one to see further.</p>")
            parts.append(f"<p class='note'>{html.escape(PHASH_DEFAULT_WHY)}</p>")
        if summary["method"] == "semantic":
            parts.append("<p class='note'>The curve is exact for the clusters of this run: a sample is removed at eps "
                         "when its max_similarity is at least 1 − eps.</p>")
        parts.append(_pairs(summary, storage_options))
    return "".join(parts)
