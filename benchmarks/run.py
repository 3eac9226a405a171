"""Run the benchmarks: generate the dataset (once), measure ours and each peer, write results/<name>.json.

    .venv/bin/python benchmarks/run.py                 # the full suite (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick         # a smaller dataset and fewer repeats (under 5 minutes)
    .venv/bin/python benchmarks/run.py --only io,models

See benchmarks/README.md for what each measure compares and the latest figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_captions
import bench_defaults
import bench_dedup
import bench_gpu
import bench_io
import bench_models
import bench_scaling
import bench_search
from common import DATA, RESULTS, Config, dataset_for, markdown_table, print_measures, write_results

BENCHMARKS = {module.NAME: module for module in (bench_io, bench_defaults, bench_models, bench_scaling, bench_captions,
                                                          bench_dedup, bench_search, bench_gpu)}
FULL = {"samples": 6400, "shards": 8, "repeats": 5}
QUICK = {"samples": 1600, "shards": 4, "repeats": 3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['samples']} samples in {QUICK['shards']} shards, {QUICK['repeats']} repeats "
                             f"(default {FULL['samples']} in {FULL['shards']}, {FULL['repeats']} repeats)")
    parser.add_argument("--only", help=f"comma-separated benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--samples", type=int, help="dataset size (samples)")
    parser.add_argument("--shards", type=int, help="number of input shards")
    parser.add_argument("--repeats", type=int, help="runs of ours and of each peer; medians are reported")
    parser.add_argument("--data", type=Path, default=DATA, help=f"where datasets are generated and cached ({DATA})")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where result files are written ({RESULTS})")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.names = names
    for name in ("samples", "shards", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    defaults = QUICK if args.quick else FULL
    shards = args.shards or defaults["shards"]
    config = Config(quick=args.quick, samples=max(args.samples or defaults["samples"], shards), shards=shards,
                    repeats=args.repeats or defaults["repeats"], data=args.data.resolve(), results=args.results.resolve())
    started = time.perf_counter()
    dataset = dataset_for(config)
    print(f"dataset: {dataset.samples} JPEGs, {dataset.nbytes / 1e6:.0f} MB in {len(dataset.shards)} shards "
          f"({dataset.directory})", flush=True)
    for name in args.names:
        module = BENCHMARKS[name]
        began = time.perf_counter()
        measures, parameters = module.run(config, dataset)
        status = parameters.pop("status", "ok")
        parameters["seconds"] = round(time.perf_counter() - began, 1)
        path = write_results(config, name, measures, parameters, status)
        print_measures(f"{name}: {status} ({parameters['seconds']} s) -> {path}", measures)
    print(f"\n{markdown_table(config.results)}\n\ntotal {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
