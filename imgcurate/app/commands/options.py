"""Options shared by several commands, and how their results are printed."""

from __future__ import annotations

import argparse

from ...common.cluster import SCHEDULER_ENV


def add_scheduler(parser: argparse.ArgumentParser, starts_cluster: bool = True) -> None:
    otherwise = "a local cluster started for the job" if starts_cluster else "in-process threads"
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help=f"Dask scheduler address (tcp://HOST:PORT), or 'threads'; default: ${SCHEDULER_ENV}, else {otherwise}",
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


def print_result(result) -> None:
    print(result)
    print_failures(result)


def print_failures(result) -> None:
    from ...io.manifest import failures_by_reason

    failed = failures_by_reason(result.counts)
    if failed:
        summary = ", ".join(f"{reason} {n}" for reason, n in sorted(failed.items(), key=lambda kv: -kv[1]))
        print(f"failures: {summary} (details: {result.output_dir}/_failures.parquet)")
    if result.counts.get("renamed_keys"):
        print(f"renamed keys: {result.counts['renamed_keys']} (listed in _manifest.json)")
