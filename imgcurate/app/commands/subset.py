"""``imgcurate subset``: reshard exactly the samples a DataComp uid subset (``.npy``) lists."""

from __future__ import annotations

from ...common.cluster import dask_client
from .options import add_output, add_scheduler, add_validate_images, print_result


def run(args) -> int:
    from ...dataframe import select_uids, uid_subset_misses, validate_images
    from ...dataframe.captions import SELECT_UIDS_STAGE
    from ...io.reader import read_webdataset
    from ...io.writer import write_webdataset

    on_error = "raise" if args.strict else "report"
    with dask_client(args.scheduler):
        df = read_webdataset(args.input, with_images=False, on_error=on_error)
        df = select_uids(df, args.uids, on_error=on_error)  # the file is checked here, before any shard is read
        misses = uid_subset_misses(df, args.uids, progress=not args.no_progress)
        if args.validate_images:
            df = validate_images(df, on_error=on_error)
        result = write_webdataset(df, args.output, images_per_tar=args.images_per_tar, overwrite=args.overwrite,
                                  progress=not args.no_progress,
                                  manifest_extra={"uid_subset": {"stage": SELECT_UIDS_STAGE, **misses.describe()}})
    print_result(result)
    if misses.duplicates:
        print(f"{misses.duplicates} uids are listed more than once in {args.uids}; each sample is written once")
    if misses.missing:
        print(f"{misses.missing} of the {misses.found + misses.missing} uids in {args.uids} are not in the input "
              f"(listed in {result.output_dir}/_manifest.json)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("subset", help="reshard exactly the samples a DataComp uid subset (.npy) lists",
                       description="Keep the samples whose uid (from each sample's .json or the sidecar Parquet) is "
                                   "listed in a DataComp subset file, a .npy of np.dtype('u8,u8') pairs as DataComp's "
                                   "baselines save them, and reshard them exactly as `reshard` does. Listed uids that "
                                   "are not in the input are counted and listed in _manifest.json; samples without a "
                                   "valid uid are failures (no_uid, bad_uid).")
    p.add_argument("input", help="directory, glob, brace range or file of .tar/.tar.gz shards")
    p.add_argument("--uids", required=True, metavar="SUBSET.npy", help="the uid subset to keep")
    add_output(p)
    add_validate_images(p)
    add_scheduler(p)
    p.set_defaults(func=run)
