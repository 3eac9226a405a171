"""``imgcurate curate``: embed, score, filter and write, as a :class:`~imgcurate.stages.Pipeline`.

The pipeline comes from the flags, or from ``--config FILE``; flags given with ``--config`` override
the file's values (each flag names the stage parameter it sets, :data:`FLAG_TARGETS`), and the
manifest records the merged pipeline and which flags changed it.
"""

from __future__ import annotations

from typing import Any

from .dedup import add_dedup_options, check_method_options, dedup_stage
from .options import add_scheduler, run_pipeline

# flag (argparse dest) → (stage class name, parameter), and its value when neither flag nor file gives one
FLAG_TARGETS: dict[str, tuple[str, str]] = {
    "input": ("FilePartitioningStage", "file_paths"),
    "model": ("ImageEmbeddingStage", "model_name"),
    "pretrained": ("ImageEmbeddingStage", "pretrained"),
    "batch_size": ("ImageEmbeddingStage", "batch_size"),
    "device": ("ImageEmbeddingStage", "device"),
    "aesthetic_threshold": ("ImageAestheticFilterStage", "score_threshold"),
    "aesthetic_weights": ("ImageAestheticFilterStage", "weights"),
    "nsfw_threshold": ("ImageNSFWFilterStage", "score_threshold"),
    "nsfw_weights": ("ImageNSFWFilterStage", "weights"),
    "output": ("ImageWriterStage", "output_dir"),
    "images_per_tar": ("ImageWriterStage", "images_per_tar"),
    "keep_dropped": ("ImageWriterStage", "keep_dropped"),
    "overwrite": ("ImageWriterStage", "overwrite"),
    "clip_score_min": ("ImageTextAlignmentFilterStage", "score_threshold"),
    "clip_score_top_fraction": ("ImageTextAlignmentFilterStage", "top_fraction"),
    "save_uids": ("UidSubsetStage", "save_uids"),
    "max_distance": ("ImageDeduplicationStage", "max_distance"),
    "eps": ("ImageDeduplicationStage", "eps"),
    "n_clusters": ("ImageDeduplicationStage", "n_clusters"),
    "max_iter": ("ImageDeduplicationStage", "max_iter"),
    "max_cluster_rows": ("ImageDeduplicationStage", "max_cluster_rows"),
    "keep": ("ImageDeduplicationStage", "keep"),
    "seed": ("ImageDeduplicationStage", "seed"),
}
DEFAULTS: dict[str, Any] = {"model": "ViT-L-14", "pretrained": "openai", "aesthetic_threshold": 5.0, "nsfw_threshold": 0.5,
                            "images_per_tar": 1000}


def _given(args) -> dict[str, Any]:
    """The flags given on the command line (their defaults are None or False, so unset ones are told apart)."""
    values = {dest: getattr(args, dest, None) for dest in FLAG_TARGETS}
    return {dest: value for dest, value in values.items() if value is not None and value is not False}  # 0 is a value


def pipeline_from_args(args):
    """The pipeline the arguments describe: built from flags, or read from ``--config`` with the flags applied."""
    from ...common.errors import PipelineError
    from ...stages import (
        FilePartitioningStage, ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage, ImageReaderStage,
        ImageTextAlignmentFilterStage, ImageTextBasicFilterStage, ImageWriterStage, Pipeline, UidSubsetStage,
    )

    given = _given(args)
    on_error = "raise" if args.strict else "report"
    if args.config:
        for flag, stage_class in (("basic_filter", "ImageTextBasicFilterStage"), ("dedup", "ImageDeduplicationStage")):
            if getattr(args, flag):
                raise PipelineError(f"--{flag.replace('_', '-')} adds a stage; with --config, add {stage_class} to {args.config}")
        pipeline = Pipeline.from_yaml(args.config)
        by_class = {type(stage).__name__: stage for stage in pipeline.stages}
        for dest, value in given.items():
            stage_class, parameter = FLAG_TARGETS[dest]
            if stage_class not in by_class:
                raise PipelineError(f"--{dest.replace('_', '-')} sets {stage_class}.{parameter}, but {args.config} has no "
                                    f"{stage_class}")
            setattr(by_class[stage_class], parameter, value)
        if args.descending:  # a flag for the opposite of the stage's parameter
            if "ImageDeduplicationStage" not in by_class:
                raise PipelineError(f"--descending sets ImageDeduplicationStage.ascending, but {args.config} has none")
            by_class["ImageDeduplicationStage"].ascending = False
            given["descending"] = True
        for stage in pipeline.stages:
            if args.strict and hasattr(stage, "on_error"):
                stage.on_error = "raise"
            if args.no_progress and isinstance(stage, ImageWriterStage):
                stage.verbose = False
        pipeline.config = {**(pipeline.config or {}), "config_file": str(args.config),
                           "overridden_by_flags": sorted(f"--{dest.replace('_', '-')}" for dest in given)}
        return pipeline
    if not args.input or not args.output:
        raise ValueError("give INPUT and --output, or a --config file that names them")
    check_method_options(args, args.dedup or [], method_flag="--dedup")
    value = {dest: given.get(dest, DEFAULTS.get(dest)) for dest in FLAG_TARGETS}
    if value["clip_score_min"] is not None and value["clip_score_top_fraction"] is not None:
        raise ValueError("give --clip-score-min or --clip-score-top-fraction, not both")
    verbose = not args.no_progress
    # caption and uid checks first: the rows they drop are never embedded
    captions = ([UidSubsetStage(save_uids=value["save_uids"], on_error=on_error, verbose=verbose)] if value["save_uids"] else []) \
        + ([ImageTextBasicFilterStage(on_error=on_error)] if args.basic_filter else [])
    alignment = [ImageTextAlignmentFilterStage(value["clip_score_min"], value["clip_score_top_fraction"], on_error=on_error,
                                               verbose=verbose)] \
        if value["clip_score_min"] is not None or value["clip_score_top_fraction"] is not None else []
    return Pipeline(name="curate", stages=[
        FilePartitioningStage(value["input"], file_extensions=(".tar", ".tar.gz", ".tgz")),
        ImageReaderStage(on_error=on_error),
        *captions,
        ImageEmbeddingStage(value["model"], value["pretrained"], batch_size=value["batch_size"], device=value["device"],
                            on_error=on_error),
        *alignment,
        ImageAestheticFilterStage(value["aesthetic_threshold"], weights=value["aesthetic_weights"]),
        ImageNSFWFilterStage(value["nsfw_threshold"], weights=value["nsfw_weights"]),
        *[dedup_stage(args, method, value["model"], value["pretrained"]) for method in args.dedup or ()],
        ImageWriterStage(value["output"], images_per_tar=value["images_per_tar"], overwrite=bool(value["overwrite"]),
                         keep_dropped=bool(value["keep_dropped"]), verbose=verbose),
    ])


