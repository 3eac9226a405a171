"""The README's Python examples, taken from README.md and run as they stand on the sample data.

Only what cannot run here is replaced: trained weights (none can be downloaded) by the tiny model's
random weights, and parameters sized for millions of samples by ones for dozens. Each replacement
is asserted to find its text, so an edited README fails here instead of going untested. The first
look is run by the benchmark test, the DataComp recipe by tests/test_captions_uids.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import imgcurate
from imgcurate.app.sample_data import make_sample_dataset

README = Path(__file__).parents[1] / "README.md"
TINY = '"imgcurate-tiny-vit", pretrained="random", device="cpu"'


def readme_block(after: str, replacements: dict[str, str]) -> str:
    """The first Python block after the text ``after``, with each replacement made (each must be there)."""
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)
    for old, new in replacements.items():
        assert old in code, f"the README's block no longer holds {old!r}: update this test"
        code = code.replace(old, new)
    return code


def run(code: str, where: str, names: dict | None = None) -> dict:
    namespace: dict = dict(names or {})
    exec(compile(code, f"README.md ({where})", "exec"), namespace)
    return namespace


@pytest.fixture
def sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_sample_dataset("data")
    return tmp_path


def written_keys(directory: str) -> list[str]:
    return [key for path in sorted(Path(directory).glob("[0-9]*.parquet")) for key in pq.read_table(path)["key"].to_pylist()]


def test_curation_example(sample):
    from imgcurate.models import AestheticScorer, CLIPImageEmbedder, NSFWScorer

    # random heads score about alike: the thresholds become the medians, so the mask keeps some and drops some
    scores = imgcurate.embed(imgcurate.read_webdataset("data/"), CLIPImageEmbedder("imgcurate-tiny-vit", pretrained="random",
                             device="cpu"), aesthetic=AestheticScorer("random"), nsfw=NSFWScorer("random")).compute()
    cuts = {"AESTHETIC_CUT": scores.aesthetic_score.median(), "NSFW_CUT": scores.nsfw_score.median()}
    expected = scores.key[(scores.aesthetic_score >= cuts["AESTHETIC_CUT"]) & (scores.nsfw_score < cuts["NSFW_CUT"])].tolist()
    assert 0 < len(expected) < len(scores)
    code = readme_block("## Curation: embeddings, scores, filters", {
        'CLIPImageEmbedder("ViT-L-14", pretrained="openai")': f"CLIPImageEmbedder({TINY})",
        "AestheticScorer()": 'AestheticScorer("random")',
        "NSFWScorer()": 'NSFWScorer("random")',
        "scored.aesthetic_score >= 5.0": "scored.aesthetic_score >= AESTHETIC_CUT",
        "scored.nsfw_score < 0.5": "scored.nsfw_score < NSFW_CUT",
    })
    run(code, "Curation", cuts)
    assert written_keys("curated") == expected


def test_deduplication_example(sample):
    shutil.copy("data/00000.tar", "data/00003.tar")  # every sample of the first shard again, in another shard
    shutil.copy("data/00000.parquet", "data/00003.parquet")
    code = readme_block("## Deduplication", {
        'CLIPImageEmbedder("ViT-L-14", pretrained="openai")': f"CLIPImageEmbedder({TINY})",
        "n_clusters=1000": "n_clusters=4",
    })
    namespace = run(code, "Deduplication")
    marked = namespace["marked"].compute()
    copies = marked[marked.source_shard.str.endswith("00003.tar")]
    assert len(copies) == 16 and copies.is_duplicate.all()
    assert [d["source_shard"].rsplit("/", 1)[-1] for d in copies.duplicate_of] == ["00000.tar"] * 16
    assert written_keys("deduped") == marked.key[~marked.is_duplicate].tolist()
    semantic = namespace["semantic"].compute()  # the exact copies are semantic duplicates too
    assert set(semantic.source_shard.str.rsplit("/", n=1).str[-1]) == {"00000.tar", "00001.tar", "00002.tar"}


def test_search_example(sample):
    shutil.copytree("data", "eval")
    first = imgcurate.read_webdataset("data", with_images=True).get_partition(0).compute()
    Path("a.jpg").write_bytes(first.image.iloc[0])
    Path("b.jpg").write_bytes(first.image.iloc[1])
    code = readme_block("## Search and embedding export", {
        'CLIPModel("ViT-L-14", pretrained="openai")': f"CLIPModel({TINY})",
        'text="a red car", k=50': 'text="a red car", k=20',  # k may not exceed the 48 vectors (an error says so)
    })
    namespace = run(code, "Search")
    like = namespace["like"]
    # a query by two of the dataset's own images finds them, and the subset holds what was found
    assert {first.key.iloc[0], first.key.iloc[1]} <= set(like.key)
    assert sorted(written_keys("subset")) == sorted(like.key)
    assert len(namespace["hits"]) == 20
    # every sample of eval/ is in data/: decontamination drops them all
    assert not list(Path("decontaminated").glob("*.tar"))
