"""A small, deterministic sample WebDataset, generated rather than downloaded.

Images are drawn procedurally (gradients, shapes, stripes, noise) at varied sizes and aspect
ratios, stored as JPEG or PNG, with a caption, a ``.json`` of metadata and an
img2dataset-style sidecar Parquet per shard. One image is deliberately truncated so the
failure report has something to show.
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


def make_sample_dataset(output_dir: str, *, shards: int = 3, samples_per_shard: int = 16, seed: int = 0) -> list[str]:
    """Write ``shards`` tar shards (+ sidecar Parquet) to ``output_dir``; returns the tar paths."""
    rng = np.random.default_rng(seed)
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    number = 0
    for shard in range(shards):
        tar_path = os.path.join(output_dir, f"{shard:05d}.tar")
        rows = []
        with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for _ in range(samples_per_shard):
                key = f"{number:09d}"
                colour_name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
                pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
                size = (int(rng.integers(96, 360)), int(rng.integers(96, 360)))
                image = _draw(rng, pattern, COLOURS[colour_name], size)
                ext = "png" if number % 5 == 4 else "jpg"
                buffer = io.BytesIO()
                image.save(buffer, format="PNG" if ext == "png" else "JPEG", quality=90)
                data = buffer.getvalue()
                if number == 7:  # a download cut short: the decoder must report it, not crash
                    data = data[: len(data) // 3]
                caption = f"a {colour_name} {pattern} pattern"
                meta = {"url": f"https://example.invalid/{key}.{ext}", "width": size[0], "height": size[1],
                        "pattern": pattern, "tags": [colour_name, pattern]}
                for name, payload in ((f"{key}.{ext}", data), (f"{key}.txt", caption.encode()),
                                      (f"{key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    tar.addfile(info, io.BytesIO(payload))
                rows.append({"key": key, "url": meta["url"], "caption": caption, "status": "success",
                             "width": size[0], "height": size[1], "sha256": _sha256(data)})
                number += 1
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(output_dir, f"{shard:05d}.parquet"))
        paths.append(tar_path)
    return paths


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
