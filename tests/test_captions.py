"""The CLIP image–text score, text embeddings, the exact top fraction and DataComp's basic filter, on real photos
with real open_clip models (random weights, saved to checkpoint files) and real captions."""

from __future__ import annotations

import io

import dask.dataframe as dd
import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image

import imgcurate
from captions_data import CAPTIONS, build_pairs_dataset
from imgcurate.common import columns as C
from imgcurate.models import TINY_MODEL, CLIPModel
from imgcurate.ops.captions import EmbeddingModelMismatch, caption_languages, encode_texts, tokenizable


def _checkpoint(tmp_path, name: str, seed: int = 1):
    """A model of config ``name`` with random weights unlike imgcurate's seeded ones, saved as a checkpoint file."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    for parameter in model.parameters():
        if parameter.dim() > 1:
            torch.nn.init.normal_(parameter, std=0.02)
    path = tmp_path / f"{name}-{seed}.pt"
    torch.save(model.state_dict(), path)
    return path


def open_clip_scores(name: str, checkpoint, samples) -> np.ndarray:
    """open_clip's own: cosine of encode_image(preprocess(img)) and encode_text(tokenizer(caption))."""
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    with torch.inference_mode():
        images = torch.stack([preprocess(Image.open(io.BytesIO(s["image"]))) for s in samples])
        image = model.encode_image(images)
        text = model.encode_text(tokenizer([s["caption"] for s in samples]))
    return torch.nn.functional.cosine_similarity(image, text).numpy()


@pytest.fixture
def pairs(tmp_path, photos):
    directory = tmp_path / "pairs"
    return directory, build_pairs_dataset(directory, photos)


@pytest.mark.parametrize("name, count", [(TINY_MODEL, 30), ("ViT-B-32", 8)])
def test_clip_score_is_open_clips_own_cosine_on_real_photos(tmp_path, photos, name, count):
    directory = tmp_path / "clean"
    samples = build_pairs_dataset(directory, photos[:count], shards=2, bad=False)
    checkpoint = _checkpoint(tmp_path, name)
    clip = CLIPModel(name, pretrained=str(checkpoint), device="cpu")
    scored = imgcurate.clip_score(imgcurate.read_webdataset(str(directory), with_images=False), clip).compute()
    expected = open_clip_scores(name, checkpoint, samples)
    assert scored[C.CLIP_SCORE].dtype == pd.ArrowDtype(pa.float32())
    ours = scored[C.CLIP_SCORE].to_numpy(dtype=np.float64)
    assert np.abs(ours - expected).max() < 0.01, (ours, expected)
    assert np.std(expected) > 1e-3  # the pairs differ, so agreeing is not trivial
    assert set(scored[C.EMBEDDING_MODEL]) == {clip.model_id} and "sha256:" in clip.model_id


def test_clip_score_reuses_the_embedding_of_the_same_model_and_refuses_another(tmp_path, photos):
    directory = tmp_path / "clean"
    build_pairs_dataset(directory, photos[:10], shards=2, bad=False)
    clip = CLIPModel(TINY_MODEL, pretrained=str(_checkpoint(tmp_path, TINY_MODEL)), device="cpu")
    df = imgcurate.read_webdataset(str(directory), with_images=False)
    direct = imgcurate.clip_score(df, clip).compute()
    embedded = imgcurate.embed(df, clip)
    reused = imgcurate.clip_score(embedded, clip, keep_text_embedding=True).compute()
    np.testing.assert_allclose(reused[C.CLIP_SCORE].to_numpy(float), direct[C.CLIP_SCORE].to_numpy(float), atol=1e-6)
    # the kept text vectors are unit vectors, and their dot with the image vectors is the score
    text = np.stack(reused[C.TEXT_EMBEDDING].to_list())
    image = np.stack(reused[C.EMBEDDING].to_list())
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.einsum("ij,ij->i", image, text), reused[C.CLIP_SCORE].to_numpy(float), atol=1e-6)

    other = CLIPModel(TINY_MODEL, pretrained=str(_checkpoint(tmp_path, TINY_MODEL, seed=2)), device="cpu")
    with pytest.raises(EmbeddingModelMismatch) as error:
        imgcurate.clip_score(embedded, other).compute()
    assert clip.model_id in str(error.value) and other.model_id in str(error.value)
    # an embedding nothing vouches for is refused before any partition is computed
    with pytest.raises(EmbeddingModelMismatch, match="no 'embedding_model' column"):
        imgcurate.clip_score(embedded.drop(columns=C.EMBEDDING_MODEL), clip)


