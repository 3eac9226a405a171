"""``imgcurate sample-data``: the small generated sample WebDataset."""

from __future__ import annotations


def run(args) -> int:
    from ..sample_data import make_sample_dataset

    paths = make_sample_dataset(args.output, shards=args.shards, samples_per_shard=args.samples_per_shard)
    print(f"wrote {len(paths)} shards with {args.shards * args.samples_per_shard} samples to {args.output}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("sample-data", help="write the small generated sample WebDataset",
                       description="Write a small, deterministic WebDataset of generated images (JPEG and PNG, "
                                   "captions, JSON, sidecar Parquet).")
    p.add_argument("output")
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--samples-per-shard", type=int, default=16)
    p.set_defaults(func=run)
