"""The bundled sample data, and what imgcurate writes from it, are read by Hugging Face ``datasets`` and
Ray Data as they are: both refuse shards whose samples differ in their members (HF) or hold an image
that does not decode (Ray), so the sample data has neither (README, "Sample data")."""

from __future__ import annotations

import glob

import pytest

import imgcurate


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    base = tmp_path_factory.mktemp("other-readers")
    imgcurate.make_sample_dataset(str(base / "data"))
    df = imgcurate.read_webdataset(str(base / "data"))
    imgcurate.write_webdataset(df, str(base / "out"), images_per_tar=20)
    return base


@pytest.mark.parametrize("directory", ["data", "out"])
def test_hugging_face_datasets_reads_it(sample, directory):
    import datasets
    files = sorted(glob.glob(str(sample / directory / "*.tar")))
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                               cache_dir=str(sample / f"hf-cache-{directory}"))
    assert len(ds) == 48 and {"jpg", "txt", "json"} <= set(ds.features)
    assert ds[0]["jpg"].size[0] > 0


@pytest.mark.slow
def test_ray_data_reads_it(sample):
    import ray
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        for directory in ("data", "out"):
            rows = ray.data.read_webdataset(sorted(glob.glob(str(sample / directory / "*.tar")))).take_all()
            assert len(rows) == 48 and all(row["jpg"] is not None for row in rows)
    finally:
        ray.shutdown()
