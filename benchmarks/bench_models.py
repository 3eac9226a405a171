"""Models on CPU: decode + preprocess vs open_clip's preprocess, curation end to end vs a bare encode_image loop.

Weights are random throughout: throughput does not depend on their values, and nothing here
looks at an embedding or a score.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

from common import Config, Dataset, Measure, compare, first_images, interleave, make_dataset, timed

NAME = "models"
MODEL_BOUND, MODEL_BOUND_SAMPLES = "ViT-B-32", 192
PREPROCESS_MODEL = "ViT-L-14"  # the model LAION's heads belong to; its preprocess (224 px) is what curation pays
AESTHETIC_THRESHOLD, NSFW_THRESHOLD = 5.0, 0.5


def preprocess_ours(images: list[bytes], embedder, batch_size: int) -> int:
    """imgcurate's decode path, up to the normalised float batch the model takes."""
    import numpy as np
    import torch

    from imgcurate.ops.decode import Preprocess, decode_batch

    prep = Preprocess.from_open_clip(embedder.preprocess)
    done = 0
    for start in range(0, len(images), batch_size):
        pixels = decode_batch(images[start : start + batch_size], prep)
        done += len(embedder.normalise(torch.from_numpy(np.stack(pixels)), "cpu"))
    return done


def open_clip_transform(preprocess: dict):
    """open_clip's evaluation transform for a model's preprocess configuration."""
    import open_clip

    return open_clip.image_transform(preprocess["size"], is_train=False, mean=preprocess["mean"], std=preprocess["std"],
                                     resize_mode=preprocess["resize_mode"], interpolation=preprocess["interpolation"])


def preprocess_open_clip(images: list[bytes], transform, batch_size: int) -> int:
    import torch
    from PIL import Image

    done = 0
    for start in range(0, len(images), batch_size):
        done += len(torch.stack([transform(Image.open(io.BytesIO(data))) for data in images[start : start + batch_size]]))
    return done


def curate_ours(urls: list[str], out: Path, embedder, aesthetic, nsfw, images_per_tar: int) -> int:
    """The curation job: read, embed and score in one pass, filter, write shards (without heads: read, embed, write)."""
    import imgcurate
    from imgcurate.dataframe import mark_below_threshold

    df = imgcurate.read_webdataset(urls, with_images=False)
    df = imgcurate.embed(df, embedder, aesthetic=aesthetic, nsfw=nsfw)
    if aesthetic is not None:
        df = mark_below_threshold(df, "aesthetic_score", "aesthetic", AESTHETIC_THRESHOLD, "aesthetic")
    if nsfw is not None:
        df = mark_below_threshold(df, "nsfw_score", "nsfw", NSFW_THRESHOLD, "nsfw")
    result = imgcurate.write_webdataset(df, str(out), images_per_tar=images_per_tar, overwrite=True)
    return result.counts["read"]


def encode_open_clip(urls: list[str], model, transform, batch_size: int) -> int:
    """The bare loop: iterate the shards with webdataset, open_clip's preprocess, ``encode_image`` per batch."""
    import torch
    import webdataset as wds
    from PIL import Image

    done, batch = 0, []

    def flush():
        features = model.encode_image(torch.stack(batch))
        return len(torch.nn.functional.normalize(features, dim=-1))

    with torch.inference_mode():
        for sample in wds.WebDataset(urls, shardshuffle=False):
            batch.append(transform(Image.open(io.BytesIO(sample["jpg"]))))
            if len(batch) == batch_size:
                done, batch = done + flush(), []
        if batch:
            done += flush()
    return done


def curation_models(model_name: str):
    """(embedder, aesthetic head, NSFW head, open_clip model, open_clip transform), all with random weights."""
    import open_clip

    from imgcurate.models import AestheticScorer, CLIPImageEmbedder, NSFWScorer

    embedder = CLIPImageEmbedder(model_name, pretrained=None, device="cpu")
    model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=None, device="cpu")
    return (embedder, AestheticScorer(weights="random", device="cpu"), NSFWScorer(weights="random", device="cpu"),
            model.eval(), transform)


