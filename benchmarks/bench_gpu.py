"""GPU: ViT-L/14 throughput on one CUDA device, model only and end to end (nvJPEG decoding, heads, writing).

Without a CUDA device nothing is measured and the result file says "not run: no CUDA device".
Weights are random (throughput does not depend on their values).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

from bench_models import AESTHETIC_THRESHOLD, NSFW_THRESHOLD, curate_ours
from common import Config, Dataset, Measure, compare, first_images, interleave, timed

NAME = "gpu"
MODEL = "ViT-L-14"
BATCH = 256
PRECISION = "bf16"  # autocast over float32 weights, for ours and the peers alike


def autocast(device: str):
    """bf16 compute on float32 weights, as imgcurate's embedder runs (open_clip's "amp_bf16")."""
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def model_only(config: Config, dataset: Dataset, device: str) -> Measure:
    """Pixels already decoded and on the GPU: normalise, forward, L2-normalise, back to the host."""
    import numpy as np
    import open_clip
    import torch

    from imgcurate.models import CLIPImageEmbedder
    from imgcurate.ops.decode import Preprocess, decode_batch

    embedder = CLIPImageEmbedder(MODEL, pretrained=None, device=device, batch_size=BATCH, precision=PRECISION)
    pixels = np.stack(decode_batch(first_images(dataset, BATCH), Preprocess.from_open_clip(embedder.preprocess)))
    repeat = 2 if config.quick else 8
    batch = torch.from_numpy(pixels).to(device).repeat(repeat, 1, 1, 1)  # uint8 NHWC on the device
    count = len(batch)
    model = open_clip.create_model(MODEL, pretrained=None, device=device).eval()
    normalised = embedder.normalise(batch, device)  # the peer gets its input ready-made: only encode_image is timed

    def peer() -> None:
        with torch.inference_mode(), autocast(device):
            for start in range(0, count, BATCH):
                features = model.encode_image(normalised[start : start + BATCH])
                torch.nn.functional.normalize(features.float(), dim=-1).cpu()
        torch.cuda.synchronize(device)

    embedder.embed_pixels(batch[:BATCH])  # builds the model and warms the kernels
    peer()
    ours, theirs = interleave(config.repeats, lambda: count / timed(lambda: embedder.embed_pixels(batch)),
                              lambda: count / timed(peer))
    return compare(f"{MODEL} model only, {PRECISION}, batch {BATCH}", "img/s", ours, theirs,
                   "open_clip encode_image on normalised input", "report",
                   note=f"{count} images already on the device")


def end_to_end(config: Config, dataset: Dataset, device: str, work: Path) -> Measure:
    import open_clip
    import torch
    import webdataset as wds
    from PIL import Image

    from imgcurate.models import AestheticScorer, CLIPImageEmbedder, NSFWScorer

    embedder = CLIPImageEmbedder(MODEL, pretrained=None, device=device, batch_size=BATCH, precision=PRECISION)
    aesthetic = AestheticScorer(weights="random", device=device)
    nsfw = NSFWScorer(weights="random", device=device)
    model, _, transform = open_clip.create_model_and_transforms(MODEL, pretrained=None, device=device)
    model.eval()
    out = work / "curate"

    def ours() -> float:
        shutil.rmtree(out, ignore_errors=True)
        return dataset.samples / timed(lambda: curate_ours(dataset.urls, out, embedder, aesthetic, nsfw, config.images_per_tar))

    def peer_loop(urls: list[str]) -> None:
        batch = []

        def flush():
            x = torch.stack(batch).to(device, non_blocking=True)
            torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1).cpu()

        with torch.inference_mode(), autocast(device):
            for sample in wds.WebDataset(urls, shardshuffle=False):
                batch.append(transform(Image.open(io.BytesIO(sample["jpg"]))))
                if len(batch) == BATCH:
                    flush()
                    batch = []
            if batch:
                flush()

    def peer() -> float:
        return dataset.samples / timed(lambda: peer_loop(dataset.urls))

    curate_ours(dataset.urls[:1], out, embedder, aesthetic, nsfw, config.images_per_tar)
    peer_loop(dataset.urls[:1])
    ours_runs, peer_runs = interleave(config.repeats, ours, peer)
    return compare(f"{MODEL} curate end to end, {PRECISION}", "img/s", ours_runs, peer_runs,
                   "webdataset + open_clip preprocess + encode_image loop", "report",
                   note=f"{dataset.samples} images; ours decodes JPEGs with nvJPEG, scores, filters and writes shards")


def run(config: Config, dataset: Dataset) -> tuple[list[Measure], dict]:
    import torch

    if not torch.cuda.is_available():
        return [], {"status": "not run: no CUDA device"}
    device = "cuda"
    work = Path(tempfile.mkdtemp(prefix="imgcurate-bench-", dir=config.data))
    try:
        measures = [model_only(config, dataset, device), end_to_end(config, dataset, device, work)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    parameters = {"device": torch.cuda.get_device_name(0), "model": f"{MODEL} (random weights)", "batch_size": BATCH,
                  "precision": PRECISION, "samples": dataset.samples, "repeats": config.repeats,
                  "scheduler": "dask default for dataframes (threads)",
                  "thresholds": {"aesthetic": AESTHETIC_THRESHOLD, "nsfw": NSFW_THRESHOLD}}
    return measures, parameters


if __name__ == "__main__":
    raise SystemExit("run the benchmarks with: python benchmarks/run.py --only gpu")