def test_embed_text_then_clip_score_uses_the_kept_text_embedding(tmp_path, photos):
    directory = tmp_path / "clean"
    build_pairs_dataset(directory, photos[:6], shards=1, bad=False)
    clip = CLIPModel(TINY_MODEL, pretrained="random", device="cpu")
    df = imgcurate.read_webdataset(str(directory), with_images=False)
    texts = imgcurate.embed_text(df, clip)
    assert texts[C.TEXT_EMBEDDING].dtype == pd.ArrowDtype(pa.list_(pa.float32(), clip.dim))
    frame = imgcurate.clip_score(texts, clip).compute()
    vectors = np.stack(frame[C.TEXT_EMBEDDING].to_list())
    np.testing.assert_allclose(vectors, clip.embed_text(list(frame[C.CAPTION])), atol=1e-6)


def test_bad_captions_are_reported_never_scored_and_never_crash(tmp_path, pairs):
    directory, samples = pairs
    clip = CLIPModel(TINY_MODEL, pretrained="random", device="cpu")
    frame = imgcurate.clip_score(imgcurate.read_webdataset(str(directory), with_images=False), clip,
                                 keep_text_embedding=True).compute()
    # the reader lists the rejected .txt as a failure row of its own (a member failure); the sample stays
    assert list(frame.loc[frame[C.ERROR].notna(), C.ERROR]) == ["invalid_caption"]
    frame = frame[frame[C.ERROR].isna()]
    problems = dict(zip(frame[C.KEY], frame[C.CAPTION_PROBLEM]))
    scores = dict(zip(frame[C.KEY], frame[C.CLIP_SCORE]))
    for key in ("000001", "000004"):  # no .txt; a .txt that is not UTF-8 (rejected by the reader as invalid_caption)
        assert problems[key] == "no_caption"
        assert scores[key] is pd.NA
    for key in ("000002", "000003"):  # empty; tabs, newline and an ideographic space
        assert problems[key] == "empty_caption"
        assert scores[key] is pd.NA
    assert len(frame) == len(samples)  # none of them is a failure: the images are fine
    long = frame.set_index(C.KEY).loc["000005"]  # 100 kB: scored as open_clip's tokenizer cuts it
    assert pd.isna(long[C.CAPTION_PROBLEM]) and -1 <= long[C.CLIP_SCORE] <= 1
    np.testing.assert_allclose(long[C.TEXT_EMBEDDING], clip.embed_text([samples[5]["caption"][:4000]])[0], atol=1e-6)
    scored = frame[frame[C.CAPTION_PROBLEM].isna()]
    assert scored[C.CLIP_SCORE].notna().all() and len(scored) == len(samples) - 4
    assert scored[C.CLIP_SCORE].between(-1, 1).all()


def test_long_and_odd_captions_are_cut_as_open_clip_would_read_them():
    context = 77
    odd = ["", " ", "\x00\x01 control", "🙂" * 50, "ع" * 10, "漢" * 30_000, "a" * 100_000, "x\n" * 50_000]
    cut = tokenizable(odd, context)
    assert cut[:5] == odd[:5]
    assert all(len(text) <= 64 * context for text in cut)
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    # the tokens that reach the model are the same for the cut text
    for original, short in zip(odd, cut):
        if len(original) <= 20_000:
            assert torch.equal(tokenizer([original]), tokenizer([short]))
    clip = CLIPModel(TINY_MODEL, pretrained="random", device="cpu")
    vectors = clip.embed_text(cut)
    assert np.isfinite(vectors).all()


@pytest.mark.parametrize("name", [TINY_MODEL, "ViT-B-32"])
def test_text_encoding_without_padding_is_open_clips_encode_text(tmp_path, name):
    """Batches cut after their longest caption give open_clip's own text embeddings (to 1e-5)."""
    clip = CLIPModel(name, pretrained=str(_checkpoint(tmp_path, name)), device="cpu", batch_size=4)
    texts = ["", "a", "a dog on a beach at sunset", "word " * 300, "漢字" * 40, "🙂 emoji", *CAPTIONS]
    np.testing.assert_allclose(encode_texts(clip, texts), clip.embed_text(texts), atol=1e-5)


# ---------------------------------------------------------------------------------------
# The exact top fraction


