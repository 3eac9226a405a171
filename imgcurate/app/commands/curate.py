"""``imgcurate curate``: embed, score, filter and write, as a :class:`~imgcurate.stages.Pipeline`."""

from __future__ import annotations

from .dedup import add_dedup_options, dedup_stage, print_summaries
from .options import add_scheduler, print_failures


def pipeline_from_args(args):
    """The pipeline the arguments describe: built from flags, or read from ``--config``."""
    from ...stages import (
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
        *[dedup_stage(args, method) for method in args.dedup or ()],
        ImageWriterStage(args.output, images_per_tar=args.images_per_tar, overwrite=args.overwrite,
                         keep_dropped=args.keep_dropped, verbose=not args.no_progress),
    ])


def run(args) -> int:
    pipeline = pipeline_from_args(args)
    result = pipeline.run(scheduler=args.scheduler)
    if not pipeline.stages[-1].verbose:
        print(result)
    print_summaries(result.manifest)
    print_failures(result.write)
    return 0


def register(sub) -> None:
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
    add_dedup_options(p, method_flag="--dedup", repeatable=True)
    p.add_argument("--output", "-o", help="output directory (or set in --config)")
    p.add_argument("--images-per-tar", type=int, default=1000, metavar="N", help="samples per output shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory written by imgcurate")
    p.add_argument("--strict", action="store_true", help="stop at the first bad shard, member or image instead of reporting it")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    add_scheduler(p)
    p.set_defaults(func=run)
