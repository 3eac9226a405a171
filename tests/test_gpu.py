"""The GPU paths: a LocalCUDACluster by default, the cuDF backend, CLIP on CUDA.

Marked ``gpu``; each skips without a CUDA GPU, and the cuDF ones without cuDF
(``pip install 'imgcurate[gpu]'``, see docs/gpu.md). Only the Arrow conversion the cuDF backend
relies on runs without a GPU (and tests/test_cudf_layout.py checks it on every kind of partition).
"""

from __future__ import annotations

import importlib.util
import os
import tarfile

import numpy as np
import pyarrow as pa
import pytest

from imgcurate.common.backend import BYTES, Backend, cuda_available, from_cudf_layout, to_cudf_layout
from imgcurate.io.reader import read_webdataset

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
needs_cudf = pytest.mark.skipif(importlib.util.find_spec("cudf") is None, reason="needs cuDF (imgcurate[gpu])")
needs_dask_cuda = pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is None, reason="needs dask-cuda (imgcurate[gpu])")


def image_table(samples: list[dict]) -> pa.Table:
    """Keys and image bytes of real photos, with a missing and an empty image among them."""
    images = [s["image"] for s in samples[:6]] + [None, b""]
    return pa.table({"key": [f"k{i}" for i in range(len(images))], "image": pa.array(images, pa.binary())})


def test_arrow_conversion_for_cudf_keeps_image_bytes(photo_dataset):
    # cuDF has no binary type: bytes travel as list<uint8>, including slices whose offsets do not start at 0
    _, samples = photo_dataset
    table = image_table(samples)
    for piece in (table, table.slice(2), table.slice(3, 4), pa.concat_tables([table.slice(5), table.slice(0, 2)])):
        lists = to_cudf_layout(piece)
        assert lists.schema.field("image").type == BYTES
        assert lists.column("image").to_pylist() == [None if b is None else list(b) for b in piece.column("image").to_pylist()]
        assert from_cudf_layout(lists).equals(piece)


@pytest.mark.gpu
@needs_cuda
@needs_dask_cuda
def test_default_cluster_is_one_worker_per_gpu():
    import torch

    from imgcurate.common.cluster import dask_client

    with dask_client("local") as client:
        assert type(client.cluster).__name__ == "LocalCUDACluster"
        workers = client.scheduler_info()["workers"]
        assert len(workers) == torch.cuda.device_count()
        # each worker sees its own GPU first
        first_device = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"].split(",")[0])
        assert len(set(first_device.values())) == len(workers)


@pytest.mark.gpu
@needs_cuda
@needs_cudf
def test_cudf_partitions_keep_image_bytes(photo_dataset):
    directory, samples = photo_dataset
    cudf_backend = Backend("cudf")
    table = image_table(samples)
    for piece in (table, table.slice(3)):
        frame = cudf_backend.from_arrow(piece)
        assert type(frame).__module__.startswith("cudf")
        back = cudf_backend.to_arrow(frame)
        assert back.schema.field("image").type == pa.binary()
        assert back.column("image").to_pylist() == piece.column("image").to_pylist()
        assert back.column("key").to_pylist() == piece.column("key").to_pylist()

    df = read_webdataset(directory, with_images=True, backend="cudf")
    assert type(df._meta).__module__.startswith("cudf")
    partition = df.partitions[0].compute()
    read_back = cudf_backend.to_arrow(partition)
    first_shard = [s for s in samples if s["shard"] == 0]
    assert read_back.column("key").to_pylist() == [s["key"] for s in first_shard]
    assert read_back.column("image").to_pylist() == [s["image"] for s in first_shard]


def _embedders():
    from imgcurate.models import TINY_MODEL

    return [
        pytest.param(TINY_MODEL, None, id="tiny-random"),
        pytest.param("ViT-L-14", "openai", id="ViT-L-14-openai"),
    ]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("model_name, pretrained", _embedders())
