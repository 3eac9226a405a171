"""Shared helpers for the benchmarks: datasets, timing, results.

Every measure runs ours and its peer the same number of times, interleaved, on the same data,
and reports medians; a result file holds, per measure, our figure, the peer's, the ratio and
the goal, so a regression shows as a ratio, not as a machine-dependent absolute number.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PHOTOS = REPO.parent / "shared" / "data" / "photos"
DATA = HERE / "data"
RESULTS = HERE / "results"
SCALES = (0.5, 1.0, 1.6, 2.4)  # several image sizes: ~320 px to ~1500 px on the long side


@dataclass
class Measure:
    name: str
    unit: str
    ours: float
    peer: float | None
    peer_name: str | None
    goal: str
    ratio: float | None = None
    met: bool | None = None
    ours_runs: list[float] = field(default_factory=list)
    peer_runs: list[float] = field(default_factory=list)
    note: str = ""

    def judge(self, minimum: float | None = None, maximum: float | None = None) -> "Measure":
        value = self.ratio if self.ratio is not None else self.ours
        self.met = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
        return self


def ratio_measure(name: str, unit: str, ours_runs: list[float], peer_runs: list[float], peer_name: str,
                  goal: str, minimum: float | None = None, maximum: float | None = None, note: str = "") -> Measure:
    ours, peer = statistics.median(ours_runs), statistics.median(peer_runs)
    measure = Measure(name, unit, ours, peer, peer_name, goal, ours / peer if peer else None, None,
                      ours_runs, peer_runs, note)
    return measure.judge(minimum, maximum)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(repeats: int, ours: Callable[[], float], peer: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Run ours and the peer alternately, so drift on the machine hits both alike."""
    ours_runs, peer_runs = [], []
    for _ in range(repeats):
        ours_runs.append(ours())
        peer_runs.append(peer())
    return ours_runs, peer_runs


def make_jpeg_dataset(directory: Path, samples: int, per_shard: int, seed: int = 0) -> list[Path]:
    """Shards of realistic JPEGs: the real photos re-encoded at several sizes and qualities."""
    marker = directory / "_complete"
    if marker.exists() and json.loads(marker.read_text()) == {"samples": samples, "per_shard": per_shard, "seed": seed}:
        return sorted(directory.glob("*.tar"))
    photos = sorted(PHOTOS.glob("*.jpg"))
    if not photos:
        sys.exit(f"the real photos are missing from {PHOTOS}")
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.tar"):
        old.unlink()
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in photos]
    shards = []
    for shard in range(-(-samples // per_shard)):
        path = directory / f"{shard:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(shard * per_shard, min(samples, (shard + 1) * per_shard)):
                image = sources[i % len(sources)]
                scale = SCALES[(i // len(sources)) % len(SCALES)] * rng.uniform(0.9, 1.1)
                resized = image.resize((max(32, int(image.width * scale)), max(32, int(image.height * scale))), Image.BICUBIC)
                buffer = io.BytesIO()
                resized.save(buffer, format="JPEG", quality=int(rng.integers(80, 95)))
                key = f"{i:08d}"
                for name, data in ((f"{key}.jpg", buffer.getvalue()),
                                   (f"{key}.txt", f"photo {photos[i % len(photos)].stem}".encode()),
                                   (f"{key}.json", json.dumps({"width": resized.width, "height": resized.height}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(path)
    marker.write_text(json.dumps({"samples": samples, "per_shard": per_shard, "seed": seed}))
    return shards


def dataset_bytes(shards: list[Path]) -> int:
    return sum(p.stat().st_size for p in shards)


def machine() -> dict[str, object]:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_results(name: str, measures: list[Measure], params: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "parameters": params,
                                "measures": [asdict(m) for m in measures]}, indent=1))
    return path


def print_measures(title: str, measures: list[Measure]) -> None:
    print(f"\n== {title}")
    for m in measures:
        peer = f" | {m.peer_name}: {m.peer:,.1f} {m.unit} | ratio {m.ratio:.2f}" if m.peer is not None else ""
        verdict = "MET" if m.met else "MISSED"
        print(f"  {m.name}: ours {m.ours:,.2f} {m.unit}{peer} | goal {m.goal} | {verdict}{' (' + m.note + ')' if m.note else ''}")


def peak_rss_mb(code: str, env: dict[str, str] | None = None) -> float:
    """Peak resident memory (MB) of a fresh Python process running ``code``.

    Read from VmHWM: getrusage's ru_maxrss survives execve on Linux, so a child started from a
    large parent would report the parent's peak.
    """
    wrapper = code + ("\nprint('PEAK_RSS_KB', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        raise RuntimeError(out.stderr)
    line = [l for l in out.stdout.splitlines() if l.startswith("PEAK_RSS_KB")][-1]
    return int(line.split()[1]) / 1024
