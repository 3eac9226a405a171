"""The ``imgcurate`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from ..common.cluster import SCHEDULER_ENV, dask_client
from ..common.errors import ImgcurateError

log = logging.getLogger("imgcurate")


def _add_scheduler(parser: argparse.ArgumentParser, starts_cluster: bool = True) -> None:
    otherwise = "a local cluster started for the job" if starts_cluster else "in-process threads"
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help=f"Dask scheduler address (tcp://HOST:PORT), or 'threads'; default: ${SCHEDULER_ENV}, else {otherwise}",
    )


def _add_output(parser: argparse.ArgumentParser, images_per_tar: bool = True) -> None:
    parser.add_argument("--output", "-o", required=True, help="output directory (local path or fsspec URL)")
    if images_per_tar:
        parser.add_argument("--images-per-tar", type=int, default=1000, metavar="N",
                            help="samples per output shard; every shard but the last holds exactly N (default 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory written by imgcurate")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad shard, member or image instead of reporting it")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def _add_validate_images(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--validate-images", action="store_true",
                        help="decode every image first (Pillow, within its pixel limit) and list those that fail as "
                             "decode_error / image_too_large instead of copying them; without it, image bytes are "
                             "copied unchecked")


def _print_result(result) -> None:
    print(result)
    _print_failures(result)


def _print_failures(result) -> None:
    failed = {**result.counts.get("failed_by_reason", {}), **result.counts.get("rejected_members_by_reason", {}),
              **result.counts.get("rejected_shards_by_reason", {})}
    if failed:
        summary = ", ".join(f"{reason} {n}" for reason, n in sorted(failed.items(), key=lambda kv: -kv[1]))
        print(f"failures: {summary} (details: {result.output_dir}/_failures.parquet)")
    if result.counts.get("renamed_keys"):
        print(f"renamed keys: {result.counts['renamed_keys']} (listed in _manifest.json)")


def cmd_reshard(args) -> int:
    from ..dataframe import mark_where, validate_images
    from ..io.reader import read_webdataset
    from ..io.writer import write_webdataset

    on_error = "raise" if args.strict else "report"
    with dask_client(args.scheduler):
        df = read_webdataset(args.input, with_images=False, on_error=on_error)
        if getattr(args, "where", None):
            df = mark_where(df, args.where, stage="where")
        if args.validate_images:  # after the predicate: rows it drops are not copied, so need no check
            df = validate_images(df, on_error=on_error)
        result = write_webdataset(df, args.output, images_per_tar=args.images_per_tar, overwrite=args.overwrite,
                                  progress=not args.no_progress)
    _print_result(result)
    return 0


def cmd_query(args) -> int:
    from ..dataframe.sql import sql

    with dask_client(args.scheduler, start_cluster=False):
        result = sql(args.sql, args.dataset)
    if args.format == "csv":
        result.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(result.to_json(orient="records", lines=False, force_ascii=False, default_handler=str))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", args.max_rows, "display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 60):
            print(result.to_string(index=False, max_rows=args.max_rows) if len(result) else "(no rows)")
    return 0


def _curate_pipeline(args):
    from ..stages import (
        FilePartitioningStage, ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage, ImageReaderStage,
        ImageWriterStage, Pipeline,
    )

    if args.config:
        pipeline = Pipeline.from_yaml(args.config)
        # command-line input and output take precedence over the file's
        if args.input:
            pipeline.stages[0].file_paths = args.input
        writer = pipeline.stages[-1]
        if isinstance(writer, ImageWriterStage):
            if args.output:
                writer.output_dir = args.output
            writer.overwrite = writer.overwrite or args.overwrite
            writer.verbose = writer.verbose or not args.no_progress
        return pipeline
    if not args.input or not args.output:
        raise ValueError("give INPUT and --output, or a --config file that names them")
    on_error = "raise" if args.strict else "report"
    return Pipeline(name="curate", stages=[
        FilePartitioningStage(args.input, file_extensions=(".tar", ".tar.gz", ".tgz")),
        ImageReaderStage(on_error=on_error),
        ImageEmbeddingStage(args.model, args.pretrained, batch_size=args.batch_size, device=args.device, on_error=on_error),
        ImageAestheticFilterStage(args.aesthetic_threshold, weights=args.aesthetic_weights),
        ImageNSFWFilterStage(args.nsfw_threshold, weights=args.nsfw_weights),
        ImageWriterStage(args.output, images_per_tar=args.images_per_tar, overwrite=args.overwrite,
                         keep_dropped=args.keep_dropped, verbose=not args.no_progress),
    ])


def cmd_curate(args) -> int:
    pipeline = _curate_pipeline(args)
    result = pipeline.run(scheduler=args.scheduler)
    if not pipeline.stages[-1].verbose:
        print(result)
    _print_failures(result.write)
    return 0


def cmd_inspect(args) -> int:
    from ..dataframe.inspect import inspect_dataset

    with dask_client(args.scheduler, start_cluster=False):
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


def cmd_report(args) -> int:
    from .report import write_report

    write_report(args.dataset, args.output, thumbnails=args.thumbnails)
    print(f"wrote {args.output}")
    return 0


def cmd_sample_data(args) -> int:
    from .sample_data import make_sample_dataset

    paths = make_sample_dataset(args.output, shards=args.shards, samples_per_shard=args.samples_per_shard)
    print(f"wrote {len(paths)} shards with {args.shards * args.samples_per_shard} samples to {args.output}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.directory, args.scheduler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgcurate", description="Curate image datasets stored as WebDataset shards.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("reshard", help="copy a WebDataset into shards of exactly N samples (no decoding)",
                       description="Copy any WebDataset into shards of exactly --images-per-tar samples, "
                                   "plus Parquet metadata, without re-encoding images (or decoding them, unless "
                                   "--validate-images).")
    p.add_argument("input", help="directory, glob, brace range or file of .tar/.tar.gz shards")
    _add_output(p)
    _add_validate_images(p)
    _add_scheduler(p)
    p.set_defaults(func=cmd_reshard)

    p = sub.add_parser("export", help="reshard only the samples whose metadata matches a SQL predicate",
                       description="Keep the samples for which a SQL predicate over their metadata holds "
                                   "(DuckDB syntax, e.g. \"width >= 300 AND caption ILIKE '%%dog%%'\") and "
                                   "reshard them exactly as `reshard` does.")
    p.add_argument("input", help="directory, glob, brace range or file of .tar/.tar.gz shards")
    p.add_argument("--where", required=True, metavar="PREDICATE", help="SQL boolean expression over metadata columns")
    _add_output(p)
    _add_validate_images(p)
    _add_scheduler(p)
    p.set_defaults(func=cmd_reshard)

    p = sub.add_parser("curate", help="embed, score, filter and write: the full curation",
                       description="Embed images with CLIP, score them with LAION's aesthetic and NSFW heads, keep "
                                   "those that pass the thresholds, and write exact-size shards with the scores. "
                                   "Runs the same Pipeline as the Python stage API; --config takes a YAML description "
                                   "of its stages.")
    p.add_argument("input", nargs="?", help="directory, glob, brace range or file of shards (or set in --config)")
    p.add_argument("--config", metavar="PIPELINE.yaml", help="pipeline stages in YAML (see README, 'Pipelines')")
    p.add_argument("--aesthetic-threshold", type=float, default=5.0, metavar="T",
                   help="keep images with aesthetic score >= T (LAION's ~1-10 scale; default 5.0)")
    p.add_argument("--nsfw-threshold", type=float, default=0.5, metavar="T",
                   help="keep images with NSFW score < T (0-1; default 0.5)")
    p.add_argument("--model", default="ViT-L-14", help="open_clip model name (default ViT-L-14, built with QuickGELU for OpenAI weights)")
    p.add_argument("--pretrained", default="openai", help="open_clip pretrained tag or checkpoint file (default openai); 'random' for random "
                        "weights (a demonstration, not a curation)")
    p.add_argument("--aesthetic-weights", metavar="PATH", help="LAION aesthetic head weights (sac+logos+ava1-l14-linearMSE.pth; default: "
                        "$IMGCURATE_HOME, else downloaded); 'random' for random weights")
    p.add_argument("--nsfw-weights", metavar="PATH", help="LAION NSFW head weights (clip_autokeras_binary_nsfw.pth; default: $IMGCURATE_HOME, "
                        "else downloaded); 'random' for random weights")
    p.add_argument("--batch-size", type=int, help="images per model batch (default: 32 on CPU, 256 on GPU)")
    p.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--keep-dropped", action="store_true", help="also write the filtered-out samples under OUT/_dropped/")
    p.add_argument("--output", "-o", help="output directory (or set in --config)")
    p.add_argument("--images-per-tar", type=int, default=1000, metavar="N", help="samples per output shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory written by imgcurate")
    p.add_argument("--strict", action="store_true", help="stop at the first bad shard, member or image instead of reporting it")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    _add_scheduler(p)
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("query", help="run a read-only SQL query over a dataset's metadata",
                       description="Run one SELECT over the metadata of DATASET, visible as the table 'samples' "
                                   "(and 'failures' / 'dropped' for an imgcurate output). DuckDB SQL; nothing can be "
                                   "written, attached or read besides the dataset.")
    p.add_argument("dataset", help="an imgcurate output directory, a Parquet file, or WebDataset shards")
    p.add_argument("sql", help="e.g. \"SELECT caption, aesthetic_score FROM samples ORDER BY aesthetic_score DESC LIMIT 10\"")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--max-rows", type=int, default=50, help="rows shown in table format (default 50)")
    _add_scheduler(p, starts_cluster=False)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("inspect", help="shards, samples, columns and sizes of a WebDataset",
                       description="Summarise a WebDataset: shards, samples, failures, columns and sizes.")
    p.add_argument("path", help="directory, glob, brace range or file of shards")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_scheduler(p, starts_cluster=False)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("report", help="write a self-contained HTML report of an imgcurate output",
                       description="Write one HTML file, with nothing loaded from outside it, about an output directory "
                                   "written by imgcurate: samples per stage, failures by reason, the models (flagged when "
                                   "their weights are random), score histograms with the run's thresholds, and "
                                   "thumbnails of kept and dropped samples.")
    p.add_argument("dataset", help="an output directory written by imgcurate (curate, reshard, export, Python)")
    p.add_argument("--output", "-o", required=True, metavar="REPORT.html", help="the HTML file to write")
    p.add_argument("--thumbnails", type=int, default=24, metavar="N",
                   help="thumbnails of kept samples, and of dropped ones when kept aside (default 24)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sample-data", help="write the small generated sample WebDataset",
                       description="Write a small, deterministic WebDataset of generated images (JPEG and PNG, "
                                   "captions, JSON, sidecar Parquet).")
    p.add_argument("output")
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--samples-per-shard", type=int, default=16)
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("demo", help="run the main job on the bundled sample data",
                       description="Generate the sample data in DIRECTORY and curate it (embed, score, filter, write), "
                                   "with trained weights when they are on this machine, else with a tiny "
                                   "random-weight model, clearly labelled.")
    p.add_argument("directory", nargs="?", default="sample-output")
    _add_scheduler(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # imgcurate's own messages at INFO; other libraries' (open_clip logs every model build) only when they warn
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ImgcurateError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"imgcurate {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
