"""``imgcurate report``: one self-contained HTML file about an imgcurate output directory."""

from __future__ import annotations

from ...common.cluster import dask_client
from .options import add_scheduler


def run(args) -> int:
    from ..report import write_report

    with dask_client(args.scheduler, work="read"):
        write_report(args.dataset, args.output, thumbnails=args.thumbnails)
    print(f"wrote {args.output}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of an imgcurate output",
                       description="Write one HTML file, with nothing loaded from outside it, about an output directory "
                                   "written by imgcurate: samples per stage, failures by reason, the models (flagged when "
                                   "their weights are random), score histograms with the run's thresholds, and "
                                   "thumbnails of kept and dropped samples.")
    p.add_argument("dataset", help="an output directory written by imgcurate (curate, reshard, export, Python)")
    p.add_argument("--output", "-o", required=True, metavar="REPORT.html", help="the HTML file to write")
    p.add_argument("--thumbnails", type=int, default=24, metavar="N",
                   help="thumbnails of kept samples, and of dropped ones when kept aside (default 24)")
    add_scheduler(p, "read")
    p.set_defaults(func=run)
