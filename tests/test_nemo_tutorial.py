"""NeMo Curator's image curation tutorial runs unchanged apart from its import lines.

tests/fixtures/nemo_image_curation_example.py is the tutorial script itself. It is run as NeMo's
README runs it (``--skip-download``, its model directory, thresholds and batch options), against
real photos, with a ``--model-dir`` laid out as NeMo Curator lays it out for the heads and as
open_clip's cache for OpenAI's ViT-L/14: the weights are random (generated here, in the real
formats), so the scores mean nothing; the point is that every argument the tutorial passes is
taken, that the run writes a complete output, and that the manifest records what each
NeMo-only argument means under Dask.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_photo_dataset

TUTORIAL = Path(__file__).parent / "fixtures" / "nemo_image_curation_example.py"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Random weights for ViT-L/14 in open_clip's cache layout and LAION's heads in NeMo Curator's layout."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg
    from safetensors.torch import save_file

    from imgcurate.models.heads import AestheticMLP, AestheticScorer, NSFWMLP, NSFWScorer

    root = tmp_path_factory.mktemp("model_weights")
    repo = get_pretrained_cfg("ViT-L-14-quickgelu", "openai")["hf_hub"].strip("/")
    cache = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    (cache / "snapshots" / commit).mkdir(parents=True)
    torch.manual_seed(5)
    clip = open_clip.create_model("ViT-L-14-quickgelu")
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(cache / "snapshots" / commit / "open_clip_model.safetensors"))
    del clip
    aesthetic = root / AestheticScorer.NEMO_PATH
    aesthetic.parent.mkdir(parents=True)
    save_file(AestheticMLP().state_dict(), str(aesthetic))
    nsfw = root / NSFWScorer.NEMO_PATH
    nsfw.parent.mkdir(parents=True)
    torch.save(NSFWMLP().state_dict(), nsfw)
    return root


@pytest.mark.slow
def test_the_tutorial_runs_with_only_its_imports_changed(tmp_path, photos, model_dir):
    data, out = tmp_path / "wds", tmp_path / "curated"
    build_photo_dataset(data, photos[:8], shards=2)
    # the options of NeMo's README example, with thresholds that suit random heads
    command = [sys.executable, str(TUTORIAL), "--input-wds-dataset-dir", str(data), "--output-dataset-dir", str(out),
               "--model-dir", str(model_dir), "--skip-download", "--tar-files-per-partition", "1", "--batch-size", "32",
               "--embedding-batch-size", "32", "--aesthetic-batch-size", "32", "--nsfw-batch-size", "32",
               "--aesthetic-threshold", "-1000", "--nsfw-threshold", "0.99", "--images-per-tar", "3", "--verbose"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "IMGCURATE_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Image curation pipeline completed!" in done.stdout

    manifest = json.loads((out / "_manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == 8 and counts["removed"] == 0
    assert counts["read"] == counts["written"] + counts["dropped"] + counts["failed"]
    assert [s["samples"] for s in manifest["shards"]] == [3] * (counts["written"] // 3) + (
        [counts["written"] % 3] if counts["written"] % 3 else [])
    pipeline = manifest["pipeline"]
    assert pipeline["name"] == "image_curation" and pipeline["executor"]["executor"] == "XennaExecutor"
    stages = {s["stage"]: s for s in pipeline["stages"]}
    reader = stages["ImageReaderStage"]["engine_options"]
    assert reader["dali_batch_size"]["value"] == 32 and reader["num_threads"]["value"] == 16
    assert "one worker per GPU" in stages["ImageEmbeddingStage"]["engine_options"]["num_gpus_per_worker"]["under_dask"]
    assert stages["ImageEmbeddingStage"]["parameters"]["model_dir"] == str(model_dir)
    models = {m["stage"]: m for m in manifest["models"]}
    assert models["embed"]["model_name"] == "ViT-L-14" and models["embed"]["quick_gelu"] is True  # OpenAI's weights
    assert models["embed"]["weights_sha256"]  # the file found in model_dir
    assert models["aesthetic"]["weights"].endswith("model.safetensors")
    assert models["nsfw"]["weights"].endswith("laion/clip-autokeras-binary-nsfw/clip_autokeras_binary_nsfw.pth")


def test_model_dir_without_the_weights_names_the_directory(tmp_path):
    from imgcurate.common.errors import PipelineError
    from imgcurate.stages import ImageAestheticFilterStage, ImageEmbeddingStage
    from imgcurate.stages.base import Context

    with pytest.raises(PipelineError, match=f"model_dir {tmp_path}.*ttj/sac-logos-ava1-l14-linearMSE/model.safetensors"):
        ImageAestheticFilterStage(score_threshold=5.0, model_dir=str(tmp_path)).validate(Context())
    os.environ["IMGCURATE_OFFLINE"] = "1"
    try:
        with pytest.raises(PipelineError, match=f"not in model_dir {tmp_path}"):
            ImageEmbeddingStage(model_dir=str(tmp_path)).validate(Context())
    finally:
        del os.environ["IMGCURATE_OFFLINE"]


def test_every_argument_of_nemos_stages_is_taken():
    """The signatures of NeMo Curator's image stages (its current release), each argument given."""
    from imgcurate.stages import (
        FilePartitioningStage, ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage, ImageReaderStage,
        ImageWriterStage, Pipeline, RayActorPoolExecutor, RayDataExecutor, XennaExecutor,
    )

    FilePartitioningStage(file_paths="x", files_per_partition=None, blocksize=None, file_extensions=[".tar"],
                          storage_options=None, limit=None, name="file_partitioning")
    ImageReaderStage(dali_batch_size=100, verbose=True, num_threads=8, num_gpus_per_worker=0.25, name="image_reader")
    ImageEmbeddingStage(model_dir=None, num_gpus_per_worker=0.25, model_inference_batch_size=32, verbose=False,
                        remove_image_data=False, name="image_embedding")
    ImageAestheticFilterStage(model_dir=None, num_gpus_per_worker=0.25, model_inference_batch_size=32,
                              score_threshold=0.5, verbose=False, name="image_aesthetic_filter")
    ImageNSFWFilterStage(model_dir=None, num_gpus_per_worker=0.25, model_inference_batch_size=32, score_threshold=0.5,
                         verbose=False, name="image_nsfw_filter", weights_path=None)
    ImageWriterStage(output_dir="o", images_per_tar=1000, verbose=False, deterministic_name=True, remove_image_data=False,
                     name="image_writer")
    Pipeline(name="p", description=None, stages=None, config=None)
    XennaExecutor(config=None, ignore_head_node=False)
    RayDataExecutor(config=None, ignore_head_node=False)
    RayActorPoolExecutor(config=None, ignore_head_node=False, show_progress=True, progress_interval=10.0)
    with pytest.raises(TypeError, match="unexpected parameters: dali_batchsize"):
        ImageReaderStage(dali_batchsize=100)  # a misspelt parameter still fails by name
