"""fsspec URLs: read from and write to s3:// on a local S3 emulator (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json

import pytest
import webdataset as wds

from imgcurate.io.reader import read_webdataset
from imgcurate.io.writer import write_webdataset

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port; yields storage_options for s3fs."""
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="data")
    yield {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    server.stop()


def test_read_and_reshard_on_s3(s3, photo_dataset, tmp_path):
    import s3fs

    directory, samples = photo_dataset
    fs = s3fs.S3FileSystem(**s3)
    for path in sorted(directory.iterdir()):
        fs.put(str(path), f"data/in/{path.name}")

    df = read_webdataset("s3://data/in/{00000..00002}.tar", storage_options=s3, with_images=False)
    assert df.npartitions == 3
    result = write_webdataset(df, "s3://data/out", images_per_tar=7, storage_options=s3)
    assert result.output_dir == "s3://data/out" and result.samples == 30
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("data/out"))
    assert [n for n in names if n.endswith(".tar")] == [f"{i:05d}.tar" for i in range(5)]
    assert "_imgcurate_incomplete" not in names and "_imgcurate_tmp" not in names
    manifest = json.loads(fs.cat("data/out/_manifest.json"))
    assert manifest["counts"]["written"] == 30

    # same bytes as a local run, read back by webdataset
    local = tmp_path / "local"
    write_webdataset(read_webdataset(directory, with_images=False), local, images_per_tar=7)
    for i in range(5):
        assert fs.cat(f"data/out/{i:05d}.tar") == (local / f"{i:05d}.tar").read_bytes()
    fs.get("data/out/00001.tar", str(tmp_path / "back.tar"))
    back = list(wds.WebDataset(str(tmp_path / "back.tar"), shardshuffle=False))
    assert [s["__key__"] for s in back] == [s["key"] for s in samples[7:14]]

    # reading the S3 output with images gives the original bytes
    frame = read_webdataset("s3://data/out", storage_options=s3, with_images=True).compute()
    assert [bytes(b) for b in frame.image] == [s["image"] for s in samples]
    # rewriting over an existing S3 output needs overwrite and removes shards no longer produced
    write_webdataset(read_webdataset(directory, with_images=False), "s3://data/out", images_per_tar=15,
                     storage_options=s3, overwrite=True)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("data/out", refresh=True))
    assert [n for n in names if n.endswith(".tar")] == ["00000.tar", "00001.tar"]
