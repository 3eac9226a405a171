"""``imgcurate inspect``: shards, samples, failures, columns and sizes of a WebDataset."""

from __future__ import annotations

import json

from ...common.cluster import dask_client
from .options import add_scheduler


def run(args) -> int:
    from ...dataframe.inspect import inspect_dataset

    with dask_client(args.scheduler, work="read"):
        report = inspect_dataset(args.path)
    print(json.dumps(report, indent=1) if args.json else report_text(report))
    return 0


def report_text(report: dict) -> str:
    lines = [f"{report['shards']} shards, {report['samples']} samples, {report['bytes'] / 1e6:.1f} MB"]
    if report["failures"]:
        lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in report["failures"].items()))
    width = max(len(s["shard"]) for s in report["per_shard"])
    lines.append(f"{'shard':<{width}}  {'samples':>8}  {'failures':>8}  {'MB':>8}")
    for s in report["per_shard"]:
        lines.append(f"{s['shard']:<{width}}  {s['samples']:>8}  {s['failures']:>8}  {s['bytes'] / 1e6:>8.2f}")
    lines.append("columns: " + ", ".join(f"{name} ({dtype})" for name, dtype in report["columns"].items()))
    if report.get("manifest"):
        counts = report["manifest"].get("counts", {})
        lines.append("written by imgcurate " + str(report["manifest"].get("imgcurate_version")) + ": " +
                     ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int)))
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("inspect", help="shards, samples, columns and sizes of a WebDataset",
                       description="Summarise a WebDataset: shards, samples, failures, columns and sizes.")
    p.add_argument("path", help="directory, glob, brace range or file of shards")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_scheduler(p, "read")
    p.set_defaults(func=run)
