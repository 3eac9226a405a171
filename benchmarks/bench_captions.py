"""Captions on CPU: text encoding vs open_clip's own encode_text loop, the CLIP score on embedded frames vs
text encoding alone, and the exact top fraction of 10M scores vs one pass over the column.

Weights are random (throughput does not depend on them). The captions are web-style alt texts made
from templates (objects, places, styles, product words), distinct from one another, so encoding each
caption once gains nothing from repeats.
"""

from __future__ import annotations

import numpy as np

from common import Config, Dataset, Measure, compare, interleave, timed

NAME = "captions"
TEXT_MODEL = "ViT-B-32"  # a real text tower (12 layers, 512 wide); the tiny model's costs next to nothing
SCORES, SCORE_PARTITIONS, FRACTION = 10_000_000, 100, 0.3

_SUBJECTS = ["a golden retriever", "an old lighthouse", "fresh strawberries", "a red vintage car", "a wooden table",
             "two children", "a mountain lake", "a bowl of ramen", "a leather wallet", "a city skyline",
             "a watercolor fox", "a modern kitchen", "a bride and groom", "a stack of books", "a snowy forest"]
_PLACES = ["on the beach", "at sunset", "in the park", "on a white background", "in the rain", "at night",
           "in a coffee shop", "by the sea", "in autumn", "on the street"]
_EXTRAS = ["", ", stock photo", " - free shipping", ", high resolution", " | vector illustration", ", close up",
           " (2019)", ", aerial view", ", size M", " #travel #photography"]


