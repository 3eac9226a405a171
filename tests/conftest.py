"""Shared fixtures: WebDatasets built from the real photos in ../shared/data.

Fixture shards are written with Python's own ``tarfile`` (not imgcurate's writer), so the
reader is tested against an independent producer.

The real photos and the webdataset project's test shards live beside the checkout (or where
``$IMGCURATE_TEST_DATA`` points). Where they are missing, the photos are replaced by 30 generated
JPEGs of the same sizes and kind, so the suite runs on a clean clone; the tests that need the
webdataset project's own shards skip, saying so. With ``IMGCURATE_REQUIRE_TEST_DATA=1`` (CI sets
it) missing data fails the tests that need it instead.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# real data that nobody here wrote, beside the checkout (or where $IMGCURATE_TEST_DATA points)
SHARED_DATA = Path(os.environ.get("IMGCURATE_TEST_DATA") or REPO.parent / "shared" / "data")
PHOTOS = SHARED_DATA / "photos"
WDS_TESTDATA = SHARED_DATA / "webdataset-testdata"


def pytest_configure(config):
    # a leftover IMGCURATE_SCHEDULER from the user's shell must not redirect the tests
    os.environ.pop("IMGCURATE_SCHEDULER", None)


REQUIRE_DATA = os.environ.get("IMGCURATE_REQUIRE_TEST_DATA", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Fail where the test data must be there (CI), else skip, saying what is missing and where."""
    message = f"{what} (set IMGCURATE_TEST_DATA to the directory that holds photos/ and webdataset-testdata/)"
    if REQUIRE_DATA:
        pytest.fail(f"required test data is missing: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[Path]:
    """The 30 real photos; where they are missing (and not required), 30 generated stand-ins."""
    paths = sorted(PHOTOS.glob("*.jpg"))
    if len(paths) >= 30:
        return paths
    if REQUIRE_DATA:
        missing(f"the real photos are missing from {PHOTOS}")
    return generated_photos(tmp_path_factory.mktemp("generated-photos"))


@pytest.fixture(scope="session")
def real_photos() -> list[Path]:
    """The 30 real photos, for the claims made about real photographs (no stand-ins)."""
    paths = sorted(PHOTOS.glob("*.jpg"))
    if len(paths) < 30:
        missing(f"the real photos are missing from {PHOTOS}")
    return paths


def generated_photos(directory: Path, count: int = 30) -> list[Path]:
    """JPEGs like the real photos: up to 640 px on the long side, landscape and portrait, quality 88,
    smooth gradients with shapes and noise (so they compress and downscale like photographs)."""
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(20261204)
    paths = []
    for i in range(count):
        long_side, ratio = int(rng.integers(360, 641)), float(rng.uniform(0.45, 0.9))
        width, height = (long_side, int(long_side * ratio)) if i % 3 else (int(long_side * ratio), long_side)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        colours = rng.uniform(0, 255, (2, 3))
        t = (xx / width * rng.uniform(0.3, 1) + yy / height * rng.uniform(0.3, 1))[..., None] / 2
        pixels = colours[0] * (1 - t) + colours[1] * t + rng.normal(0, 6, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, max(11, height // 3)))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
        path = directory / f"generated-{i:02d}.jpg"
        image.save(path, format="JPEG", quality=88)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def wds_testdata() -> Path:
    if not (WDS_TESTDATA / "sample.tgz").exists():
        missing(f"the webdataset project's test shards are missing from {WDS_TESTDATA}")
    return WDS_TESTDATA


@pytest.fixture(params=["compiled", "python"])
def reader_loops(request, monkeypatch):
    """Each way of reading a plain shard: the compiled loops (when built: the file walked through a
    small window, members and images read by range) and the Python ones (the file mapped, walked in
    Python, checked with numpy)."""
    from imgcurate.io import ranges, tarindex

    if request.param == "compiled" and tarindex._fastio is None:
        pytest.skip("imgcurate was installed without its C extension")
    if request.param == "python":
        monkeypatch.setattr(tarindex, "_fastio", None)
        monkeypatch.setattr(ranges, "_fastio", None)
    return request.param


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT) -> Path:
    """A tar of regular-file members, in the order given."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def png_bytes(jpeg: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(out, format="PNG")
    return out.getvalue()


def build_photo_dataset(directory: Path, photos: list[Path], shards: int = 3, sidecar: bool = True) -> list[dict]:
    """Real photos spread over ``shards`` tars; every 4th as PNG; caption, JSON, sidecar Parquet.

    Returns the samples in input order, each a dict with key, image bytes, ext, caption and json.
    """
    directory.mkdir(parents=True, exist_ok=True)
    samples = []
    per_shard = -(-len(photos) // shards)
    for shard in range(shards):
        members, rows = [], []
        for i, photo in enumerate(photos[shard * per_shard : (shard + 1) * per_shard]):
            number = shard * per_shard + i
            key = f"{number:06d}"
            data = photo.read_bytes()
            ext = "jpg"
            if number % 4 == 3:
                data, ext = png_bytes(data), "png"
            width, height = Image.open(io.BytesIO(data)).size
            doc = {"name": photo.stem, "width": width, "height": height, "score": number / 10,
                   "landscape": width > height, "info": {"source": "kde", "index": number}}
            caption = f"photo {photo.stem}"
            members += [(f"{key}.{ext}", data), (f"{key}.txt", caption.encode()), (f"{key}.json", json.dumps(doc).encode())]
            rows.append({"key": key, "url": f"https://example.invalid/{photo.name}", "status": "success",
                         "license": "LGPL" if number % 2 else "CC-BY-SA"})
            samples.append({"key": key, "image": data, "ext": ext, "caption": caption, "json": doc, "shard": shard})
        write_tar(directory / f"{shard:05d}.tar", members)
        if sidecar:
            # img2dataset also lists failed downloads, which have no tar members
            rows.append({"key": f"{shard:02d}9999", "url": "https://example.invalid/gone", "status": "failed_to_download",
                         "license": None})
            pq.write_table(pa.Table.from_pylist(rows), directory / f"{shard:05d}.parquet")
    return samples


@pytest.fixture
def photo_dataset(tmp_path, photos):
    """(directory, samples) of a 3-shard WebDataset of the 30 real photos."""
    directory = tmp_path / "photos-wds"
    return directory, build_photo_dataset(directory, photos)


# -- LAION head weight files: LAION's key names and shapes, random values ---------------------------
# Layer name → (inputs, outputs), as in the improved-aesthetic-predictor's MLP and the PyTorch form
# of the CLIP-based NSFW detector.
AESTHETIC_LAYERS = {"layers.0": (768, 1024), "layers.2": (1024, 128), "layers.4": (128, 64), "layers.6": (64, 16),
                    "layers.7": (16, 1)}
NSFW_LAYERS = {"linear_1": (768, 64), "linear_2": (64, 512), "linear_3": (512, 256), "linear_4": (256, 1)}
KERAS_EPSILON = 1e-7  # Keras' Normalization divides by max(sqrt(variance), epsilon)


def _linear_weights(layers: dict, rng, input_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Random layers whose outputs have about unit variance; ``input_scale`` is 1 / the input's component std."""
    state = {}
    for i, (name, (fan_in, fan_out)) in enumerate(layers.items()):
        std = fan_in**-0.5 * (input_scale if i == 0 else 1.0)
        state[f"{name}.weight"] = rng.normal(0.0, std, (fan_out, fan_in)).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0.0, 0.1, fan_out).astype(np.float32)
    return state


def save_state(state: dict[str, np.ndarray], path: Path) -> Path:
    import torch  # here, so that test modules without models do not pay for importing torch

    torch.save({name: torch.from_numpy(value) for name, value in state.items()}, path)
    return path


def aesthetic_state(seed: int = 0) -> dict[str, np.ndarray]:
    return _linear_weights(AESTHETIC_LAYERS, np.random.default_rng(seed), input_scale=768**0.5)  # unit-length inputs


def nsfw_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {"norm.mean": rng.normal(0.0, 0.02, 768).astype(np.float32),
             # L2-normalised 768-wide vectors have per-component variances near 1/768
             "norm.variance": rng.uniform(0.5, 2.0, 768).astype(np.float32) / 768}
    return {**state, **_linear_weights(NSFW_LAYERS, rng)}


def aesthetic_reference(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The aesthetic MLP in float64 numpy: linear layers only (dropout is off at inference)."""
    h = x.astype(np.float64)
    for name in AESTHETIC_LAYERS:
        h = h @ state[f"{name}.weight"].T.astype(np.float64) + state[f"{name}.bias"]
    return h[:, 0]


def nsfw_reference(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The NSFW detector in float64 numpy: Keras normalisation, ReLUs, sigmoid."""
    scale = np.maximum(np.sqrt(state["norm.variance"].astype(np.float64)), KERAS_EPSILON)
    h = (x.astype(np.float64) - state["norm.mean"]) / scale
    for i, name in enumerate(NSFW_LAYERS):
        h = h @ state[f"{name}.weight"].T.astype(np.float64) + state[f"{name}.bias"]
        if i < len(NSFW_LAYERS) - 1:
            h = np.maximum(h, 0.0)
    return 0.5 * (1.0 + np.tanh(h[:, 0] / 2.0))  # the logistic sigmoid, without overflow