def datacomp_threshold(scores: np.ndarray, fraction: float) -> float:
    """DataComp's get_threshold (baselines/apply_filter.py) on an array of scores: the score at index
    int(N * fraction) of the scores sorted in descending order."""
    n = int(len(scores) * fraction)
    return -np.sort(-scores)[n]


def scores_frame(values: np.ndarray, partitions: int, dropped_every: int = 0) -> dd.DataFrame:
    frame = pd.DataFrame({C.KEY: pd.Series([f"{i:08d}" for i in range(len(values))], dtype="string[pyarrow]"),
                          C.CLIP_SCORE: pd.Series(pa.array(values, pa.float32(), from_pandas=True), dtype=pd.ArrowDtype(pa.float32())),
                          C.ERROR: pd.Series([None] * len(values), dtype="string[pyarrow]")})
    return dd.from_pandas(frame, npartitions=partitions, sort=False)


@pytest.mark.parametrize("fraction", [0.3, 0.1, 0.5, 0.999, 1.0, 1e-6, 0.965])
@pytest.mark.parametrize("partitions", [1, 7, 40])
def test_top_fraction_keeps_exactly_what_datacomps_get_threshold_keeps(fraction, partitions):
    rng = np.random.default_rng(0)
    # ties across partitions: scores on a coarse grid (as float16 scores would be), plus negatives and zeros
    values = np.round(rng.normal(0.25, 0.06, 20_000), 3).astype(np.float32)
    values[::97] = 0.0
    values[::89] = -0.05
    values[::83] = -0.0  # the same value as 0.0, with another bit pattern
    values[::79] = -1e-40  # subnormals either side of zero
    values[::73] = 1e-40
    expected = datacomp_threshold(values, fraction) if int(len(values) * fraction) < len(values) else values.min()
    found = imgcurate.clip_score_threshold(scores_frame(values, partitions), fraction)
    assert found.threshold == float(expected) and found.scored == len(values)
    kept = imgcurate.ok_rows(imgcurate.filter_clip_score(scores_frame(values, partitions), top_fraction=fraction))
    assert len(kept) == int((values >= expected).sum())


def test_top_fraction_counts_only_scored_rows_in_play():
    values = np.linspace(-0.2, 0.6, 1001).astype(np.float32)
    with_nulls = values.astype(object)
    with_nulls[::10] = None  # unscored: left out of N, as DataComp's N counts scores
    frame = scores_frame(np.array(with_nulls, dtype=object), 9)
    scored = np.array([v for v in with_nulls if v is not None], dtype=np.float32)
    found = imgcurate.clip_score_threshold(frame, 0.25)
    assert found.scored == len(scored) and found.threshold == float(datacomp_threshold(scored, 0.25))
    marked = imgcurate.filter_clip_score(frame, top_fraction=0.25).compute()
    kept = marked[marked[C.DROPPED_BY].isna()]
    assert len(kept) == int((scored >= found.threshold).sum())
    assert set(marked[C.DROPPED_BY].dropna()) == {"clip_score", "clip_score:no_score"}


def test_top_fraction_of_nothing_keeps_nothing_and_bad_arguments_fail():
    frame = scores_frame(np.array([None, None], dtype=object), 1)
    assert imgcurate.clip_score_threshold(frame, 0.3).threshold is None
    assert imgcurate.ok_rows(imgcurate.filter_clip_score(frame, top_fraction=0.3)).compute().empty
    for bad in (0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="top_fraction"):
            imgcurate.filter_clip_score(frame, top_fraction=bad)
    with pytest.raises(ValueError, match="either threshold or top_fraction"):
        imgcurate.filter_clip_score(frame, threshold=0.3, top_fraction=0.3)


def test_threshold_filter_labels_rows_without_a_score_by_their_caption_problem(tmp_path, pairs):
    directory, _ = pairs
    clip = CLIPModel(TINY_MODEL, pretrained="random", device="cpu")
    scored = imgcurate.clip_score(imgcurate.read_webdataset(str(directory), with_images=False), clip)
    marked = imgcurate.filter_clip_score(scored, threshold=0.0).compute().set_index(C.KEY)
    assert marked.loc["000001", C.DROPPED_BY] == "clip_score:no_caption"
    assert marked.loc["000002", C.DROPPED_BY] == "clip_score:empty_caption"
    has_score = marked[marked[C.CLIP_SCORE].notna()]
    assert ((has_score[C.CLIP_SCORE] < 0) == (has_score[C.DROPPED_BY] == "clip_score")).all()


