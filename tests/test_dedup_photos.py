"""Deduplication end to end on real photos with planted copies: the verbs, the stage, the CLI, the report.

The 30 photos in 3 shards, and a 4th shard holding: byte-for-byte copies of two photos of the
other shards, a JPEG re-encode at quality 70, a 50 % downscale, a PNG photo recompressed as
JPEG, a truncated JPEG and a caption without an image.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

import imgcurate
from imgcurate.app.cli import main
from imgcurate.models import TINY_MODEL, CLIPImageEmbedder
from imgcurate.stages import (
    FilePartitioningStage, ImageDeduplicationStage, ImageReaderStage, ImageWriterStage, Pipeline,
)

from conftest import build_photo_dataset, write_tar

PLANTED = {  # key in the 4th shard -> (what it is, key of the original)
    "copy_a": ("exact", "000002"),
    "copy_b": ("exact", "000014"),
    "q70": ("re-encoded", "000005"),
    "half": ("downscaled", "000012"),
    "png_jpeg": ("PNG to JPEG", "000023"),
}


def jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos) -> Path:
    directory = tmp_path_factory.mktemp("dedup") / "shards"
    samples = {s["key"]: s for s in build_photo_dataset(directory, photos)}
    assert samples["000023"]["ext"] == "png"
    original = Image.open(io.BytesIO(samples["000012"]["image"]))
    good = samples["000001"]["image"]
    write_tar(directory / "00003.tar", [
        ("copy_a.jpg", samples["000002"]["image"]),
        ("bad.jpg", good[: len(good) // 3]),
        ("copy_b.jpg", samples["000014"]["image"]),
        ("q70.jpg", jpeg(Image.open(io.BytesIO(samples["000005"]["image"])), 70)),
        ("caption_only.txt", b"no image here"),
        ("half.jpg", jpeg(original.resize((original.width // 2, original.height // 2), Image.LANCZOS), 90)),
        ("png_jpeg.jpg", jpeg(Image.open(io.BytesIO(samples["000023"]["image"])), 75)),
    ])
    return directory


def duplicates(frame: pd.DataFrame) -> dict[str, str]:
    """key of each duplicate -> key of the sample it duplicates."""
    key_of = {(s, i): k for s, i, k in zip(frame.source_shard, frame.source_index, frame.key)}
    return {key: key_of[(of["source_shard"], of["source_index"])]
            for key, dup, of in zip(frame.key, frame.is_duplicate, frame.duplicate_of) if dup}


def test_exact_finds_the_byte_copies_in_other_shards(dataset):
    frame = imgcurate.mark_duplicates(imgcurate.read_webdataset(dataset, with_images=False), "exact").compute(
        scheduler="threads")
    assert duplicates(frame) == {"copy_a": "000002", "copy_b": "000014"}
    assert frame.set_index("key").loc["bad", "error"] is pd.NA  # sha256 needs no decoding


def test_phash_finds_every_planted_copy_and_nothing_else(dataset):
    frame = imgcurate.mark_duplicates(imgcurate.read_webdataset(dataset, with_images=False), "phash").compute(
        scheduler="threads")
    assert duplicates(frame) == {key: original for key, (_, original) in PLANTED.items()}
    by_key = frame.set_index("key")
    assert by_key.loc[["copy_a", "copy_b"], "phash_distance"].tolist() == [0, 0]
    assert by_key.loc[["q70", "half", "png_jpeg"], "phash_distance"].max() <= 4
    assert by_key.loc["bad", "error"] == "hash_decode_error" and not by_key.loc["bad", "is_duplicate"]
    assert by_key.loc["caption_only", "error"] == "no_image" and not by_key.loc["caption_only", "is_duplicate"]
    # the same with every copy before its original: the copies are kept, the originals marked
    reversed_frame = imgcurate.mark_duplicates(imgcurate.read_webdataset(sorted(dataset.glob("*.tar"))[::-1],
                                                                         with_images=False), "phash")
    assert duplicates(reversed_frame.compute(scheduler="threads")) == {o: k for k, (_, o) in PLANTED.items()}


def test_keep_a_column_keeps_its_largest_value(dataset):
    df = imgcurate.read_webdataset(dataset, with_images=False)
    df = df.assign(quality=(df.key == "q70").astype("float64"))
    frame = imgcurate.mark_duplicates(df, "phash", keep="quality", ascending=False).compute(scheduler="threads")
    assert duplicates(frame)["000005"] == "q70"


def test_semantic_with_the_tiny_model_finds_the_copies(dataset):
    embedder = CLIPImageEmbedder(TINY_MODEL, pretrained="random", device="cpu")
    df = imgcurate.read_webdataset(dataset, with_images=False)
    frame = imgcurate.mark_duplicates(df, "semantic", embedder=embedder, n_clusters=3, eps=1e-4).compute(
        scheduler="threads")
    found = duplicates(frame)
    assert found["copy_a"] == "000002" and found["copy_b"] == "000014"
    by_key = frame.set_index("key")
    assert by_key.loc["copy_a", "max_similarity"] == pytest.approx(1.0, abs=1e-5)
    for key in ("bad", "caption_only"):  # failed in the embedding: no cluster, never grouped
        assert by_key.loc[key, "error"] in ("decode_error", "no_image")
        assert by_key.loc[key, "cluster"] is pd.NA and not by_key.loc[key, "is_duplicate"]


def output_keys(directory: Path) -> list[str]:
    return [key for path in sorted(directory.glob("[0-9]*.parquet")) for key in pq.read_table(path).column("key").to_pylist()]


def test_cli_dedup_writes_the_rest_and_the_report_shows_the_pairs(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["dedup", str(dataset), "--output", str(out), "--method", "phash", "--keep-dropped", "--images-per-tar", "8",
                 "--scheduler", "threads", "--no-progress"]) == 0
    assert "dedup_phash: 5 duplicates among 35 samples considered" in capsys.readouterr().out
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["dropped_by_stage"] == {"dedup_phash": 5}
    assert manifest["counts"]["failed_by_reason"] == {"hash_decode_error": 1, "no_image": 1}
    assert manifest["counts"]["written"] == 30
    [summary] = manifest["dedup"]
    assert summary["method"] == "phash" and summary["parameters"]["max_distance"] == 4 and summary["duplicates"] == 5
    assert sum(summary["distance_counts"]) == 5 and summary["curve"][-1]["duplicates"] == 5
    assert sorted(output_keys(out / "_dropped")) == sorted(PLANTED)
    dropped = pq.read_table(out / "_dropped" / "00000.parquet").to_pandas()
    assert all(of["source_index"] is not None for of in dropped.duplicate_of)
    assert not any(key in PLANTED for key in output_keys(out))

    report = tmp_path / "report.html"
    assert main(["report", str(out), "--output", str(report)]) == 0
    page = report.read_text()
    section = page[page.index("<h2>Deduplication</h2>"):page.index("<h2>Kept samples</h2>")]
    assert "Fraction removed by max_distance" in section and "Hamming distance" in section
    assert "The default max_distance of 4 comes from measuring" in section
    assert len(re.findall(r"<img src='data:image/jpeg;base64,", section)) == 2 * len(summary["examples"]) >= 4


def test_the_stage_in_yaml_and_the_python_api_give_the_same_bytes(dataset, tmp_path):
    Pipeline(name="dedup", stages=[
        FilePartitioningStage(str(dataset)), ImageReaderStage(),
        ImageDeduplicationStage(method="exact"), ImageDeduplicationStage(method="phash"),
        ImageWriterStage(str(tmp_path / "api"), images_per_tar=8),
    ]).run(scheduler="threads")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"name": "dedup", "stages": [
        {"FilePartitioningStage": {"file_paths": str(dataset)}}, {"ImageReaderStage": {}},
        {"ImageDeduplicationStage": {"method": "exact"}}, {"ImageDeduplicationStage": {"method": "phash"}},
        {"ImageWriterStage": {"output_dir": str(tmp_path / "yaml"), "images_per_tar": 8}},
    ]}))
    assert main(["curate", "--config", str(config), "--scheduler", "threads", "--no-progress"]) == 0
    files = {p.name: p.read_bytes() for p in sorted((tmp_path / "api").glob("[0-9]*"))}
    assert files and files == {p.name: p.read_bytes() for p in sorted((tmp_path / "yaml").glob("[0-9]*"))}
    manifest = json.loads((tmp_path / "api" / "_manifest.json").read_text())
    assert manifest["counts"]["dropped_by_stage"] == {"dedup_exact": 2, "dedup_phash": 3}
    assert [row["stage"] for row in manifest["stage_counts"]] == ["read", "dedup_exact", "dedup_phash", "write"]
    assert [s["duplicates"] for s in manifest["dedup"]] == [2, 3]


@pytest.mark.filterwarnings("ignore:Image.*FilterStage")  # thresholds that keep every sample
def test_curate_takes_a_dedup_step(dataset, tmp_path):
    out = tmp_path / "curated"
    assert main(["curate", str(dataset), "--output", str(out), "--model", TINY_MODEL, "--pretrained", "random",
                 "--aesthetic-weights", "random", "--nsfw-weights", "random",
                 "--aesthetic-threshold=-1e9", "--nsfw-threshold=1e9", "--dedup", "exact", "--dedup", "semantic", "--eps", "0.0001",
                 "--n-clusters", "2", "--scheduler", "threads", "--no-progress"]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [s["method"] for s in manifest["dedup"]] == ["exact", "semantic"]
    assert manifest["counts"]["dropped_by_stage"]["dedup_exact"] == 2
    assert "copy_a" not in output_keys(out)


@pytest.mark.parametrize("options, parameter", [({"max_distance": 40}, "max_distance"),
                                                ({"max_cluster_rows": 0}, "max_cluster_rows")])
def test_a_bad_stage_fails_before_any_work(dataset, tmp_path, options, parameter):
    from imgcurate.common.errors import PipelineError

    with pytest.raises(PipelineError, match=parameter):
        Pipeline(stages=[FilePartitioningStage(str(dataset)), ImageReaderStage(),
                         ImageDeduplicationStage(method="phash", **options),
                         ImageWriterStage(str(tmp_path / "out"))]).run(scheduler="threads")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["dedup", "--method", "phash", "--eps", "0.1"], "--eps applies to --method semantic, and this run has --method phash"),
    (["dedup", "--method", "semantic", "--max-distance", "3"], "--max-distance applies to --method phash"),
    (["curate", "--dedup", "exact", "--n-clusters", "4"], "--n-clusters applies to --dedup semantic, and this run has --dedup exact"),
    (["curate", "--max-cluster-rows", "10"], "this run has no --dedup"),
    (["curate", "--keep", "random"], "--keep orders the samples of a deduplication: give --dedup METHOD"),
])
def test_a_dedup_option_no_chosen_method_uses_is_refused(dataset, tmp_path, capsys, args, message):
    """An option that would change nothing (another method's threshold, an order without a deduplication)
    is an error before any work, not silently ignored."""
    out = tmp_path / "out"
    command = [args[0], str(dataset), "--output", str(out), *args[1:], "--scheduler", "threads", "--no-progress"]
    assert main(command) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
