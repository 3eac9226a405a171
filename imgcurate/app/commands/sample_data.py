"""``imgcurate sample-data``: the small generated sample WebDataset."""

from __future__ import annotations

from ...common.cluster import dask_client
from .options import add_scheduler


def run(args) -> int:
    from ..sample_data import make_sample_dataset

    with dask_client(args.scheduler, work="read"):
        paths = make_sample_dataset(args.output, shards=args.shards, samples_per_shard=args.samples_per_shard,
                                    damaged=args.damaged)
    print(f"wrote {len(paths)} shards with {args.shards * args.samples_per_shard} samples to {args.output}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("sample-data", help="write the small generated sample WebDataset",
                       description="Write a small, deterministic WebDataset of generated JPEG images with captions, JSON "
                                   "and an img2dataset-style sidecar Parquet (one Dask task per shard).")
    p.add_argument("output")
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--samples-per-shard", type=int, default=16)
    p.add_argument("--damaged", action="store_true", help="cut one JPEG short, to see how a failure is reported")
    add_scheduler(p, "read")
    p.set_defaults(func=run)
