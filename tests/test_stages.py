"""The stage API and `imgcurate curate`: NeMo Curator's snippet end to end on real photos.

Weights are generated here in the real formats: an open_clip checkpoint file of the tiny model
(loaded through ``pretrained=<file>``) and head files in LAION's key layout placed in
``$IMGCURATE_HOME``, found the way a user's downloaded files are. The heads' output biases are set
from the photos' own embeddings so that the thresholds 5.0 / 0.5 cut through the data and both
filters visibly drop rows.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import imgcurate
from imgcurate.app.cli import main
from imgcurate.common.errors import PipelineError
from imgcurate.models import AestheticScorer, CLIPImageEmbedder, NSFWScorer, TINY_MODEL
from imgcurate.models.heads import AestheticMLP, NSFWMLP
from imgcurate.stages import (
    FilePartitioningStage, ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage, ImageReaderStage,
    ImageWriterStage, Pipeline,
)

from conftest import build_photo_dataset, write_tar

AESTHETIC_T, NSFW_T = 5.0, 0.5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos) -> Path:
    """30 real photos in 3 shards, plus a 4th shard of broken samples."""
    directory = tmp_path_factory.mktemp("stages") / "shards"
    build_photo_dataset(directory, photos)
    good = photos[0].read_bytes()
    write_tar(directory / "00003.tar", [
        ("bad0.jpg", good[: len(good) // 3]),  # truncated JPEG: decode_error
        ("bad0.txt", b"half a photo"),
        ("bad1.jpg", bytes(range(256)) * 8),  # random bytes: decode_error
        ("bad2.txt", b"a caption without an image"),  # no_image
        ("ok0.jpg", photos[1].read_bytes()),
    ])
    return directory


@pytest.fixture(scope="module")
def weights(tmp_path_factory, dataset) -> dict:
    """A tiny-CLIP checkpoint file and LAION-layout head files calibrated on the photos' embeddings."""
    home = tmp_path_factory.mktemp("imgcurate-home")
    checkpoint = home / "tiny-clip.pt"
    torch.manual_seed(1)
    torch.save(open_clip.create_model(TINY_MODEL).state_dict(), checkpoint)

    embedder = CLIPImageEmbedder(TINY_MODEL, pretrained=str(checkpoint), device="cpu")
    frame = imgcurate.embed(imgcurate.read_webdataset(dataset), embedder).compute(scheduler="sync")
    vectors = np.stack([np.asarray(v, dtype=np.float32) for v in frame.embedding.dropna()])
    x = torch.from_numpy(vectors)

    torch.manual_seed(2)
    aesthetic = AestheticMLP().eval()
    with torch.no_grad():
        aesthetic.layers[7].weight.mul_(200.0)  # spread the scores of these similar embeddings
        raw = aesthetic(x)
        aesthetic.layers[7].bias += AESTHETIC_T - raw.median()  # half the photos score >= 5
    nsfw = NSFWMLP()
    with torch.no_grad():
        nsfw.norm.mean.copy_(x.mean(0))
        nsfw.norm.variance.copy_(x.var(0) + 1e-6)
        logits = nsfw.linear_4(torch.relu(nsfw.linear_3(torch.relu(nsfw.linear_2(torch.relu(nsfw.linear_1(nsfw.norm(x))))))))
        nsfw.linear_4.bias -= torch.quantile(logits.squeeze(-1), 0.75)  # the top quarter scores >= 0.5
    torch.save(aesthetic.state_dict(), home / AestheticScorer.WEIGHTS.filename)
    torch.save(nsfw.state_dict(), home / NSFWScorer.WEIGHTS.filename)
    return {"home": home, "checkpoint": str(checkpoint)}


@pytest.fixture
def env(monkeypatch, weights):
    monkeypatch.setenv("IMGCURATE_HOME", str(weights["home"]))
    monkeypatch.setenv("IMGCURATE_OFFLINE", "1")
    return weights


