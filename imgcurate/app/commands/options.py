"""Options shared by several commands, and how their results are printed."""

from __future__ import annotations

import argparse
import sys

from ...common.cluster import LOCAL_CLUSTER_MIN_BYTES, SCHEDULER_ENV


DEFAULTS = {
    "copy": "in-process threads (the copy runs without the GIL)",
    "read": "in-process threads",
    "compute": f"a local cluster when the input holds {LOCAL_CLUSTER_MIN_BYTES // 2**20} MiB or more, else in-process threads",
}


def add_scheduler(parser: argparse.ArgumentParser, work: str = "compute") -> None:
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help=f"Dask scheduler address (tcp://HOST:PORT), 'threads', or 'local' (a cluster on this machine for the job); "
             f"default: ${SCHEDULER_ENV}, else {DEFAULTS[work]}",
    )


def add_output(parser: argparse.ArgumentParser, images_per_tar: bool = True, required: bool = True) -> None:
    parser.add_argument("--output", "-o", required=required, help="output directory (local path or fsspec URL)")
    if images_per_tar:
        parser.add_argument("--images-per-tar", type=int, default=1000, metavar="N",
                            help="samples per output shard; every shard but the last holds exactly N (default 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory written by imgcurate")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad shard, member or image instead of reporting it")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def add_validate_images(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--validate-images", action="store_true",
                        help="decode every image first (Pillow, within its pixel limit) and list those that fail as "
                             "decode_error / image_too_large instead of copying them; without it, image bytes are "
                             "copied unchecked")


def check_before_work(args) -> list[str]:
    """The input shards, once every argument and path has been checked: nothing is read and no
    cluster is started before a mistake in them is reported."""
    from ...io.outputdir import check_output_dir
    from ...io.paths import expand_shards, filesystem, full_url
    from ...io.writer import check_images_per_tar, refuse_inputs_inside_output

    check_images_per_tar(args.images_per_tar)
    shards = expand_shards(args.input)
    fs, root = filesystem(args.output)
    refuse_inputs_inside_output(shards, full_url(fs, root))
    check_output_dir(fs, root, args.overwrite)
    return shards


def print_result(result, summary: bool = True) -> int:
    """Print what a write did (``summary``: its one-line summary too); the exit status: 1 when
    every input shard was rejected, else 0."""
    if summary:
        print(result)
    print_failures(result)
    counts = result.counts
    inputs = result.manifest.get("inputs", [])
    if inputs and counts.get("read", 0) == 0 and counts.get("rejected_shards", 0) >= len(inputs):
        print(f"no input shard could be read ({counts['rejected_shards']} rejected)", file=sys.stderr)
        return 1
    return 0


def run_pipeline(pipeline, scheduler: str | None) -> int:
    """Run a command's pipeline and print what it did (the writer's summary unless its progress
    already showed it, each dedup stage's count, uid files saved, failures); the exit status as
    :func:`print_result` decides it."""
    result = pipeline.run(scheduler=scheduler)
    if not pipeline.stages[-1].verbose:
        print(result)
    for summary in result.manifest.get("dedup", []):
        print(f"{summary['stage']}: {summary['duplicates']} duplicates among {summary['considered']} samples considered")
    for stage in pipeline.stages:
        if getattr(stage, "saved", None) is not None:
            print(f"wrote {stage.saved.uids} uids to {stage.saved.path}")
    return print_result(result.write, summary=False)


def print_failures(result) -> None:
    from ...io.manifest import failures_by_reason

    failed = failures_by_reason(result.counts)
    if failed:
        summary = ", ".join(f"{reason} {n}" for reason, n in sorted(failed.items(), key=lambda kv: -kv[1]))
        print(f"failures: {summary} (details: {result.output_dir}/_failures/)")
    if result.counts.get("renamed_keys"):
        print(f"renamed keys: {result.counts['renamed_keys']} (listed in _manifest.json)")