def test_cuda_embeddings_match_cpu(photo_dataset, model_name, pretrained, precision):
    import dask

    from imgcurate.dataframe import embed
    from imgcurate.models import CLIPImageEmbedder

    directory, samples = photo_dataset
    cpu = CLIPImageEmbedder(model_name, pretrained, device="cpu")
    if not cpu.weights_available():
        pytest.skip(f"{model_name} {pretrained} weights are not on this machine")
    cuda = CLIPImageEmbedder(model_name, pretrained, device="cuda", precision=precision)
    df = read_webdataset(directory, with_images=False)  # images fetched by byte range, decoded with nvJPEG on CUDA
    with dask.config.set(scheduler="sync"):
        on_cpu = embed(df, cpu).compute()
        on_cuda = embed(df, cuda).compute()
    assert list(on_cuda.key) == [s["key"] for s in samples]
    a = np.stack([np.asarray(v, dtype=np.float32) for v in on_cpu.embedding])
    b = np.stack([np.asarray(v, dtype=np.float32) for v in on_cuda.embedding])
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.99


@pytest.mark.gpu
@needs_cuda
@needs_cudf
def test_curate_with_the_cudf_backend_matches_pandas(tmp_path, photo_dataset):
    import dask

    from imgcurate.common.cluster import dask_client
    from imgcurate.dataframe import embed, mark_below_threshold
    from imgcurate.io.writer import write_webdataset
    from imgcurate.models import TINY_MODEL, AestheticScorer, CLIPImageEmbedder, NSFWScorer

    directory, samples = photo_dataset
    embedder = CLIPImageEmbedder(TINY_MODEL, pretrained=None, device="cuda")
    aesthetic, nsfw = AestheticScorer("random", device="cuda"), NSFWScorer("random", device="cuda")

    def curated(backend: str, threshold: float | None = None):
        df = embed(read_webdataset(directory, with_images=False, backend=backend), embedder, aesthetic=aesthetic, nsfw=nsfw)
        if threshold is not None:
            df = mark_below_threshold(df, "aesthetic_score", "aesthetic", threshold, "aesthetic")
        return df

    with dask.config.set(scheduler="sync"):
        scores = np.sort(curated("pandas").aesthetic_score.compute().to_numpy(dtype=np.float64))
    # a threshold in the widest gap of the middle half, so no score sits near it
    middle = scores[len(scores) // 4 : 3 * len(scores) // 4 + 1]
    widest = int(np.argmax(np.diff(middle)))
    threshold = float((middle[widest] + middle[widest + 1]) / 2)

    with dask.config.set(scheduler="sync"):
        write_webdataset(curated("pandas", threshold), tmp_path / "with-pandas", images_per_tar=7, keep_dropped=True)
    on_cudf = curated("cudf", threshold)
    assert type(on_cudf._meta).__module__.startswith("cudf")
    with dask_client("local") as client:  # a local cluster: one worker per GPU
        result = write_webdataset(on_cudf, tmp_path / "with-cudf", images_per_tar=7, keep_dropped=True, client=client)

    assert 0 < result.samples < len(samples)
    for stream in ("", "_dropped"):
        expected = metadata(tmp_path / "with-pandas" / stream)
        got = metadata(tmp_path / "with-cudf" / stream)
        assert list(got.key) == list(expected.key)
        np.testing.assert_allclose(got.aesthetic_score, expected.aesthetic_score, atol=1e-4)
        np.testing.assert_allclose(got.nsfw_score, expected.nsfw_score, atol=1e-4)
    # image bytes are copied from the source shards, whichever library held the metadata
    images = image_members(tmp_path / "with-cudf")
    assert len(images) == result.samples and images == image_members(tmp_path / "with-pandas")


def metadata(directory):
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("[0-9]*.parquet"))]).to_pandas()


def image_members(directory) -> dict[str, bytes]:
    members = {}
    for path in sorted(directory.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith((".jpg", ".png")):
                    members[member.name] = tar.extractfile(member).read()
    return members