def nemo_snippet(file_paths, output_dir, checkpoint, **writer_options) -> Pipeline:
    """NeMo Curator's documented pipeline, with the tiny model in place of ViT-L/14."""
    pipeline = Pipeline(name="image_curation")
    pipeline.add_stage(FilePartitioningStage(file_paths=str(file_paths), files_per_partition=1))
    pipeline.add_stage(ImageReaderStage())
    pipeline.add_stage(ImageEmbeddingStage(model_name=TINY_MODEL, pretrained=checkpoint))
    pipeline.add_stage(ImageAestheticFilterStage(score_threshold=AESTHETIC_T))
    pipeline.add_stage(ImageNSFWFilterStage(score_threshold=NSFW_T))
    pipeline.add_stage(ImageWriterStage(output_dir=str(output_dir), images_per_tar=7, remove_image_data=True,
                                        verbose=True, **writer_options))
    return pipeline


def read_parquets(directory: Path):
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("[0-9]*.parquet"))]).to_pandas()


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def output_files(directory: Path) -> dict[str, bytes]:
    """Every data file of an output (the manifest aside: it holds timings)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != "_manifest.json"}


def test_nemo_snippet_end_to_end(env, dataset, tmp_path, capsys):
    out = tmp_path / "curated"
    result = nemo_snippet(dataset, out, env["checkpoint"], keep_dropped=True).run(scheduler="threads")
    printed = capsys.readouterr().out
    manifest = json.loads((out / "_manifest.json").read_text())
    counts = manifest["counts"]

    # everything read is accounted for exactly once
    assert counts["read"] == 34 and counts["read_counted_from"] == "input shards" and counts["removed"] == 0
    assert counts["failed_by_reason"] == {"decode_error": 2, "no_image": 1}
    assert counts["dropped_by_stage"]["aesthetic"] > 0 and counts["dropped_by_stage"]["nsfw"] > 0
    assert counts["read"] == counts["failed"] + sum(counts["dropped_by_stage"].values()) + counts["written"]
    assert result.write.samples == counts["written"]

    # counts after each stage, in order
    stages = manifest["stage_counts"]
    assert [s["stage"] for s in stages] == ["read", "embed", "aesthetic", "nsfw", "write"]
    assert stages[1] == {"stage": "embed", "in": 34, "failed": {"no_image": 1, "decode_error": 2}, "out": 31}
    assert stages[2]["out"] == stages[3]["in"] and stages[3]["out"] == stages[4]["in"] == counts["written"]
    assert "aesthetic" in printed and "filtered" in printed

    # every kept row passes both thresholds; every dropped row fails the stage that dropped it
    kept = read_parquets(out)
    assert len(kept) == counts["written"]
    assert (kept.aesthetic_score >= AESTHETIC_T).all() and (kept.nsfw_score < NSFW_T).all()
    dropped = read_parquets(out / "_dropped")
    by_aesthetic = dropped[dropped.dropped_by == "aesthetic"]
    by_nsfw = dropped[dropped.dropped_by == "nsfw"]
    assert (by_aesthetic.aesthetic_score < AESTHETIC_T).all()
    assert (by_nsfw.aesthetic_score >= AESTHETIC_T).all() and (by_nsfw.nsfw_score >= NSFW_T).all()
    assert "embedding" in kept.columns and all(len(v) == 768 for v in kept.embedding)

    # exact resharding, scores in each sample's .json, images byte-identical to the input
    tars = sorted(out.glob("*.tar"))
    sizes = [sum(1 for n in tar_members(t) if n.endswith(".json")) for t in tars]
    assert sizes[:-1] == [7] * (len(tars) - 1) and 1 <= sizes[-1] <= 7
    source = {}
    for shard in sorted(dataset.glob("*.tar")):
        source.update(tar_members(shard))
    for t in tars:
        for name, data in tar_members(t).items():
            if name.endswith(".json"):
                doc = json.loads(data)
                assert doc["aesthetic_score"] >= AESTHETIC_T and doc["nsfw_score"] < NSFW_T
                assert "embedding" not in doc
            elif name.endswith((".jpg", ".png")):
                assert data == source[name]

    # the manifest documents the run
    assert [s["stage"] for s in manifest["pipeline"]["stages"]][2] == "ImageEmbeddingStage"
    models = {m["stage"]: m for m in manifest["models"]}
    assert models["aesthetic"]["weights_sha256"] and models["nsfw"]["weights_sha256"]
    assert models["embed"]["open_clip_config"] == TINY_MODEL and models["embed"]["weights_sha256"]
    assert manifest["random_weights"] is False
    assert {"torch", "open_clip_torch", "dask", "pyarrow"} <= set(manifest["versions"])

    # the result hands back the written metadata as a Dask DataFrame
    assert len(result.metadata().compute()) == counts["written"]


def test_cli_and_yaml_give_the_same_bytes_as_the_python_api(env, dataset, tmp_path):
    by_api = tmp_path / "api"
    nemo_snippet(dataset, by_api, env["checkpoint"]).run(scheduler="threads")

    by_cli = tmp_path / "cli"
    code = main(["curate", str(dataset), "--output", str(by_cli), "--model", TINY_MODEL, "--pretrained", env["checkpoint"],
                 "--aesthetic-threshold", str(AESTHETIC_T), "--nsfw-threshold", str(NSFW_T), "--images-per-tar", "7",
                 "--scheduler", "threads", "--no-progress"])
    assert code == 0

    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"name": "image_curation", "stages": [
        {"FilePartitioningStage": {"file_paths": str(dataset), "files_per_partition": 1}},
        {"ImageReaderStage": {}},
        {"ImageEmbeddingStage": {"model_name": TINY_MODEL, "pretrained": env["checkpoint"]}},
        {"ImageAestheticFilterStage": {"score_threshold": AESTHETIC_T}},
        {"ImageNSFWFilterStage": {"score_threshold": NSFW_T}},
        {"ImageWriterStage": {"output_dir": str(tmp_path / "unused"), "images_per_tar": 7}},
    ]}))
    by_yaml = tmp_path / "yaml"
    assert main(["curate", "--config", str(config), "--output", str(by_yaml), "--scheduler", "threads", "--no-progress"]) == 0
    assert not (tmp_path / "unused").exists()

    expected = output_files(by_api)
    assert any(name.endswith(".tar") for name in expected)
    assert output_files(by_cli) == expected
    assert output_files(by_yaml) == expected
    api_counts = json.loads((by_api / "_manifest.json").read_text())["counts"]
    assert json.loads((by_yaml / "_manifest.json").read_text())["counts"] == api_counts

    # flags given with --config override the file, and the manifest records the merged pipeline
    by_flags = tmp_path / "yaml-and-flags"
    assert main(["curate", "--config", str(config), "--output", str(by_flags), "--images-per-tar", "5",
                 "--nsfw-threshold", "0.9", "--scheduler", "threads", "--no-progress"]) == 0
    manifest = json.loads((by_flags / "_manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]][:-1] == [5] * (len(manifest["shards"]) - 1)
    stages = {s["stage"]: s["parameters"] for s in manifest["pipeline"]["stages"]}
    assert stages["ImageNSFWFilterStage"]["score_threshold"] == 0.9 and stages["ImageWriterStage"]["images_per_tar"] == 5
    assert stages["ImageAestheticFilterStage"]["score_threshold"] == AESTHETIC_T  # from the file
    assert manifest["pipeline"]["config"]["overridden_by_flags"] == ["--images-per-tar", "--nsfw-threshold", "--output"]
    assert manifest["counts"]["dropped_by_stage"].get("nsfw", 0) < api_counts["dropped_by_stage"]["nsfw"]


def test_filters_without_thresholds_only_score(env, dataset, tmp_path):
    out = tmp_path / "scored"
    Pipeline(stages=[
        FilePartitioningStage(str(dataset)), ImageReaderStage(),
        ImageEmbeddingStage(TINY_MODEL, env["checkpoint"]),
        ImageAestheticFilterStage(), ImageNSFWFilterStage(),
        ImageWriterStage(str(out), images_per_tar=100),
    ]).run(scheduler="threads")
    counts = json.loads((out / "_manifest.json").read_text())["counts"]
    assert counts["written"] == 31 and counts["dropped"] == 0
    kept = read_parquets(out)
    assert kept.aesthetic_score.notna().all() and kept.nsfw_score.notna().all()


def test_default_embedding_is_openai_vit_l14_with_quickgelu():
    for name in ("ViT-L-14", "ViT-L-14-quickgelu"):
        stage = ImageEmbeddingStage(model_name=name, pretrained="openai")
        description = stage.embedder().describe()
        assert description["quick_gelu"] is True, name
        assert description["embedding_dim"] == 768
    assert ImageEmbeddingStage().model_name == "ViT-L-14" and ImageEmbeddingStage().pretrained == "openai"


def writer(tmp_path, **options):
    return ImageWriterStage(str(tmp_path / "out"), **options)


@pytest.mark.parametrize("stages, message", [
    (lambda d, t, c: [FilePartitioningStage(d), ImageReaderStage(), ImageAestheticFilterStage(5.0),
                      ImageEmbeddingStage(TINY_MODEL, c), writer(t)], "put ImageEmbeddingStage before it"),
    (lambda d, t, c: [FilePartitioningStage(d), ImageReaderStage(), ImageEmbeddingStage(TINY_MODEL, c)],
     "no ImageWriterStage"),
    (lambda d, t, c: [FilePartitioningStage(str(t / "nowhere")), ImageReaderStage(), writer(t)], "input"),
    (lambda d, t, c: [FilePartitioningStage(d, blocksize="lots"), ImageReaderStage(), writer(t)],
     "blocksize 'lots' is not a size in bytes"),
    (lambda d, t, c: [ImageReaderStage(), FilePartitioningStage(d), writer(t)], "first stage"),
    (lambda d, t, c: [FilePartitioningStage(d), ImageReaderStage(), writer(t, images_per_tar=0)], "images_per_tar"),
    (lambda d, t, c: [FilePartitioningStage(d), ImageReaderStage(), ImageEmbeddingStage(TINY_MODEL, c),
                      ImageAestheticFilterStage("high"), writer(t)], "score_threshold must be a number"),
    (lambda d, t, c: [FilePartitioningStage(d), ImageReaderStage(), ImageEmbeddingStage(TINY_MODEL, str(t / "missing.pt")),
                      writer(t)], "missing.pt"),
])
def test_bad_pipelines_fail_before_any_work(env, dataset, tmp_path, stages, message):
    pipeline = Pipeline(stages=stages(str(dataset), tmp_path, env["checkpoint"]))
    with pytest.raises(PipelineError, match=message):
        pipeline.run(scheduler="threads")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_overwrite(env, dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("not ours")
    with pytest.raises(PipelineError, match="did not write"):
        nemo_snippet(dataset, out, env["checkpoint"]).validate()
    assert (out / "precious.txt").read_text() == "not ours"


def test_missing_head_weights_say_where_to_put_them(monkeypatch, dataset, tmp_path):
    monkeypatch.setenv("IMGCURATE_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("IMGCURATE_OFFLINE", "1")
    pipeline = Pipeline(stages=[
        FilePartitioningStage(str(dataset)), ImageReaderStage(), ImageEmbeddingStage(TINY_MODEL, "random"),
        ImageAestheticFilterStage(5.0), writer(tmp_path),
    ])
    with pytest.raises(PipelineError) as raised:
        pipeline.run(scheduler="threads")
    text = str(raised.value)
    assert "sac+logos+ava1-l14-linearMSE.pth" in text and str(tmp_path / "empty-home") in text and "https://" in text


def test_threshold_on_the_wrong_scale_warns(env, dataset, tmp_path):
    pipeline = Pipeline(stages=[
        FilePartitioningStage(str(dataset)), ImageReaderStage(), ImageEmbeddingStage(TINY_MODEL, env["checkpoint"]),
        ImageAestheticFilterStage(0.5), ImageNSFWFilterStage(0.5), writer(tmp_path),
    ])
    with pytest.warns(UserWarning, match="below LAION's aesthetic scale"):
        pipeline.validate()


def test_yaml_config_errors(tmp_path):
    with pytest.raises(PipelineError, match="unknown stage 'ImageCaptionStage'"):
        Pipeline.from_config({"stages": [{"ImageCaptionStage": {}}]})
    with pytest.raises(PipelineError, match="ImageReaderStage: .*unexpected"):
        Pipeline.from_config({"stages": [{"ImageReaderStage": {"colour": "blue"}}]})
    with pytest.raises(PipelineError, match="'stages' list"):
        Pipeline.from_config({"name": "x"})


def test_cli_curate_reports_missing_weights_in_one_line(monkeypatch, dataset, tmp_path, capsys):
    monkeypatch.setenv("IMGCURATE_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("IMGCURATE_OFFLINE", "1")
    code = main(["curate", str(dataset), "--output", str(tmp_path / "out"), "--model", TINY_MODEL, "--pretrained", "random",
                 "--scheduler", "threads"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("imgcurate curate: error:") and "sac+logos+ava1-l14-linearMSE.pth" in err
    assert err.count("\n") == 1
