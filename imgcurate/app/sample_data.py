"""A small, deterministic sample WebDataset, generated rather than downloaded.

Images are drawn procedurally (gradients, shapes, stripes, noise) at varied sizes and aspect
ratios, stored as JPEG, each with a caption and a ``.json`` of metadata, and an img2dataset-style
sidecar Parquet per shard that also lists two failed downloads (no member in the tar), as
img2dataset writes them. Every row has a ``uid`` of 32 hexadecimal digits, as DataComp's pool
does, so the uid subset tools can be tried on it.

Every sample has the same members (``jpg``, ``txt``, ``json``) and every image decodes, so other
readers take the shards as they are: Hugging Face ``datasets`` refuses shards whose samples differ
in their members' extensions, and Ray Data's reader stops at an image that does not decode.
``damaged=True`` cuts one JPEG short, to show how imgcurate reports it.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40), "orange": (240, 140, 30), "yellow": (235, 215, 50), "green": (50, 170, 70),
    "teal": (30, 150, 150), "blue": (40, 80, 210), "purple": (130, 60, 180), "grey": (128, 128, 128),
}
PATTERNS = ("gradient", "circles", "stripes", "noise", "checker", "rings")


def _draw(rng: np.random.Generator, pattern: str, colour: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    w, h = size
    base = np.array(colour, dtype=np.float32)
    if pattern == "gradient":
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        pixels = base * (0.3 + 0.7 * t) + (1 - t) * 40
        pixels = np.broadcast_to(pixels, (h, w, 3))
    elif pattern == "noise":
        pixels = base + rng.normal(0, 45, size=(h, w, 3))
    elif pattern == "checker":
        cell = int(rng.integers(8, 32))
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((yy // cell + xx // cell) % 2).astype(np.float32)[..., None]
        pixels = base * mask + (255 - base) * (1 - mask)
    elif pattern == "rings":
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.hypot(yy - h / 2, xx - w / 2)
        pixels = base * (0.5 + 0.5 * np.sin(r / rng.uniform(4, 12)))[..., None]
    else:
        pixels = np.full((h, w, 3), 245, dtype=np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    if pattern == "circles":
        for _ in range(int(rng.integers(3, 9))):
            x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(8, max(9, min(w, h) // 3))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(20, 20, 20))
    elif pattern == "stripes":
        step = int(rng.integers(6, 24))
        for x in range(0, w + h, step * 2):
            draw.line([(x, 0), (x - h, h)], fill=colour, width=step)
    return image


def make_sample_dataset(output_dir: str, *, shards: int = 3, samples_per_shard: int = 16, seed: int = 0,
                        damaged: bool = False) -> list[str]:
    """Write ``shards`` tar shards (+ sidecar Parquet) to ``output_dir``; returns the tar paths.

    Each shard is drawn from its own random stream, so shards are written independently (one
    Dask task each, on the scheduler in use). ``damaged``: sample 7's JPEG is cut to a third.
    """
    import dask

    from ..common.progress import compute

    os.makedirs(output_dir, exist_ok=True)
    tasks = [dask.delayed(write_sample_shard)(output_dir, shard, samples_per_shard, seed, damaged) for shard in range(shards)]
    return compute(tasks, desc="sample data")


def write_sample_shard(output_dir: str, shard: int, samples_per_shard: int, seed: int, damaged: bool) -> str:
    """Shard ``shard`` of the sample data and its sidecar; returns the tar's path."""
    rng = np.random.default_rng([seed, shard])
    tar_path = os.path.join(output_dir, f"{shard:05d}.tar")
    rows = []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for index in range(samples_per_shard):
            number = shard * samples_per_shard + index
            key = f"{number:09d}"
            colour_name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
            size = (int(rng.integers(96, 360)), int(rng.integers(96, 360)))
            buffer = io.BytesIO()
            _draw(rng, pattern, COLOURS[colour_name], size).save(buffer, format="JPEG", quality=90)
            data = buffer.getvalue()
            if damaged and number == 7:  # a download cut short: the decoder must report it, not crash
                data = data[: len(data) // 3]
            caption = f"a {colour_name} {pattern} pattern"
            meta = {"uid": sample_uid(key), "url": f"https://example.invalid/{key}.jpg", "width": size[0],
                    "height": size[1], "pattern": pattern, "tags": [colour_name, pattern]}
            for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", caption.encode()),
                                  (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))
            rows.append({"key": key, "uid": meta["uid"], "url": meta["url"], "caption": caption, "status": "success", "error_message": None,
                         "width": size[0], "height": size[1], "sha256": _sha256(data)})
    for gone in range(2):  # what img2dataset lists for downloads that failed: a row, no member
        key = f"{shard:04d}9999{gone}"
        rows.append({"key": key, "uid": sample_uid(key), "url": f"https://example.invalid/{key}.jpg", "caption": None, "status": "failed_to_download",
                     "error_message": "HTTP Error 404: Not Found", "width": None, "height": None, "sha256": None})
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(output_dir, f"{shard:05d}.parquet"))
    return tar_path


def sample_uid(key: str) -> str:
    """A DataComp-style uid (32 hexadecimal digits) drawn from the key alone, so that the images'
    random stream is the same with or without it."""
    return _sha256(f"imgcurate sample {key}".encode())[:32]


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