def measure_curation(config: Config, dataset: Dataset, model_name: str, shards: int, work: Path, repeats: int,
                     heads: bool = True) -> Measure:
    """Ours vs the bare loop on the first ``shards`` shards; without ``heads`` ours reads, embeds and writes."""
    embedder, aesthetic, nsfw, model, transform = curation_models(model_name)
    if not heads:
        aesthetic = nsfw = None
    urls = dataset.urls[:shards]
    samples = dataset.samples * len(urls) // len(dataset.urls)
    out = work / f"curate-{model_name}"

    def ours() -> float:
        shutil.rmtree(out, ignore_errors=True)
        return samples / timed(lambda: curate_ours(urls, out, embedder, aesthetic, nsfw, config.images_per_tar))

    def peer() -> float:
        return samples / timed(lambda: encode_open_clip(urls, model, transform, embedder.runtime().batch_size))

    # the first call of each builds its model: not part of the throughput
    curate_ours(urls[:1], out, embedder, aesthetic, nsfw, config.images_per_tar)
    encode_open_clip(urls[:1], model, transform, embedder.runtime().batch_size)
    ours_runs, peer_runs = interleave(repeats, ours, peer)
    job = "curate" if heads else "embed"
    extra = "scores, filters and writes shards" if heads else "writes shards (no heads: they take ViT-L/14's 768-wide embeddings)"
    return compare(f"{job} end to end, {model_name} (random weights)", "img/s", ours_runs, peer_runs,
                   "webdataset + open_clip preprocess + encode_image loop", ">= 0.85", minimum=0.85,
                   note=f"{samples} images, batch {embedder.runtime().batch_size}; ours also {extra}")


def run(config: Config, dataset: Dataset) -> tuple[list[Measure], dict]:
    import torch

    from imgcurate.models import TINY_MODEL, CLIPImageEmbedder
    from imgcurate.ops.decode import decode_pool

    measures: list[Measure] = []
    count = min(dataset.samples, 200 if config.quick else 500)  # open_clip's preprocess takes ~30 ms per photo here
    images = first_images(dataset, count)
    embedder = CLIPImageEmbedder(PREPROCESS_MODEL, pretrained=None, device="cpu")  # only its preprocess is used
    transform = open_clip_transform(embedder.preprocess)
    batch = embedder.runtime().batch_size
    preprocess_ours(images[:batch], embedder, batch)
    preprocess_open_clip(images[:batch], transform, batch)
    ours, peer = interleave(
        config.repeats,
        lambda: count / timed(lambda: preprocess_ours(images, embedder, batch)),
        lambda: count / timed(lambda: preprocess_open_clip(images, transform, batch)),
    )
    threads = decode_pool()._max_workers
    measures.append(compare(f"decode + preprocess to {embedder.preprocess['size']} px", "img/s", ours, peer,
                            "open_clip image_transform on PIL.Image.open", ">= 2", minimum=2.0,
                            note=f"{count} JPEGs; ours decodes in a pool of {threads} threads, the peer in one"))

    work = Path(tempfile.mkdtemp(prefix="imgcurate-bench-", dir=config.data))
    try:
        measures.append(measure_curation(config, dataset, TINY_MODEL, max(1, len(dataset.shards) // 4), work, config.repeats))
        if not config.quick:
            # where the model, not the decoding, sets the pace: a real CLIP size on a small slice (about 20 img/s here)
            small = make_dataset(config.data / f"jpegs-{MODEL_BOUND_SAMPLES}x2", MODEL_BOUND_SAMPLES, 2)
            measures.append(measure_curation(config, small, MODEL_BOUND, 2, work, min(config.repeats, 3), heads=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    parameters = {"repeats": config.repeats, "preprocess_images": count, "preprocess_model": PREPROCESS_MODEL,
                  "batch_size": batch, "torch_threads": torch.get_num_threads(), "decode_threads": threads,
                  "scheduler": "dask default for dataframes (threads)", "weights": "random (throughput only)",
                  "thresholds": {"aesthetic": AESTHETIC_THRESHOLD, "nsfw": NSFW_THRESHOLD}}
    return measures, parameters


if __name__ == "__main__":
    raise SystemExit("run the benchmarks with: python benchmarks/run.py --only models")
