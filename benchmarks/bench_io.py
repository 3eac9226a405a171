"""I/O benchmarks: reshard vs cp and webdataset's TarWriter, reading vs webdataset, memory at 10x data."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import webdataset as wds

from common import (
    DATA, Measure, dataset_bytes, interleave, make_jpeg_dataset, peak_rss_mb, print_measures, ratio_measure, timed,
    write_results,
)

IMAGES_PER_TAR = 1000


def reshard_ours(shards: list[Path], out: Path) -> None:
    from imgcurate import read_webdataset, write_webdataset

    write_webdataset(read_webdataset([str(s) for s in shards], with_images=False), str(out),
                     images_per_tar=IMAGES_PER_TAR, overwrite=True)


def reshard_webdataset(shards: list[Path], out: Path) -> None:
    """The webdataset way: iterate samples, write them with a ShardWriter of the same shard size."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=IMAGES_PER_TAR, verbose=0) as sink:
        for sample in wds.WebDataset([str(s) for s in shards], shardshuffle=False):
            sink.write({k: v for k, v in sample.items() if k in ("__key__", "jpg", "txt", "json")})


def copy_tree(source: Path, out: Path) -> None:
    subprocess.run(["cp", "-r", str(source), str(out)], check=True)


def read_ours(shards: list[Path]) -> int:
    from imgcurate import read_webdataset

    frame = read_webdataset([str(s) for s in shards]).compute()
    return len(frame)


def read_webdataset_iter(shards: list[Path]) -> int:
    return sum(1 for _ in wds.WebDataset([str(s) for s in shards], shardshuffle=False))


def run(quick: bool, samples: int | None = None) -> list[Measure]:
    samples = samples or (600 if quick else 4000)
    repeats = 3 if quick else 5
    source = DATA / f"jpegs-{samples}"
    shards = make_jpeg_dataset(source, samples, per_shard=250 if quick else 500)
    total_mb = dataset_bytes(shards) / 1e6
    work = Path(tempfile.mkdtemp(prefix="imgcurate-bench-", dir=DATA))
    measures: list[Measure] = []
    try:
        def clean(path: Path) -> Path:
            shutil.rmtree(path, ignore_errors=True)
            return path

        # warm the page cache the same way for everyone
        read_webdataset_iter(shards)
        ours, cp = interleave(
            repeats,
            lambda: total_mb / timed(lambda: reshard_ours(shards, clean(work / "ours"))),
            lambda: total_mb / timed(lambda: copy_tree(source, clean(work / "cp"))),
        )
        measures.append(ratio_measure("reshard throughput", "MB/s", ours, cp, "cp -r", ">= 0.5", minimum=0.5))

        ours, tarwriter = interleave(
            repeats,
            lambda: samples / timed(lambda: reshard_ours(shards, clean(work / "ours"))),
            lambda: samples / timed(lambda: reshard_webdataset(shards, clean(work / "wds"))),
        )
        measures.append(ratio_measure("reshard samples/s", "samples/s", ours, tarwriter, "webdataset ShardWriter loop",
                                      ">= 3x", minimum=3.0))

        ours, iterate = interleave(
            repeats,
            lambda: samples / timed(lambda: read_ours(shards)),
            lambda: samples / timed(lambda: read_webdataset_iter(shards)),
        )
        measures.append(ratio_measure("read tar -> partitions", "samples/s", ours, iterate, "iterating webdataset.WebDataset",
                                      ">= 5x", minimum=5.0))

        # memory: the same reshard over 1x and 10x the shards (links to the same files)
        tenfold = clean(work / "tenfold")
        tenfold.mkdir()
        for copy in range(10):
            for shard in shards:
                (tenfold / f"{copy:02d}-{shard.name}").symlink_to(shard)
        # only imgcurate is imported in the measured process (webdataset would bring torch along)
        code = ("import imgcurate; imgcurate.write_webdataset(imgcurate.read_webdataset({src!r}, with_images=False), "
                "{out!r}, images_per_tar=%d)" % IMAGES_PER_TAR)
        one = [peak_rss_mb(code.format(src=str(source), out=str(clean(work / "rss1")))) for _ in range(repeats)]
        ten = [peak_rss_mb(code.format(src=str(tenfold), out=str(clean(work / "rss10")))) for _ in range(repeats)]
        import statistics

        ratio = statistics.median(ten) / statistics.median(one)
        measures.append(Measure("reshard peak RSS, 10x data / 1x", "MB", statistics.median(ten), statistics.median(one),
                                "same reshard on 1x data", "<= 1.3", ratio, ratio <= 1.3, ten, one).judge(maximum=1.3))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    params = {"samples": samples, "dataset_mb": round(total_mb, 1), "shards": len(shards), "repeats": repeats,
              "images_per_tar": IMAGES_PER_TAR, "scheduler": "dask default (threads)"}
    write_results("io", measures, params)
    print_measures(f"I/O ({samples} samples, {total_mb:.0f} MB, {len(shards)} shards)", measures)
    return measures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, help="dataset size (default 4000, --quick 600)")
    args = parser.parse_args()
    run(args.quick, args.samples)
