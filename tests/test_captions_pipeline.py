"""The image–text stages in a pipeline, from YAML and from `imgcurate curate`'s flags, and the report's section."""

from __future__ import annotations

import json
import subprocess
import sys

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import yaml

from captions_data import build_pairs_dataset
from imgcurate.common import columns as C
from imgcurate.common.errors import PipelineError
from imgcurate.models import TINY_MODEL
from imgcurate.stages import ImageTextAlignmentFilterStage, Pipeline


@pytest.fixture
def pairs(tmp_path, photos):
    directory = tmp_path / "pairs"
    return directory, build_pairs_dataset(directory, photos)


def test_datacomp_recipe_from_yaml_keeps_the_exact_top_fraction_and_saves_the_uids(tmp_path, pairs):
    directory, _ = pairs
    out, uids = tmp_path / "out", tmp_path / "kept.npy"
    config = {"name": "datacomp", "stages": [
        {"FilePartitioningStage": {"file_paths": str(directory)}},
        {"ImageReaderStage": {}},
        {"UidSubsetStage": {"save_uids": str(uids)}},
        {"ImageTextBasicFilterStage": {"min_image_side": 0}},
        {"ImageEmbeddingStage": {"model_name": TINY_MODEL, "pretrained": "random"}},
        {"ImageTextAlignmentFilterStage": {"top_fraction": 0.5}},
        {"ImageWriterStage": {"output_dir": str(out), "images_per_tar": 4, "keep_dropped": True}},
    ]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    result = Pipeline.from_yaml(tmp_path / "p.yaml").run(scheduler="threads")
    manifest = result.manifest
    stage = next(s for s in manifest["pipeline"]["stages"] if s["stage"] == "ImageTextAlignmentFilterStage")
    used = stage["threshold_used"]
    written = dd.read_parquet(str(out)).compute()
    dropped = dd.read_parquet(str(out / "_dropped")).compute()
    # DataComp's get_threshold over the pairs the filter saw (scored, still in play)
    candidates = pd.concat([written, dropped[dropped[C.DROPPED_BY].str.startswith("clip_score")]])
    scores = candidates[C.CLIP_SCORE].dropna().to_numpy(np.float32)
    assert used["scored"] == len(scores) and used["threshold"] == float(-np.sort(-scores)[int(len(scores) * 0.5)])
    assert len(written) == int((scores >= used["threshold"]).sum())
    assert (written[C.CLIP_SCORE] >= used["threshold"]).all()
    rows = {row["stage"]: row for row in manifest["stage_counts"]}
    assert rows["basic_filter"]["filtered_by_rule"]["language"] >= 4  # German, French, Japanese, Russian, Arabic, none
    assert rows["select_uids"]["failed"] == {"bad_uid": 1, "no_uid": 1}
    assert rows["write"]["out"] == len(written) == rows["clip_score"]["out"]
    # the saved uids are the written samples', in DataComp's form
    saved = np.load(uids)
    assert saved.dtype == np.dtype("u8,u8") and len(saved) == len(written)
    assert sorted(f"{a:016x}{b:016x}" for a, b in saved.tolist()) == sorted(written[C.UID])
    assert C.TEXT_EMBEDDING not in written.columns and set(written[C.EMBEDDING_MODEL]) == {f"{TINY_MODEL}/random"}
    sample_json = json.loads(__import__("tarfile").open(out / "00000.tar").extractfile(f"{written[C.KEY].iloc[0]}.json").read())
    assert C.EMBEDDING_MODEL not in sample_json and C.CLIP_SCORE in sample_json and C.CAPTION_LANGUAGE in sample_json

    from imgcurate.app.report import report_html

    page = report_html(str(out))
    assert "Image–text pairs" in page and "CLIP score (cosine)" in page and "Highest scored pairs written" in page
    assert f"keep clip_score ≥ {used['threshold']:.6g}" in page


def test_alignment_stage_checks_its_parameters_and_its_model_before_any_work(tmp_path, pairs):
    directory, _ = pairs

    def pipeline(**options):
        from imgcurate.stages import FilePartitioningStage, ImageEmbeddingStage, ImageReaderStage, ImageWriterStage

        return Pipeline(stages=[FilePartitioningStage(str(directory)), ImageReaderStage(),
                                ImageEmbeddingStage(TINY_MODEL, "random"), ImageTextAlignmentFilterStage(**options),
                                ImageWriterStage(str(tmp_path / "never"))])

    with pytest.raises(PipelineError, match="not both"):
        pipeline(score_threshold=0.3, top_fraction=0.3).validate()
    with pytest.raises(PipelineError, match="top_fraction"):
        pipeline(top_fraction=2).validate()
    with pytest.raises(PipelineError, match="cannot be compared"):
        pipeline(model_name="ViT-B-32", pretrained="random").validate()
    with pytest.warns(UserWarning, match="not x100"):
        pipeline(score_threshold=30).validate()
    assert not (tmp_path / "never").exists()


def test_curate_flags_add_the_caption_stages(tmp_path, pairs):
    directory, _ = pairs
    out, uids = tmp_path / "out", tmp_path / "kept.npy"
    done = subprocess.run(
        [sys.executable, "-m", "imgcurate", "curate", str(directory), "-o", str(out), "--model", TINY_MODEL,
         "--pretrained", "random", "--aesthetic-weights", "random", "--nsfw-weights", "random", "--aesthetic-threshold=-1e9",
         "--nsfw-threshold", "1.01", "--clip-score-min=-1", "--basic-filter", "--save-uids", str(uids),
         "--scheduler", "threads", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "_manifest.json").read_text())
    names = [s["stage"] for s in manifest["pipeline"]["stages"]]
    assert names.index("UidSubsetStage") < names.index("ImageTextBasicFilterStage") < names.index("ImageEmbeddingStage") \
        < names.index("ImageTextAlignmentFilterStage")
    written = dd.read_parquet(str(out)).compute()
    assert (written[C.CAPTION_LANGUAGE] == "en").all() and len(np.load(uids)) == len(written) > 0
    assert f"wrote {len(written)} uids" in done.stdout
    assert (done.stdout + done.stderr).count(" uids to ") == 1  # said once
