"""``imgcurate reshard`` and ``imgcurate export``: copy a WebDataset into exact-size shards, optionally
only the samples a SQL predicate keeps; image bytes are copied, never decoded (unless validated)."""

from __future__ import annotations

from ...common.cluster import dask_client
from .options import add_output, add_scheduler, add_validate_images, check_before_work, print_result


def run(args) -> int:
    from ...dataframe import mark_where, validate_images
    from ...io.reader import read_webdataset
    from ...io.writer import write_webdataset

    on_error = "raise" if args.strict else "report"
    shards = check_before_work(args)
    with dask_client(args.scheduler, work="copy", shards=shards):
        df = read_webdataset(shards, with_images=False, on_error=on_error)
        if getattr(args, "where", None):
            df = mark_where(df, args.where, stage="where")
        if args.validate_images:  # after the predicate: rows it drops are not copied, so need no check
            df = validate_images(df, on_error=on_error)
        save_uids = getattr(args, "save_uids", None)
        if save_uids:  # a sample the uid file cannot list is not written either
            from ...dataframe import check_uids

            df = check_uids(df, on_error=on_error)
        result = write_webdataset(df, args.output, images_per_tar=args.images_per_tar, overwrite=args.overwrite,
                                  progress=not args.no_progress)
        if save_uids:
            from ...stages.captions import save_written_uids

            saved = save_written_uids(result.output_dir, save_uids, progress=not args.no_progress)
    status = print_result(result)
    if save_uids:
        print(f"wrote {saved.uids} uids to {saved.path}")
    return status


def register(sub) -> None:
    p = sub.add_parser("reshard", help="copy a WebDataset into shards of exactly N samples (no decoding)",
                       description="Copy any WebDataset into shards of exactly --images-per-tar samples, "
                                   "plus Parquet metadata, without re-encoding images (or decoding them, unless "
                                   "--validate-images).")
    p.add_argument("input", help="directory, glob, brace range or file of .tar/.tar.gz shards")
    add_output(p)
    add_validate_images(p)
    add_scheduler(p, "copy")
    p.set_defaults(func=run)

    p = sub.add_parser("export", help="reshard only the samples whose metadata matches a SQL predicate",
                       description="Keep the samples for which a SQL predicate over their metadata holds "
                                   "(DuckDB syntax, e.g. \"width >= 300 AND caption ILIKE '%%dog%%'\") and "
                                   "reshard them exactly as `reshard` does.")
    p.add_argument("input", help="directory, glob, brace range or file of .tar/.tar.gz shards")
    p.add_argument("--where", required=True, metavar="PREDICATE", help="SQL boolean expression over metadata columns")
    p.add_argument("--save-uids", metavar="SUBSET.npy",
                   help="also write the uids of the written samples as DataComp's .npy (np.dtype('u8,u8') pairs, "
                        "sorted); samples without a valid uid are failures (no_uid, bad_uid)")
    add_output(p)
    add_validate_images(p)
    add_scheduler(p, "copy")
    p.set_defaults(func=run)
