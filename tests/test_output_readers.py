"""An output directory reads cleanly in every common reader: ``*.parquet`` and ``*.tar`` mean the shards,
``dd.read_parquet(out)`` reads the shards, and failures and dropped samples stay out of the way."""

from __future__ import annotations

import glob
import os

import dask.dataframe as dd
import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as pads
import pytest

import imgcurate
from conftest import build_photo_dataset, write_tar


@pytest.fixture(scope="module")
def output(tmp_path_factory, photos):
    """An output of the real photos with failure rows (a corrupt JPEG, a bad caption) and dropped rows kept aside."""
    base = tmp_path_factory.mktemp("readers")
    build_photo_dataset(base / "in", photos, shards=3)
    write_tar(base / "in" / "00003.tar", [("bad.jpg", b"\xff\xd8 not a jpeg"), ("bad.txt", b"broken"),
                                          ("cap.jpg", photos[0].read_bytes()), ("cap.txt", b"\xff\xfe")])
    df = imgcurate.read_webdataset(str(base / "in"))
    df = imgcurate.mark_where(imgcurate.validate_images(df), "width IS NULL OR width >= 500", stage="narrow")
    result = imgcurate.write_webdataset(df, str(base / "out"), images_per_tar=7, keep_dropped=True)
    assert result.counts["dropped"] > 0 and result.counts["failed"] > 0 and result.counts["rejected_members"] > 0
    return base / "out", result


def test_plain_glob_matches_exactly_the_shards(output):
    out, result = output
    parquets, tars = sorted(glob.glob(f"{out}/*.parquet")), sorted(glob.glob(f"{out}/*.tar"))
    assert [os.path.basename(p) for p in parquets] == [f"{i:05d}.parquet" for i in range(result.shards)]
    assert [p[: -len(".tar")] for p in tars] == [p[: -len(".parquet")] for p in parquets]
    assert all(os.path.isfile(p) for p in parquets + tars)


def test_every_reader_reads_the_shards_metadata(output):
    out, result = output
    expected = pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(f"{out}/*.parquet"))], ignore_index=True)
    assert len(expected) == result.samples
    keys = expected.key.tolist()
    in_duckdb = duckdb.sql(f"SELECT key, filename FROM read_parquet('{out}/*.parquet', filename=true)").df()
    assert sorted(in_duckdb.key) == sorted(keys) and set(map(os.path.basename, in_duckdb.filename)) == {
        f"{i:05d}.parquet" for i in range(result.shards)}
    assert pl.read_parquet(f"{out}/*.parquet")["key"].to_list() == keys
    assert pl.scan_parquet(f"{out}/*.parquet").select("key").collect()["key"].to_list() == keys
    assert dd.read_parquet(str(out)).compute().key.tolist() == keys
    # pyarrow's directory discovery also meets the tars: the summary file names exactly the shards
    assert pads.parquet_dataset(f"{out}/_metadata").to_table(columns=["key"]).column("key").to_pylist() == keys
    with pytest.raises(Exception):
        pads.dataset(str(out), format="parquet").to_table()  # documented: use parquet_dataset(out/_metadata)


def test_failures_and_dropped_samples_read_on_their_own(output):
    out, result = output
    failures = pd.read_parquet(out / "_failures")
    assert len(failures) == result.counts["failed"] + result.counts["rejected_members"] + result.counts["rejected_shards"]
    assert set(failures.error) >= {"decode_error", "invalid_caption"}
    dropped = pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(f"{out}/_dropped/*.parquet"))])
    assert len(dropped) == result.counts["dropped"] and set(dropped.dropped_by) == {"narrow"}
    assert len(dd.read_parquet(str(out / "_dropped")).compute()) == result.counts["dropped"]
