"""``imgcurate demo``: the main job on the bundled sample data."""

from __future__ import annotations

from .options import add_scheduler


def run(args) -> int:
    from ..demo import run_demo

    return run_demo(args.directory, args.scheduler)


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on the bundled sample data",
                       description="Generate the sample data in DIRECTORY and curate it (embed, score, filter, write), "
                                   "with trained weights when they are on this machine, else with a tiny "
                                   "random-weight model, clearly labelled.")
    p.add_argument("directory", nargs="?", default="sample-output")
    add_scheduler(p)
    p.set_defaults(func=run)
