"""The main job on the bundled sample data: generate it, curate it, query the result.

With trained weights on the machine (open_clip's cache for ViT-L/14, LAION's head files in
``$IMGCURATE_HOME``, or downloadable) the demo curates with them and LAION's usual thresholds.
Without them it says so, names what is missing and how to provide it, and runs the same pipeline
with imgcurate's tiny RANDOM-weight model and random heads so that every stage runs. Random
scores mean nothing, so the thresholds are then set from the sample's own score quantiles (the
filters visibly drop images) and the manifest records ``random_weights: true``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from ..common.errors import WeightsNotFoundError

TRAINED = {"model_name": "ViT-L-14", "pretrained": "openai", "aesthetic_threshold": 5.0, "nsfw_threshold": 0.5}
RANDOM_AESTHETIC_QUANTILE = 0.5  # keep the better-scoring half
RANDOM_NSFW_QUANTILE = 0.9  # drop the top tenth


@dataclass
class DemoModels:
    model_name: str
    pretrained: str | None
    aesthetic_weights: str | None
    nsfw_weights: str | None
    missing: list[str]

    @property
    def random(self) -> bool:
        return bool(self.missing)


def find_trained_models() -> DemoModels:
    """The trained weights when they are all available; otherwise the random stand-ins and what is missing."""
    from ..models import AestheticScorer, CLIPImageEmbedder, NSFWScorer
    from ..models.tiny import TINY_MODEL

    missing: list[str] = []
    heads: dict[str, str | None] = {}
    try:
        CLIPImageEmbedder(TRAINED["model_name"], TRAINED["pretrained"], device="cpu").check_weights()
    except WeightsNotFoundError as exc:
        missing.append(str(exc))
    for name, head in (("aesthetic", AestheticScorer), ("nsfw", NSFWScorer)):
        try:
            heads[name] = head(device="cpu").path
        except WeightsNotFoundError as exc:
            missing.append(str(exc))
    if missing:
        return DemoModels(TINY_MODEL, None, "random", "random", missing)
    return DemoModels(TRAINED["model_name"], TRAINED["pretrained"], heads["aesthetic"], heads["nsfw"], [])


def random_thresholds(data: str, models: DemoModels) -> tuple[float, float]:
    """Quantiles of the random scores on the sample itself (see module docstring)."""
    import dask

    from ..dataframe import embed
    from ..io.reader import read_webdataset
    from ..models import AestheticScorer, CLIPImageEmbedder, NSFWScorer

    df = read_webdataset(data, with_images=False)
    scored = embed(df, CLIPImageEmbedder(models.model_name, models.pretrained, device="cpu"),
                   aesthetic=AestheticScorer("random", device="cpu"), nsfw=NSFWScorer("random", device="cpu"))
    with dask.config.set(scheduler="threads"):
        scores = scored[["aesthetic_score", "nsfw_score"]].dropna().compute()
    return (float(scores.aesthetic_score.quantile(RANDOM_AESTHETIC_QUANTILE)),
            float(scores.nsfw_score.quantile(RANDOM_NSFW_QUANTILE)))


def run_demo(directory: str, scheduler: str | None = None) -> int:
    from .sample_data import make_sample_dataset
    from ..stages import (
        FilePartitioningStage, ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage, ImageReaderStage,
        ImageWriterStage, Pipeline,
    )

    data = os.path.join(directory, "sample-data")
    output = os.path.join(directory, "curated")
    if not os.path.isdir(data):
        make_sample_dataset(data)
    print(f"sample data: {data}")

    models = find_trained_models()
    if models.random:
        print("\nTrained weights are not available on this machine:")
        for line in models.missing:
            print(f"  - {line}")
        aesthetic_threshold, nsfw_threshold = random_thresholds(data, models)
        print(
            f"\nRunning the demo with imgcurate's tiny RANDOM-weight model ({models.model_name}) and RANDOM heads, so every "
            f"stage runs. Its scores mean nothing: the thresholds are this sample's own median aesthetic score "
            f"({aesthetic_threshold:.4f}) and 90th-percentile NSFW score ({nsfw_threshold:.4f}), not LAION's 5.0 / 0.5. "
            f"The manifest records random_weights: true.\n"
        )
    else:
        aesthetic_threshold, nsfw_threshold = TRAINED["aesthetic_threshold"], TRAINED["nsfw_threshold"]
        print(f"curating with {models.model_name} ({models.pretrained}) and LAION's heads\n")

    pipeline = Pipeline(name="demo", description="the bundled sample data, curated", stages=[
        FilePartitioningStage(data),
        ImageReaderStage(),
        ImageEmbeddingStage(models.model_name, models.pretrained, device="cpu" if models.random else None),
        ImageAestheticFilterStage(aesthetic_threshold, weights=models.aesthetic_weights),
        ImageNSFWFilterStage(nsfw_threshold, weights=models.nsfw_weights),
        ImageWriterStage(output, images_per_tar=10, overwrite=True, keep_dropped=True, verbose=True),
    ])
    with warnings.catch_warnings():
        if models.random:  # the random scores are off LAION's scale by construction; the warning would mislead
            warnings.filterwarnings("ignore", message=".*score_threshold=.*", category=UserWarning)
        result = pipeline.run(scheduler=scheduler or "threads")

    from ..dataframe.sql import sql

    top = sql("SELECT key, caption, round(aesthetic_score, 4) AS aesthetic, round(nsfw_score, 4) AS nsfw "
              "FROM samples ORDER BY aesthetic_score DESC LIMIT 5", output)
    print(f"\n$ imgcurate query {output} \"SELECT key, caption, aesthetic_score, nsfw_score FROM samples "
          f"ORDER BY aesthetic_score DESC LIMIT 5\"")
    print(top.to_string(index=False))
    from .report import write_report

    report = write_report(output, os.path.join(directory, "report.html"))
    print(f"\nreport: {report} (histograms, counts per stage, thumbnails of kept and dropped samples)")
    if models.random:
        print("\n(RANDOM weights: a demonstration of the pipeline, not a curation. See README, 'Model weights'.)")
    return 0 if result.write.samples else 1
