"""``imgcurate dedup``: remove exact, perceptual (pHash) or semantic (SemDeDup) duplicates and write the rest.

It runs a :class:`~imgcurate.stages.Pipeline` (read → [embed] → dedup → write), so the output has the
writer's format, counts and manifest; ``--keep-dropped`` writes the duplicates to ``_dropped/``
with their ``duplicate_of``. :func:`add_dedup_options` also gives ``imgcurate curate`` its ``--dedup``.
"""

from __future__ import annotations

from .options import add_output, add_scheduler, run_pipeline

METHODS = ("exact", "phash", "semantic")


def add_dedup_options(parser, *, method_flag: str = "--method", repeatable: bool = False) -> None:
    """The deduplication options: the method, its threshold and clustering, and the keep order."""
    from ...common.defaults import DEDUP_EPS as DEFAULT_EPS, DEDUP_MAX_DISTANCE as DEFAULT_MAX_DISTANCE
    from ...common.defaults import DEDUP_MAX_CLUSTER_ROWS as DEFAULT_MAX_CLUSTER_ROWS
    from ...common.defaults import DEDUP_MAX_ITER as DEFAULT_MAX_ITER

    if repeatable:
        parser.add_argument(method_flag, action="append", choices=METHODS, metavar="METHOD", dest="dedup",
                            help="also remove duplicates: exact (equal image bytes), phash (perceptual hash within "
                                 "--max-distance bits) or semantic (CLIP embeddings, SemDeDup); repeat for several, "
                                 "run in the order given after the filters")
    else:
        parser.add_argument(method_flag, required=True, choices=METHODS, dest="dedup",
                            help="exact: equal image bytes (SHA-256); phash: perceptual hashes within --max-distance "
                                 "bits; semantic: CLIP embeddings clustered with k-means, cosine similarity >= 1 - --eps "
                                 "within a cluster (SemDeDup)")
    parser.add_argument("--max-distance", type=int, metavar="N",
                        help=f"phash: Hamming distance (0-32 bits of 64) within which images are duplicates "
                             f"(default {DEFAULT_MAX_DISTANCE}, measured on real photos: see the README)")
    parser.add_argument("--eps", type=float, metavar="E",
                        help=f"semantic: duplicates have cosine similarity >= 1 - E, 0 < E < 1 (default {DEFAULT_EPS})")
    parser.add_argument("--n-clusters", type=int, metavar="K",
                        help="semantic: k-means clusters (default: one per 1,000 samples)")
    parser.add_argument("--max-iter", type=int, metavar="N",
                        help=f"semantic: k-means iterations (default {DEFAULT_MAX_ITER})")
    parser.add_argument("--max-cluster-rows", type=int, metavar="N",
                        help=f"semantic: a cluster of more rows is compared in chunks of at most ~N rows, pair of "
                             f"chunks by pair (the same result; lower it if a worker runs out of memory; default "
                             f"{DEFAULT_MAX_CLUSTER_ROWS:,})")
    parser.add_argument("--keep", metavar="ORDER",
                        help="which sample of duplicates is kept: first (input order, default), random, hard / easy "
                             "(semantic: farthest from / nearest to the cluster centre), or a numeric column "
                             "(smallest first; with --descending, largest first)")
    parser.add_argument("--descending", action="store_true", help="with --keep COLUMN: keep the largest value")
    parser.add_argument("--seed", type=int, help="seed of k-means and of --keep random (default 42)")


# the options of one method: given without that method they would change nothing, so they are refused
METHOD_OPTIONS = {"max_distance": "phash", "eps": "semantic", "n_clusters": "semantic", "max_iter": "semantic",
                  "max_cluster_rows": "semantic"}
ORDER_OPTIONS = ("keep", "seed", "descending")


def check_method_options(args, methods, method_flag: str = "--method") -> None:
    """Raise ValueError for a deduplication option that none of ``methods`` uses."""
    for dest, method in METHOD_OPTIONS.items():
        if getattr(args, dest) is not None and method not in methods:
            chosen = f"{method_flag} {', '.join(methods)}" if methods else f"no {method_flag}"
            raise ValueError(f"--{dest.replace('_', '-')} applies to {method_flag} {method}, and this run has {chosen}")
    if not methods:
        for dest in ORDER_OPTIONS:
            if getattr(args, dest) not in (None, False):
                raise ValueError(f"--{dest} orders the samples of a deduplication: give {method_flag} METHOD with it")


def dedup_stage(args, method: str, model: str | None = None, pretrained: str | None = None):
    """The stage the options describe (options left unset take the stage's defaults)."""
    from ...stages import ImageDeduplicationStage

    given = {"max_distance": args.max_distance, "eps": args.eps, "n_clusters": args.n_clusters, "keep": args.keep,
             "seed": args.seed, "max_iter": args.max_iter, "max_cluster_rows": args.max_cluster_rows,
             "model_name": model or args.model, "pretrained": pretrained or args.pretrained, "batch_size": args.batch_size,
             "device": args.device}
    return ImageDeduplicationStage(method, ascending=not args.descending, on_error="raise" if args.strict else "report",
                                   verbose=not args.no_progress, **{k: v for k, v in given.items() if v is not None})


def pipeline_from_args(args):
    from ...stages import FilePartitioningStage, ImageEmbeddingStage, ImageReaderStage, ImageWriterStage, Pipeline

    check_method_options(args, [args.dedup])
    on_error = "raise" if args.strict else "report"
    stages = [FilePartitioningStage(args.input, file_extensions=(".tar", ".tar.gz", ".tgz")),
              ImageReaderStage(on_error=on_error)]
    if args.dedup == "semantic":
        stages.append(ImageEmbeddingStage(args.model, args.pretrained, batch_size=args.batch_size, device=args.device,
                                          on_error=on_error))
    stages += [dedup_stage(args, args.dedup),
               ImageWriterStage(args.output, images_per_tar=args.images_per_tar, overwrite=args.overwrite,
                                keep_dropped=args.keep_dropped, verbose=not args.no_progress)]
    return Pipeline(name="dedup", stages=stages)


def run(args) -> int:
    return run_pipeline(pipeline_from_args(args), args.scheduler)


def register(sub) -> None:
    p = sub.add_parser("dedup", help="remove exact, perceptual (pHash) or semantic (SemDeDup) duplicates",
                       description="Find duplicates across all shards and write the rest as exact-size shards. A sample "
                                   "is a duplicate when a sample before it in the --keep order, kept or not, is within "
                                   "the threshold; the manifest records the method, its parameters and the duplicates "
                                   "removed, and --keep-dropped writes them to OUT/_dropped/ with duplicate_of.")
    p.add_argument("input", help="directory, glob, brace range or file of .tar/.tar.gz shards")
    add_dedup_options(p)
    p.add_argument("--model", default="ViT-L-14", help="semantic: open_clip model name (default ViT-L-14)")
    p.add_argument("--pretrained", default="openai", help="semantic: open_clip pretrained tag or checkpoint file "
                                                           "(default openai); 'random' for random weights")
    p.add_argument("--batch-size", type=int, help="semantic: images per model batch")
    p.add_argument("--device", help="semantic: torch device (default: cuda when present, else cpu)")
    p.add_argument("--keep-dropped", action="store_true", help="also write the duplicates under OUT/_dropped/")
    add_output(p)
    add_scheduler(p)
    p.set_defaults(func=run)
