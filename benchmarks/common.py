"""Shared helpers for the benchmarks: the dataset, timing, results.

Every measure runs ours and its peer the same number of times, interleaved, on the same data,
and reports medians; a result file holds, per measure, our figure, the peer's, the ratio and
the goal, so a regression shows as a ratio, not as a machine-dependent absolute number.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# the real photos beside the checkout, or where $IMGCURATE_TEST_DATA points (as for the tests)
PHOTOS = Path(os.environ.get("IMGCURATE_TEST_DATA") or REPO.parent / "shared" / "data") / "photos"
DATA = HERE / "data"
RESULTS = HERE / "results"

# Long side of the generated JPEGs: thumbnails to camera-ish sizes, as in web-scraped datasets.
LONG_SIDES = (256, 384, 512, 640, 800, 1024, 1280, 1600)
GENERATOR_VERSION = 2  # bump when the generated images change, so cached datasets are rebuilt


@dataclass(frozen=True)
class Config:
    """What one invocation of run.py measures on."""

    quick: bool
    samples: int
    shards: int
    repeats: int
    data: Path  # datasets are generated (and cached) under this directory
    results: Path

    @property
    def per_shard(self) -> int:
        return -(-self.samples // self.shards)

    @property
    def images_per_tar(self) -> int:
        # output shards 1.25x the input's, so resharding always crosses partition boundaries
        return max(1, self.per_shard * 5 // 4)


@dataclass(frozen=True)
class Dataset:
    directory: Path
    shards: list[Path]
    samples: int

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.shards)

    @property
    def urls(self) -> list[str]:
        return [str(p) for p in self.shards]


@dataclass
class Measure:
    """One figure of ours next to its peer's (or its baseline's), with the goal it is held to."""

    name: str
    unit: str
    ours: float
    peer: float | None
    peer_name: str | None
    goal: str  # e.g. ">= 0.5" (on the ratio), or "report" for figures without a goal
    ratio: float | None = None
    met: bool | None = None
    repeats: int = 0
    ours_runs: list[float] = field(default_factory=list)
    peer_runs: list[float] = field(default_factory=list)
    note: str = ""


def compare(name: str, unit: str, ours_runs: list[float], peer_runs: list[float], peer_name: str, goal: str,
            minimum: float | None = None, maximum: float | None = None, note: str = "") -> Measure:
    """Medians of both, their ratio (ours / peer), and whether the ratio meets the goal."""
    ours, peer = statistics.median(ours_runs), statistics.median(peer_runs)
    ratio = ours / peer if peer else None
    met = None
    if minimum is not None or maximum is not None:
        met = ratio is not None and (minimum is None or ratio >= minimum) and (maximum is None or ratio <= maximum)
    return Measure(name, unit, ours, peer, peer_name, goal, ratio, met, len(ours_runs), ours_runs, peer_runs, note)


def report(name: str, unit: str, ours_runs: list[float], note: str = "") -> Measure:
    """A figure with no peer and no goal (reported as measured)."""
    return Measure(name, unit, statistics.median(ours_runs), None, None, "report", None, None, len(ours_runs),
                   ours_runs, [], note)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def settle() -> None:
    """A full garbage collection before timed runs: the one the imports' objects make due (~140 ms
    in a process that has imported torch) then falls into no side's timed run, whichever side
    happened to allocate the object that tipped it."""
    gc.collect()


def interleave(repeats: int, ours: Callable[[], float], peer: Callable[[], float],
               warm_up: bool = False) -> tuple[list[float], list[float]]:
    """Run ours and the peer alternately, so drift on the machine hits both alike; ``warm_up``
    first runs each once untimed (what the previous measure left behind, in the page cache and
    the allocators, then weighs on neither side's first timed run)."""
    if warm_up:
        ours()
        peer()
    settle()
    ours_runs, peer_runs = [], []
    for _ in range(repeats):
        ours_runs.append(ours())
        peer_runs.append(peer())
    return ours_runs, peer_runs


# ---------------------------------------------------------------------------------------
# The dataset


def _variant(source: Image.Image, rng: np.random.Generator) -> tuple[bytes, dict]:
    """A crop of a real photo, resized to one of LONG_SIDES and re-encoded as a camera or a website would."""
    crop_w, crop_h = (int(side * rng.uniform(0.6, 1.0)) for side in source.size)
    left, top = int(rng.integers(0, source.width - crop_w + 1)), int(rng.integers(0, source.height - crop_h + 1))
    image = source.crop((left, top, left + crop_w, top + crop_h))
    long_side = int(LONG_SIDES[rng.integers(len(LONG_SIDES))] * rng.uniform(0.9, 1.1))
    scale = long_side / max(image.size)
    image = image.resize((max(16, round(image.width * scale)), max(16, round(image.height * scale))), Image.BICUBIC)
    options = {"quality": int(rng.integers(70, 96)), "progressive": bool(rng.random() < 0.15),
               "subsampling": 0 if rng.random() < 0.2 else 2}
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue(), {"width": image.width, "height": image.height, **options}


def _write_shard(path: Path, first: int, stop: int, seed: int) -> None:
    photos = sorted(PHOTOS.glob("*.jpg"))
    sources = [Image.open(p).convert("RGB") for p in photos]
    # the tar is written with Python's tarfile, as webdataset's own TarWriter does
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(first, stop):
            rng = np.random.default_rng([seed, i])
            photo = photos[i % len(photos)]
            data, info = _variant(sources[i % len(sources)], rng)
            key = f"{i:08d}"
            doc = {"source": photo.name, **info}
            for name, member in ((f"{key}.jpg", data), (f"{key}.txt", f"a photo, {photo.stem}".encode()),
                                 (f"{key}.json", json.dumps(doc).encode())):
                header = tarfile.TarInfo(name)
                header.size = len(member)
                tar.addfile(header, io.BytesIO(member))


def make_dataset(directory: Path, samples: int, shards: int, seed: int = 0) -> Dataset:
    """``samples`` realistic JPEGs (crops of the real photos at several sizes and qualities) in ``shards`` tars.

    Generated once and reused while the parameters are the same.
    """
    photos = sorted(PHOTOS.glob("*.jpg"))
    if not photos:
        sys.exit(f"the real photos are missing from {PHOTOS}")
    per_shard = -(-samples // shards)
    spec = {"samples": samples, "shards": shards, "seed": seed, "generator": GENERATOR_VERSION}
    marker = directory / "_complete.json"
    paths = [directory / f"{shard:05d}.tar" for shard in range(shards)]
    if marker.exists() and json.loads(marker.read_text()) == spec and all(p.exists() for p in paths):
        return Dataset(directory, paths, samples)
    directory.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for old in directory.glob("*.tar"):
        old.unlink()
    print(f"generating {samples} JPEGs in {shards} shards under {directory} ...", flush=True)
    ranges = [(p, s * per_shard, min(samples, (s + 1) * per_shard)) for s, p in enumerate(paths)]
    with ProcessPoolExecutor(max_workers=min(len(ranges), os.cpu_count() or 1)) as pool:
        list(pool.map(_write_shard, *zip(*ranges), [seed] * len(ranges)))
    marker.write_text(json.dumps(spec))
    return Dataset(directory, paths, samples)


def dataset_for(config: Config) -> Dataset:
    return make_dataset(config.data / f"jpegs-{config.samples}x{config.shards}", config.samples, config.shards)


def first_images(dataset: Dataset, count: int) -> list[bytes]:
    """The bytes of the first ``count`` JPEGs of the dataset, in order."""
    images: list[bytes] = []
    for shard in dataset.shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    images.append(tar.extractfile(member).read())
                    if len(images) == count:
                        return images
    return images


# ---------------------------------------------------------------------------------------
# Results


def machine() -> dict[str, object]:
    info: dict[str, object] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    from imgcurate.io import tarindex

    info["compiled_reader_loops"] = tarindex._fastio is not None  # built at install when a C compiler was there
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        info["cpu"] = model[0] if model else platform.processor()
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        # the machine may be shared: the load says how busy it was
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except (OSError, ValueError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_results(config: Config, name: str, measures: list[Measure], parameters: dict[str, object],
                  status: str = "ok") -> Path:
    config.results.mkdir(parents=True, exist_ok=True)
    path = config.results / f"{name}.json"
    document = {"benchmark": name, "status": status, "quick": config.quick, "machine": machine(),
                "parameters": parameters, "measures": [asdict(m) for m in measures]}
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    return path


def verdict(m: Measure) -> str:
    return "report" if m.met is None else ("MET" if m.met else "MISSED")


def print_measures(title: str, measures: list[Measure]) -> None:
    print(f"\n== {title}", flush=True)
    for m in measures:
        peer = f" | {m.peer_name}: {m.peer:,.2f} | ratio {m.ratio:.2f}" if m.peer is not None else ""
        print(f"  {m.name}: ours {m.ours:,.2f} {m.unit}{peer} | goal {m.goal} | {verdict(m)}"
              f"{' (' + m.note + ')' if m.note else ''}", flush=True)


def markdown_table(results: Path) -> str:
    """The results directory as one Markdown table (the one in benchmarks/README.md)."""
    lines = ["| benchmark | measure | ours | peer (same run) | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    for path in sorted(results.glob("*.json")):
        document = json.loads(path.read_text())
        if "benchmark" not in document:  # another tool's file (the GPU check's table)
            continue
        if document.get("status", "ok") != "ok":
            lines.append(f"| {document['benchmark']} | — | {document['status']} | | | | |")
            continue
        for m in document["measures"]:
            peer = f"{m['peer_name']}: {_figure(m['peer'])}" if m["peer"] is not None else "—"
            ratio = f"{m['ratio']:.2f}" if m["ratio"] is not None else "—"
            met = "—" if m["met"] is None else ("yes" if m["met"] else "**no**")
            lines.append(f"| {document['benchmark']} | {m['name']} | {_figure(m['ours'])} {m['unit']} | {peer} | {ratio} "
                         f"| {m['goal']} | {met} |")
    return "\n".join(lines)


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}" if math.isfinite(value) else str(value)


# ---------------------------------------------------------------------------------------
# Memory


def peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh Python process running ``code``.

    Read from VmHWM: getrusage's ru_maxrss survives execve on Linux, so a child started from a
    large parent would report the parent's peak.
    """
    wrapper = code + ("\nprint('PEAK_RSS_KB', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr)
    line = [l for l in out.stdout.splitlines() if l.startswith("PEAK_RSS_KB")][-1]
    return int(line.split()[1]) / 1024
