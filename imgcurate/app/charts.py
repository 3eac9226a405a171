"""The report's score histograms: counts by DuckDB over the output's Parquet, drawn as inline SVG
(kept, dropped by the stage that set the threshold, dropped by others)."""

from __future__ import annotations

import html
import math
from typing import Any

import duckdb

HISTOGRAM_BINS = 30
COLOURS = {"kept": "#3f8f3f", "this": "#d9822b", "other": "#a8a8a8"}


def _has_column(table, name: str) -> bool:
    return name in table.schema.names


def score_histogram(con: duckdb.DuckDBPyConnection, tables: dict[str, Any], column: str, stage: str | None,
                    threshold: float | None, bins: int = HISTOGRAM_BINS) -> dict[str, Any] | None:
    """Counts of ``column`` in ``bins`` equal bins, split into kept, dropped by ``stage`` and dropped by
    other stages; the range covers the threshold. None when no sample has this score."""
    parts = []
    if "samples" in tables and _has_column(tables["samples"], column):
        parts.append(f'SELECT "{column}" AS v, \'kept\' AS part FROM samples')
    if "dropped" in tables and _has_column(tables["dropped"], column):
        parts.append(f"SELECT \"{column}\" AS v, CASE WHEN dropped_by = $stage THEN 'this' ELSE 'other' END AS part FROM dropped")
    if not parts:
        return None
    scores = f"SELECT v::DOUBLE AS v, part FROM ({' UNION ALL '.join(parts)}) WHERE v IS NOT NULL AND isfinite(v)"
    params = {"stage": stage} if "$stage" in scores else {}
    count, low, high, mean, median = con.execute(
        f"SELECT count(*), min(v), max(v), avg(v), quantile_cont(v, 0.5) FROM ({scores})", params).fetchone()
    if not count:
        return None
    stats = {"count": count, "min": low, "max": high, "mean": mean, "median": median}
    if threshold is not None:
        low, high = min(low, threshold), max(high, threshold)
    if high - low <= 1e-12 * max(1.0, abs(high)):
        low, high = low - 0.5, high + 0.5
    width = (high - low) / bins
    rows = con.execute(
        f"SELECT least(greatest(floor((v - $low) / $width), 0), {bins - 1})::INTEGER AS bin, part, count(*) "
        f"FROM ({scores}) GROUP BY ALL", {**params, "low": low, "width": width}).fetchall()
    counts = {part: [0] * bins for part in COLOURS}
    for bin_number, part, n in rows:
        counts[part][bin_number] += n
    return {"low": low, "high": high, "bins": bins, "counts": counts, "stats": stats, "threshold": threshold}


def _tick(value: float, step: float) -> str:
    """``value`` with enough decimals that ticks ``step`` apart read differently."""
    decimals = max(0, 1 - math.floor(math.log10(step)))
    return f"{value:.{decimals}f}"


def histogram_svg(histogram: dict[str, Any], title: str, rule: str | None, stage: str | None) -> str:
    """A stacked bar chart as inline SVG, with the threshold as a dashed line."""
    width, height, left, right, top, bottom = 500, 260, 52, 34, 44, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    low, high, bins, counts = histogram["low"], histogram["high"], histogram["bins"], histogram["counts"]
    totals = [sum(counts[part][i] for part in COLOURS) for i in range(bins)]
    peak = max(max(totals), 1)

    def x_of(value: float) -> float:
        return left + (value - low) / (high - low) * plot_w

    out = [f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
           f"aria-label='{html.escape(title)} histogram' style='background:#fff;border:1px solid #ddd'>",
           f"<text x='{left}' y='18' font-size='14' font-weight='bold'>{html.escape(title)}</text>"]
    bar_w = plot_w / bins
    for i in range(bins):
        y = top + plot_h
        for part in COLOURS:
            n = counts[part][i]
            if n:
                h = n / peak * plot_h
                y -= h
                out.append(f"<rect x='{left + i * bar_w + 0.5:.2f}' y='{y:.2f}' width='{max(bar_w - 1, 0.5):.2f}' "
                           f"height='{h:.2f}' fill='{COLOURS[part]}'><title>{n}</title></rect>")
    axis_y = top + plot_h
    out.append(f"<line x1='{left}' y1='{axis_y}' x2='{left + plot_w}' y2='{axis_y}' stroke='#333'/>")
    out.append(f"<line x1='{left}' y1='{top}' x2='{left}' y2='{axis_y}' stroke='#333'/>")
    step = (high - low) / 5
    for k in range(6):
        value = low + step * k
        x = x_of(value)
        out.append(f"<line x1='{x:.2f}' y1='{axis_y}' x2='{x:.2f}' y2='{axis_y + 4}' stroke='#333'/>"
                   f"<text x='{x:.2f}' y='{axis_y + 16}' font-size='11' text-anchor='middle'>{_tick(value, step)}</text>")
    out.append(f"<text x='{left - 6}' y='{top + 4}' font-size='11' text-anchor='end'>{peak}</text>"
               f"<text x='{left - 6}' y='{axis_y}' font-size='11' text-anchor='end'>0</text>"
               f"<text x='14' y='{top + plot_h / 2:.0f}' font-size='11' text-anchor='middle' "
               f"transform='rotate(-90 14 {top + plot_h / 2:.0f})'>samples</text>")
    threshold = histogram["threshold"]
    if threshold is not None:
        x = x_of(threshold)
        anchor = "end" if x > left + plot_w * 0.7 else "start"
        shift = -4 if anchor == "end" else 4
        out.append(f"<line x1='{x:.2f}' y1='{top - 4}' x2='{x:.2f}' y2='{axis_y}' stroke='#c0392b' stroke-width='2' "
                   f"stroke-dasharray='5,3'/><text x='{x + shift:.2f}' y='{top - 8}' font-size='11' fill='#c0392b' "
                   f"text-anchor='{anchor}'>threshold {threshold:g} (keep {rule or ''})</text>")
    legend = [("kept", "kept"), ("this", f"dropped by {stage or 'this stage'}"), ("other", "dropped by other stages")]
    x = left
    for part, label in legend:
        if any(counts[part]):
            out.append(f"<rect x='{x}' y='{height - 14}' width='10' height='10' fill='{COLOURS[part]}'/>"
                       f"<text x='{x + 14}' y='{height - 5}' font-size='11'>{html.escape(label)}</text>")
            x += 24 + 6.5 * len(label)
    out.append("</svg>")
    return "".join(out)
