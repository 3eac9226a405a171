"""Shared fixtures: WebDatasets built from the real photos in ../shared/data.

Fixture shards are written with Python's own ``tarfile`` (not imgcurate's writer), so the
reader is tested against an independent producer.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PHOTOS = SHARED_DATA / "photos"
WDS_TESTDATA = SHARED_DATA / "webdataset-testdata"


def pytest_configure(config):
    # a leftover IMGCURATE_SCHEDULER from the user's shell must not redirect the tests
    import os

    os.environ.pop("IMGCURATE_SCHEDULER", None)


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    paths = sorted(PHOTOS.glob("*.jpg"))
    if len(paths) < 30:
        pytest.skip(f"the real photos are missing from {PHOTOS}")
    return paths


@pytest.fixture(scope="session")
def wds_testdata() -> Path:
    if not (WDS_TESTDATA / "sample.tgz").exists():
        pytest.skip(f"webdataset test shards are missing from {WDS_TESTDATA}")
    return WDS_TESTDATA


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
