"""Read-only SQL over dataset metadata (DuckDB), the `query` command, and `export --where` on scores."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import imgcurate
from imgcurate.app.cli import main
from imgcurate.models import TINY_MODEL
from imgcurate.dataframe.sql import QueryError, dataset_tables

from conftest import write_tar


@pytest.fixture
def resharded(photo_dataset, tmp_path):
    directory, samples = photo_dataset
    photo = photo_dataset[1][0]["image"]
    shard = write_tar(directory / "00003.tar", [("whole.jpg", photo), ("cut.jpg", photo)])
    padded = len(photo) + -len(photo) % 512
    shard.write_bytes(shard.read_bytes()[: 512 + padded + 512 + 100])  # a half-copied file: ends inside cut.jpg
    out = tmp_path / "out"
    assert main(["reshard", str(directory), "--output", str(out), "--images-per-tar", "8", "--scheduler", "threads",
                 "--no-progress"]) == 0
    return out, samples


def parquet_rows(directory):
    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("[0-9]*.parquet"))]).to_pylist()


def test_sql_over_an_output_directory(resharded):
    out, samples = resharded
    rows = parquet_rows(out)
    result = imgcurate.sql("SELECT count(*) AS n, sum(width) AS w FROM samples", out)
    assert result.n[0] == len(rows) == len(samples) + 1
    assert result.w[0] == sum(r["width"] for r in rows if r["width"] is not None)

    pngs = imgcurate.sql("SELECT key FROM samples WHERE image_ext = 'png' ORDER BY key", out)
    assert pngs.key.tolist() == sorted(s["key"] for s in samples if s["ext"] == "png")

    # JSON fields, sidecar columns and nested JSON are all queryable
    licensed = imgcurate.sql("SELECT count(*) AS n FROM samples WHERE license = 'LGPL' AND landscape", out)
    assert licensed.n[0] == sum(1 for s in samples if int(s["key"]) % 2 and s["json"]["landscape"])
    nested = imgcurate.sql("SELECT max(CAST(json_extract(info, '$.index') AS INTEGER)) AS top FROM samples", out)
    assert nested.top[0] == max(s["json"]["info"]["index"] for s in samples)


def test_dataset_forms_give_the_same_answer(resharded, photo_dataset):
    out, _ = resharded
    query = "SELECT key, caption FROM samples WHERE caption IS NOT NULL ORDER BY key"
    from_output = imgcurate.sql(query, out)
    from_shards = imgcurate.sql(query, photo_dataset[0])  # a WebDataset path: read without image bytes
    from_dask = imgcurate.sql(query, imgcurate.read_webdataset(photo_dataset[0], with_images=False))
    from_pandas = imgcurate.sql(query, imgcurate.read_webdataset(photo_dataset[0], with_images=False).compute())
    assert from_output.equals(from_shards) and from_output.equals(from_dask) and from_output.equals(from_pandas)
    assert len(from_output) == 30  # whole.jpg has no caption


def test_output_parquet_is_read_by_duckdb_not_loaded_first(resharded):
    out, _ = resharded
    tables = dataset_tables(out)
    assert isinstance(tables["samples"], pads.Dataset)  # scanned lazily, so larger-than-memory works
    failures = imgcurate.sql("SELECT source_shard, key, error FROM failures", out)
    assert failures.key.tolist() == ["cut"] and failures.source_shard[0].endswith("00003.tar")


@pytest.mark.parametrize("query", [
    "INSERT INTO samples VALUES (1)",
    "CREATE TABLE t AS SELECT 1",
    "COPY samples TO '/tmp/stolen.csv'",
    "ATTACH '/tmp/other.db'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "PRAGMA database_list",
    "SELECT 1; SELECT 2",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM '/etc/passwd'",
])
def test_queries_are_read_only(resharded, query):
    out, _ = resharded
    with pytest.raises(QueryError):
        imgcurate.sql(query, out)


def test_query_command_formats(resharded, capsys):
    out, samples = resharded
    query = "SELECT key, width FROM samples WHERE width IS NOT NULL ORDER BY key LIMIT 3"
    assert main(["query", str(out), query, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["key"] for r in rows] == sorted(s["key"] for s in samples)[:3]
    assert main(["query", str(out), query, "--format", "json"]) == 0
    assert [r["width"] for r in json.loads(capsys.readouterr().out)] == [int(r["width"]) for r in rows]
    assert main(["query", str(out), query]) == 0
    assert rows[0]["key"] in capsys.readouterr().out
    assert main(["query", str(out), "DROP TABLE samples"]) == 2
    assert "only SELECT" in capsys.readouterr().err


def test_export_where_on_scores_reshards_exactly(photo_dataset, tmp_path):
    directory, _ = photo_dataset
    curated = tmp_path / "curated"
    assert main(["curate", str(directory), "--output", str(curated), "--model", TINY_MODEL, "--pretrained", "random",
                 "--aesthetic-weights", "random", "--nsfw-weights", "random", "--aesthetic-threshold", "-100",
                 "--nsfw-threshold", "2", "--scheduler", "threads", "--no-progress"]) == 0
    scores = sorted(r["aesthetic_score"] for r in parquet_rows(curated))
    cut = scores[len(scores) // 3]
    exported = tmp_path / "exported"
    assert main(["export", str(curated), "--output", str(exported), "--where", f"aesthetic_score >= {cut!r}",
                 "--images-per-tar", "4", "--scheduler", "threads", "--no-progress"]) == 0
    kept = parquet_rows(exported)
    assert len(kept) == sum(1 for s in scores if s >= cut)
    assert all(r["aesthetic_score"] >= cut for r in kept)
    counts = []
    for shard in sorted(exported.glob("*.tar")):
        with tarfile.open(shard) as tar:
            counts.append(sum(1 for m in tar.getmembers() if m.name.endswith(".jpg") or m.name.endswith(".png")))
    assert counts[:-1] == [4] * (len(counts) - 1) and sum(counts) == len(kept)


def test_an_output_that_kept_nothing_still_answers(photo_dataset, tmp_path):
    directory, samples = photo_dataset
    nothing = tmp_path / "nothing"
    assert main(["export", str(directory), "--output", str(nothing), "--where", "width < 0", "--scheduler", "threads",
                 "--no-progress"]) == 0
    assert not list(nothing.glob("*.tar"))
    assert imgcurate.sql("SELECT count(*) AS n FROM samples", nothing).n[0] == 0

    df = imgcurate.read_webdataset(str(directory))
    everything_dropped = imgcurate.mark_where(df, "width < 0", stage="too_small")
    dropped = tmp_path / "dropped"
    imgcurate.write_webdataset(everything_dropped, str(dropped), keep_dropped=True)
    empty = imgcurate.sql("SELECT * FROM samples", dropped)
    assert len(empty) == 0 and "width" in empty.columns and "dropped_by" not in empty.columns
    by_stage = imgcurate.sql("SELECT dropped_by, count(*) AS n FROM dropped GROUP BY ALL", dropped)
    assert by_stage.to_dict("records") == [{"dropped_by": "too_small", "n": len(samples)}]
    assert main(["query", str(dropped), "SELECT count(*) AS n FROM samples", "--format", "json"]) == 0
    assert main(["report", str(dropped), "--output", str(tmp_path / "report.html")]) == 0
    with pytest.raises(QueryError, match="kept no samples and wrote no dropped rows"):
        imgcurate.sql("SELECT caption FROM samples", nothing)


def test_sql_errors_are_one_line_and_quote_what_the_user_wrote(photo_dataset, tmp_path, capsys):
    directory, _ = photo_dataset
    cases = [
        (["export", str(directory), "-o", str(tmp_path / "e1"), "--where", "DROP TABLE x"],
         "predicate 'DROP TABLE x' is not one SQL boolean expression"),
        (["export", str(directory), "-o", str(tmp_path / "e2"), "--where", "width >>> 3"], 'Did you mean ">>"?'),
        (["query", str(directory), "SELECT nope FROM samples"], "Candidate bindings"),
    ]
    for argv, expected in cases:
        assert main([*argv, "--scheduler", "threads"]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
        assert "coalesce" not in err  # never imgcurate's own wrapper around a predicate