# ---------------------------------------------------------------------------------------
# DataComp's basic filter


def datacomp_basic_filter(captions, widths, heights):
    """DataComp's load_uids_with_basic_filter_helper rules, with fastText's lid.176 for the language."""
    keep = []
    for text, width, height in zip(captions, widths, heights):
        language = caption_languages([text])[0]
        side, longest = min(width, height), max(width, height)
        keep.append(language == "en" and len(text.split()) > 2 and len(text) > 5 and side >= 200 and longest / side <= 3.0)
    return keep


def test_basic_filter_matches_datacomps_rules_and_says_which_rule_dropped_each_row(tmp_path, photos):
    directory = tmp_path / "clean"
    samples = build_pairs_dataset(directory, photos, shards=3, bad=False)
    df = imgcurate.read_webdataset(str(directory), with_images=False)
    # img2dataset's sizes, altered so that each image rule has something to remove
    sizes = {s["key"]: (s["json"]["original_width"], s["json"]["original_height"]) for s in samples}
    sizes["000000"] = (150, 400)
    sizes["000007"] = (1000, 300)
    sizes["000008"] = (180, 180)

    def with_sizes(frame):
        frame = frame.copy()
        frame[C.ORIGINAL_WIDTH] = pd.array([sizes[k][0] for k in frame[C.KEY]], dtype=pd.ArrowDtype(pa.int64()))
        frame[C.ORIGINAL_HEIGHT] = pd.array([sizes[k][1] for k in frame[C.KEY]], dtype=pd.ArrowDtype(pa.int64()))
        return frame

    df = df.map_partitions(with_sizes, meta=with_sizes(df._meta))
    marked = imgcurate.basic_filter(df).compute()
    expected = datacomp_basic_filter([s["caption"] for s in samples], *zip(*[sizes[s["key"]] for s in samples]))
    assert list(marked[C.DROPPED_BY].isna()) == expected
    labels = dict(zip(marked[C.KEY], marked[C.DROPPED_BY]))
    assert labels["000000"] == "basic_filter:image_side" and labels["000007"] == "basic_filter:aspect_ratio"
    assert labels["000002"] == "basic_filter:language"  # German
    languages = dict(zip(marked[C.CAPTION], marked[C.CAPTION_LANGUAGE]))
    assert [languages[c] for c in CAPTIONS[:7]] == ["en", "en", "de", "fr", "ja", "ru", "ar"]
    assert marked[C.IMAGE_WIDTH].isna().all()  # img2dataset's sizes were there: no header was read


def test_basic_filter_reads_sizes_from_headers_without_img2datasets_columns(tmp_path, photos):
    directory = tmp_path / "plain"
    samples = build_pairs_dataset(directory, photos[:12], shards=2, bad=False)
    df = imgcurate.read_webdataset(str(directory), with_images=False).drop(columns=[C.ORIGINAL_WIDTH, C.ORIGINAL_HEIGHT])
    marked = imgcurate.basic_filter(df, language=None, min_caption_words=0, min_caption_chars=0, min_image_side=400).compute()
    labels = [None if pd.isna(label) else label for label in marked[C.DROPPED_BY]]
    for sample, width, height, label in zip(samples, marked[C.IMAGE_WIDTH], marked[C.IMAGE_HEIGHT], labels):
        assert (width, height) == Image.open(io.BytesIO(sample["image"])).size
        side, ratio = min(width, height), max(width, height) / min(width, height)
        assert label == ("basic_filter:image_side" if side < 400 else "basic_filter:aspect_ratio" if ratio > 3 else None)
    assert any(labels) and not all(labels)


def test_basic_filter_survives_every_bad_caption(tmp_path, pairs):
    directory, _ = pairs
    marked = imgcurate.basic_filter(imgcurate.read_webdataset(str(directory), with_images=False)).compute()
    marked = marked[marked[C.ERROR].isna()]  # not the reader's row for the rejected .txt member
    labels = {key: None if pd.isna(label) else label for key, label in zip(marked[C.KEY], marked[C.DROPPED_BY])}
    assert labels["000001"] == labels["000004"] == "basic_filter:language"  # no caption at all
    assert labels["000002"] == "basic_filter:language"  # empty: no language to identify
    assert labels["000005"] is None or not labels["000005"].endswith("caption_words")  # 100 kB of English words