def captions(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct web-style captions of 3 to 25 words."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        words = [str(_SUBJECTS[rng.integers(len(_SUBJECTS))]), str(_PLACES[rng.integers(len(_PLACES))])]
        if rng.random() < 0.5:
            words.append("with " + str(_SUBJECTS[rng.integers(len(_SUBJECTS))]))
        if rng.random() < 0.3:
            words.append("and " + " ".join(str(_PLACES[rng.integers(len(_PLACES))]) for _ in range(rng.integers(1, 4))))
        out.append(" ".join(words) + str(_EXTRAS[rng.integers(len(_EXTRAS))]) + f" {i}")
    return out


def caption_frame(texts: list[str], partitions: int, clip=None):
    """A Dask frame of ``texts`` (and, given ``clip``, unit image embeddings it vouches for)."""
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    from imgcurate.common import columns as C

    frame = pd.DataFrame({C.KEY: pd.array([f"{i:08d}" for i in range(len(texts))], dtype="string[pyarrow]"),
                          C.CAPTION: pd.array(texts, dtype="string[pyarrow]")})
    if clip is not None:
        vectors = np.random.default_rng(1).normal(size=(len(texts), clip.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), clip.dim)
        frame[C.EMBEDDING] = pd.Series(column, dtype=pd.ArrowDtype(column.type))
        frame[C.EMBEDDING_MODEL] = pd.array([clip.model_id] * len(texts), dtype="string[pyarrow]")
    return dd.from_pandas(frame, npartitions=partitions, sort=False)


def encode_open_clip(model, tokenizer, texts: list[str], batch_size: int) -> int:
    """open_clip's own loop: tokenizer, encode_text, L2 normalisation, per batch."""
    import torch

    done = 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            features = model.encode_text(tokenizer(texts[start : start + batch_size]))
            done += len(torch.nn.functional.normalize(features, dim=-1))
    return done


def score_frame(count: int, partitions: int):
    """``count`` float32 scores around CLIP's typical 0.3, on a 1/1000 grid (so there are ties), in ``partitions``."""
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    from imgcurate.common import columns as C

    values = np.round(np.random.default_rng(2).normal(0.3, 0.05, count), 3).astype(np.float32)
    frame = pd.DataFrame({C.CLIP_SCORE: pd.Series(pa.array(values), dtype=pd.ArrowDtype(pa.float32())),
                          C.ERROR: pd.Series(pd.arrays.ArrowExtensionArray(pa.nulls(count, pa.string())))})
    return values, dd.from_pandas(frame, npartitions=partitions, sort=False).persist(scheduler="threads")


def run(config: Config, dataset: Dataset) -> tuple[list[Measure], dict]:
    import open_clip
    import torch

    import imgcurate
    from imgcurate.common import columns as C
    from imgcurate.models import TINY_MODEL, CLIPModel

    model_name = TINY_MODEL if config.quick else TEXT_MODEL
    count = 256 if config.quick else 1024
    texts = captions(count)
    clip = CLIPModel(model_name, pretrained=None, device="cpu")
    batch = clip.runtime().batch_size
    model = open_clip.create_model(model_name, pretrained=None, device="cpu").eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    partitions = max(1, count // 256)
    texts_df = caption_frame(texts, partitions)
    embedded_df = caption_frame(texts, partitions, clip)
    imgcurate.embed_text(texts_df, clip).compute()  # builds the model once: not part of the throughput
    encode_open_clip(model, tokenizer, texts[:batch], batch)
    measures: list[Measure] = []

    text_ours, text_peer = interleave(
        config.repeats,
        lambda: count / timed(lambda: imgcurate.embed_text(texts_df, clip).compute()),
        lambda: count / timed(lambda: encode_open_clip(model, tokenizer, texts, batch)))
    measures.append(compare(f"text encoding, {model_name} (random weights)", "captions/s", text_ours, text_peer,
                            "open_clip tokenizer + encode_text loop", ">= 1", minimum=1.0,
                            note=f"{count} distinct captions, batch {batch}; ours: imgcurate.embed_text on a "
                                 f"{partitions}-partition frame, computed"))

    score_ours, score_peer = interleave(
        config.repeats,
        lambda: count / timed(lambda: imgcurate.clip_score(embedded_df, clip).compute()),
        lambda: count / timed(lambda: imgcurate.embed_text(texts_df, clip).compute()))
    measures.append(compare(f"clip_score on a frame with embeddings, {model_name}", "samples/s", score_ours, score_peer,
                            "imgcurate.embed_text on the same captions", ">= 0.85", minimum=0.85,
                            note="the frame carries unit image embeddings made by the same model"))

    scores_count = 1_000_000 if config.quick else SCORES
    values, scores_df = score_frame(scores_count, SCORE_PARTITIONS)
    expected = -np.sort(-values)[int(len(values) * FRACTION)]  # DataComp's get_threshold
    kept = imgcurate.ok_rows(imgcurate.filter_clip_score(scores_df, top_fraction=FRACTION))
    exact = len(kept) == int((values >= expected).sum())
    found = imgcurate.clip_score_threshold(scores_df, FRACTION)

    filter_ours, filter_peer = interleave(
        config.repeats,
        lambda: timed(lambda: imgcurate.filter_clip_score(scores_df, top_fraction=FRACTION)),
        lambda: timed(lambda: (scores_df[C.CLIP_SCORE] >= 0.3).sum().compute()))
    measures.append(compare(f"filter_clip_score(top_fraction={FRACTION}) on {scores_count:,} scores in "
                            f"{SCORE_PARTITIONS} partitions: time / one pass", "s", filter_ours, filter_peer,
                            "one pass over the column: (clip_score >= t).sum()", "<= 3", maximum=3.0,
                            note=f"exact: threshold {found.threshold} == DataComp's {float(expected)}: "
                                 f"{found.threshold == float(expected)}; kept {len(kept):,} rows == numpy's count: {exact}"))
    if not (exact and found.threshold == float(expected)):
        raise AssertionError("filter_clip_score's top fraction is not exact")
    parameters = {"repeats": config.repeats, "text_model": model_name, "captions": count, "batch_size": batch,
                  "torch_threads": torch.get_num_threads(), "scores": scores_count, "score_partitions": SCORE_PARTITIONS,
                  "top_fraction": FRACTION, "scheduler": "dask default for dataframes (threads)",
                  "weights": "random (throughput only)"}
    return measures, parameters


if __name__ == "__main__":
    raise SystemExit("run the benchmarks with: python benchmarks/run.py --only captions")