def run(args) -> int:
    return run_pipeline(pipeline_from_args(args), args.scheduler)


def register(sub) -> None:
    p = sub.add_parser("curate", help="embed, score, filter and write: the full curation",
                       description="Embed images with CLIP, score them with LAION's aesthetic and NSFW heads, keep "
                                   "those that pass the thresholds, and write exact-size shards with the scores. "
                                   "Runs the same Pipeline as the Python stage API; --config takes a YAML description "
                                   "of its stages, and flags given with it override the file's values.")
    p.add_argument("input", nargs="?", help="directory, glob, brace range or file of shards (or set in --config)")
    p.add_argument("--config", metavar="PIPELINE.yaml", help="pipeline stages in YAML (see README, 'Pipelines')")
    p.add_argument("--aesthetic-threshold", type=float, metavar="T",
                   help="keep images with aesthetic score >= T (LAION's ~1-10 scale; default 5.0)")
    p.add_argument("--nsfw-threshold", type=float, metavar="T",
                   help="keep images with NSFW score < T (0-1; default 0.5)")
    p.add_argument("--clip-score-min", type=float, metavar="T",
                   help="keep image-text pairs whose CLIP score (plain cosine, -1..1, by --model) is >= T, e.g. 0.28 "
                        "(LAION) or 0.3 (DataComp, ViT-B/32); pairs without a caption are dropped")
    p.add_argument("--clip-score-top-fraction", type=float, metavar="F",
                   help="keep the top F (0-1] of the scored pairs over the whole input, exactly as DataComp's "
                        "baselines (0.3 with ViT-L-14); the threshold used is recorded in _manifest.json")
    p.add_argument("--basic-filter", action="store_true",
                   help="DataComp's basic filter: English caption of more than 2 words and 5 characters, smaller "
                        "image side >= 200 px, aspect ratio <= 3")
    p.add_argument("--save-uids", metavar="SUBSET.npy",
                   help="also write the uids of the written samples as DataComp's .npy (np.dtype('u8,u8') pairs, "
                        "sorted); samples without a valid uid are failures (no_uid, bad_uid)")
    p.add_argument("--model", help="open_clip model name (default ViT-L-14, built with QuickGELU for OpenAI weights)")
    p.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint file (default openai); 'random' for random "
                        "weights (a demonstration, not a curation)")
    p.add_argument("--aesthetic-weights", metavar="PATH", help="LAION aesthetic head weights (sac+logos+ava1-l14-linearMSE.pth; default: "
                        "$IMGCURATE_HOME, else downloaded); 'random' for random weights")
    p.add_argument("--nsfw-weights", metavar="PATH", help="LAION NSFW head weights (clip_autokeras_binary_nsfw.pth; default: $IMGCURATE_HOME, "
                        "else downloaded); 'random' for random weights")
    p.add_argument("--batch-size", type=int, help="images per model batch (default: 32 on CPU, 256 on GPU, decided on each worker)")
    p.add_argument("--device", help="torch device (default: cuda where the worker has one, else cpu)")
    p.add_argument("--keep-dropped", action="store_true", help="also write the filtered-out samples under OUT/_dropped/")
    add_dedup_options(p, method_flag="--dedup", repeatable=True)
    p.add_argument("--output", "-o", help="output directory (or set in --config)")
    p.add_argument("--images-per-tar", type=int, metavar="N", help="samples per output shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory written by imgcurate")
    p.add_argument("--strict", action="store_true", help="stop at the first bad shard, member or image instead of reporting it")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    add_scheduler(p)
    p.set_defaults(func=run)
