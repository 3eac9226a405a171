"""The model layer: which activation a CLIP model is built with, LAION's heads on weight files in
LAION's layout, where weights come from and what a user is told when they are missing."""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from imgcurate.common.errors import WeightsNotFoundError
from imgcurate.models import TINY_MODEL, AestheticScorer, CLIPImageEmbedder, CLIPModel, NSFWScorer, resolve_model
from imgcurate.models.clip import _load_model
from imgcurate.models.heads import _load_head
from imgcurate.ops.decode import Preprocess, decode_batch

from conftest import aesthetic_reference, aesthetic_state, nsfw_reference, nsfw_state, save_state

LAION_TAG = "laion2b_s32b_b82k"  # ViT-L-14 weights LAION trained with plain GELU


def built_activations(model_name: str, pretrained: str) -> set[type]:
    """The MLP activation classes of the image tower open_clip builds for what ``resolve_model`` chose.

    Built on the meta device: the real module structure, without allocating ViT-L/14's weights."""
    resolved = resolve_model(model_name, pretrained)
    with torch.device("meta"):
        model = open_clip.create_model(resolved.config_name, pretrained=None, force_quick_gelu=resolved.force_quick_gelu,
                                       device="meta")
    return {type(block.mlp.gelu) for block in model.visual.transformer.resblocks}


@pytest.mark.parametrize("model_name", ["ViT-L-14", "ViT-L-14-quickgelu", "ViT-B-32"])
def test_openai_weights_are_built_with_quickgelu(model_name):
    assert built_activations(model_name, "openai") == {QuickGELU}


@pytest.mark.parametrize(("model_name", "tag"), [("ViT-L-14", LAION_TAG), ("ViT-B-32", "laion2b_s34b_b79k")])
def test_weights_trained_with_gelu_keep_gelu(model_name, tag):
    assert built_activations(model_name, tag) == {torch.nn.GELU}
    assert resolve_model(model_name, tag).force_quick_gelu is False


def test_quickgelu_resolution_is_described_and_logged_without_loading(caplog):
    loads = _load_model.cache_info()
    with caplog.at_level(logging.INFO, logger="imgcurate"):
        embedder = CLIPImageEmbedder("ViT-L-14", "openai", device="cpu")
    assert any("QuickGELU" in r.getMessage() and "ViT-L-14" in r.getMessage() for r in caplog.records)
    described = embedder.describe()
    assert described["quick_gelu"] is True and described["open_clip_config"] == "ViT-L-14"
    assert described["random_weights"] is False and described["embedding_dim"] == 768
    assert CLIPImageEmbedder("ViT-L-14", LAION_TAG, device="cpu").describe()["quick_gelu"] is False
    assert _load_model.cache_info() == loads  # no model was built for any of this


def test_unknown_model_or_tag_fails_by_name():
    with pytest.raises(ValueError, match="ViT-Nope"):
        resolve_model("ViT-Nope", "openai")
    with pytest.raises(ValueError, match="known tags: .*laion2b_s32b_b82k"):
        resolve_model("ViT-L-14", "no-such-tag")


def test_tiny_model_is_built_with_its_config_and_cached_per_process():
    embedder = CLIPImageEmbedder(TINY_MODEL, pretrained=None, device="cpu")
    model = embedder.model("cpu")
    assert {type(block.mlp.gelu) for block in model.visual.transformer.resblocks} == {QuickGELU}
    assert embedder.model("cpu") is model
    assert pickle.loads(pickle.dumps(embedder)).model("cpu") is model  # an equal copy (as a worker gets) reuses it
    assert embedder.describe()["random_weights"] is True


# -- LAION's heads --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_embeddings(photos) -> np.ndarray:
    """Real unit-length 768-wide vectors: the tiny model's embeddings of the real photos."""
    embedder = CLIPImageEmbedder(TINY_MODEL, pretrained=None, device="cpu")
    pixels = np.stack(decode_batch([p.read_bytes() for p in photos], Preprocess.from_open_clip(embedder.preprocess)))
    vectors = embedder.embed_pixels(pixels)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    return vectors


@pytest.mark.parametrize(("scorer_class", "make_state", "reference"), [
    (AestheticScorer, aesthetic_state, aesthetic_reference),
    (NSFWScorer, nsfw_state, nsfw_reference),
])
def test_heads_on_laion_layout_files_match_numpy(tmp_path, photo_embeddings, scorer_class, make_state, reference):
    state = make_state(seed=3)
    path = save_state(state, tmp_path / scorer_class.WEIGHTS.filename)
    scorer = scorer_class(weights=path, device="cpu")
    scores = scorer.score(photo_embeddings)
    expected = reference(state, photo_embeddings)
    assert scores.dtype == np.float32 and scores.shape == (len(photo_embeddings),)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(expected) > 1e-2  # the vectors are told apart, so the comparison means something
    described = scorer.describe()
    assert described["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert described["random_weights"] is False and described["weights"] == str(path)
    assert scorer.score(np.zeros((0, 768), np.float32)).shape == (0,)


def test_nsfw_normalisation_is_keras_at_zero_variance(tmp_path, photo_embeddings):
    state = nsfw_state(seed=4)
    state["norm.variance"][:3] = 0.0  # Keras divides by max(sqrt(variance), epsilon), never by zero
    scores = NSFWScorer(weights=save_state(state, tmp_path / "nsfw.pth"), device="cpu").score(photo_embeddings)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, nsfw_reference(state, photo_embeddings), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("scorer_class", "state"), [
    (AestheticScorer, nsfw_state()),  # the other head's file
    (NSFWScorer, {"layers.0.weight": np.zeros((1024, 768), np.float32)}),
])
def test_weight_file_in_the_wrong_layout_fails_clearly(tmp_path, scorer_class, state):
    path = save_state(state, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong\.pth.*LAION's layout.*missing"):
        scorer_class(weights=path, device="cpu")


def test_weight_file_with_wrong_shapes_or_not_torch_fails_clearly(tmp_path):
    state = aesthetic_state()
    state["layers.0.weight"] = state["layers.0.weight"][:, :512]
    with pytest.raises(ValueError, match=r"shapes.*layers\.0\.weight"):
        AestheticScorer(weights=save_state(state, tmp_path / "narrow.pth"), device="cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth"):
        AestheticScorer(weights=garbage, device="cpu")


@pytest.mark.parametrize("scorer_class", [AestheticScorer, NSFWScorer])
def test_heads_take_only_vit_l14_width(scorer_class):
    scorer = scorer_class(weights="random", device="cpu")
    with pytest.raises(ValueError, match="768.*ViT-L-14|ViT-L-14.*768") as err:
        scorer.score(np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32))
    assert "512" in str(err.value)
    assert scorer.describe()["random_weights"] is True and scorer.describe()["weights_sha256"] is None


def test_heads_pickle_small_and_load_once_per_process(tmp_path):
    path = save_state(aesthetic_state(), tmp_path / "aesthetic.pth")
    for scorer in (AestheticScorer(weights=path, device="cpu"), NSFWScorer(weights="random", device="cpu")):
        payload = pickle.dumps(scorer)
        assert len(payload) < 10_000
        module = scorer.module()
        assert scorer.module() is module and pickle.loads(payload).module() is module
    assert _load_head("aesthetic", str(path), "cpu") is AestheticScorer(weights=path, device="cpu").module()
    embedder = CLIPImageEmbedder("ViT-L-14", "openai", device="cpu")
    assert len(pickle.dumps(embedder)) < 10_000


# -- where weights come from ----------------------------------------------------------------------

@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Every weight cache pointed at empty directories, and downloads forbidden."""
    import huggingface_hub.constants

    home = tmp_path / "imgcurate-home"
    monkeypatch.setenv("IMGCURATE_HOME", str(home))
    monkeypatch.setenv("IMGCURATE_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user" / ".cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads its cache location once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


@pytest.mark.parametrize(("scorer_class", "make_state"), [(AestheticScorer, aesthetic_state), (NSFWScorer, nsfw_state)])
def test_missing_head_weights_say_what_to_do_and_home_is_searched(empty_caches, scorer_class, make_state):
    home = empty_caches / "imgcurate-home"
    with pytest.raises(WeightsNotFoundError) as err:
        scorer_class()
    message = str(err.value)
    weights = scorer_class.WEIGHTS
    assert weights.filename in message and str(home) in message and weights.url in message
    assert "IMGCURATE_HOME" in message
    home.mkdir()
    path = save_state(make_state(), home / weights.filename)
    scorer = scorer_class(device="cpu")
    assert scorer.path == str(path)
    assert scorer.describe()["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(WeightsNotFoundError, match="elsewhere.pth"):
        scorer_class(weights=empty_caches / "elsewhere.pth")


def test_missing_clip_weights_say_how_to_provide_them(empty_caches):
    embedder = CLIPImageEmbedder("ViT-L-14", "openai", device="cpu")
    assert not embedder.weights_available()
    with pytest.raises(WeightsNotFoundError) as err:
        embedder.check_weights()
    message = str(err.value)
    assert "ViT-L-14" in message and "openai" in message
    assert "create_model('ViT-L-14', pretrained='openai')" in message and "--pretrained" in message
    CLIPImageEmbedder(TINY_MODEL, pretrained=None, device="cpu").check_weights()  # random weights need no file


def test_clip_weights_in_the_hugging_face_cache_are_found(empty_caches):
    """open_clip fetches openai ViT-L-14 from the Hugging Face hub; a copy in the hub's cache layout counts."""
    from open_clip.pretrained import get_pretrained_cfg

    record = get_pretrained_cfg("ViT-L-14", "openai")
    url_cache = empty_caches / "user" / ".cache" / "clip"
    url_cache.mkdir(parents=True)
    (url_cache / Path(record["url"]).name).write_bytes(b"weights")  # open_clip never reads this while the hub is there
    assert not CLIPImageEmbedder("ViT-L-14", "openai", device="cpu").weights_available()
    repo = record["hf_hub"].strip("/")
    cache = empty_caches / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    snapshot = cache / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    embedder = CLIPImageEmbedder("ViT-L-14", "openai", device="cpu")
    assert embedder.weights_available()
    embedder.check_weights()
    # the manifest records which file the tag stood for
    assert embedder.describe()["weights_sha256"] == hashlib.sha256(b"weights").hexdigest()


def test_clip_checkpoint_file_is_hashed(tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model(TINY_MODEL).state_dict(), checkpoint)
    embedder = CLIPImageEmbedder(TINY_MODEL, pretrained=str(checkpoint), device="cpu")
    embedder.check_weights()
    described = embedder.describe()
    assert described["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert described["random_weights"] is False
    with pytest.raises(ValueError, match="neither a file nor a known open_clip tag"):
        CLIPImageEmbedder(TINY_MODEL, pretrained=str(tmp_path / "missing.pt"))


# -- text tower and where the model runs ----------------------------------------------------------

def test_text_embeddings_are_open_clips_own(tmp_path):
    """The text tower of a saved checkpoint gives open_clip's encode_text(tokenizer(caption)), normalised."""
    reference = open_clip.create_model(TINY_MODEL, pretrained=None)
    for parameter in reference.parameters():  # weights unlike the seeded random model, so the checkpoint matters
        torch.nn.init.normal_(parameter, std=0.05)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), checkpoint)
    captions = ["a photo of a dog", "", "Ünïcödé ✓ 漢字", "word " * 200]  # empty, non-ASCII, past the context length
    clip = CLIPModel(TINY_MODEL, pretrained=str(checkpoint), device="cpu")
    ours = clip.embed_text(captions)
    tokens = open_clip.get_tokenizer(TINY_MODEL)(captions)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(reference.eval().encode_text(tokens), dim=-1).numpy()
    assert ours.dtype == np.float32 and ours.shape == (4, clip.dim)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert clip.tokenize(captions).shape == (4, 77)
    assert clip.embed_text([]).shape == (0, clip.dim)


def test_device_precision_and_batch_size_are_chosen_where_the_model_runs(monkeypatch):
    """Left unset, they travel as None and are decided by the machine that runs the model."""
    import imgcurate.common.backend as backend

    clip = CLIPModel(TINY_MODEL, pretrained=None)
    scorer = AestheticScorer("random")
    shipped = pickle.loads(pickle.dumps(clip))
    assert (shipped.device, shipped.precision, shipped.batch_size) == (None, None, None)
    assert clip.describe()["device"] == "auto" and scorer.describe()["device"] == "auto"
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    assert shipped.runtime() == backend.Runtime("cpu", "fp32", 32)
    monkeypatch.setattr(backend, "cuda_available", lambda: True)  # the same object on a GPU worker
    assert shipped.runtime() == backend.Runtime("cuda", "bf16", 256)
    explicit = CLIPModel(TINY_MODEL, pretrained=None, device="cpu", precision="fp32", batch_size=8)
    assert explicit.runtime() == backend.Runtime("cpu", "fp32", 8)  # what the user asked for is kept everywhere
    with pytest.raises(ValueError, match="precision must be one of"):
        CLIPModel(TINY_MODEL, pretrained=None, precision="int8")
    with pytest.raises(ValueError, match="batch_size"):
        CLIPModel(TINY_MODEL, pretrained=None, batch_size=0)


def test_random_weights_are_announced_once_per_model(caplog, monkeypatch):
    from imgcurate.models import weights

    monkeypatch.setattr(weights, "_RANDOM_ANNOUNCED", set())
    with caplog.at_level(logging.WARNING, logger="imgcurate"):
        for _ in range(2):
            CLIPImageEmbedder(TINY_MODEL, "random")
            AestheticScorer("random")
            NSFWScorer("random")
    said = [r.getMessage() for r in caplog.records if "RANDOM" in r.getMessage()]
    assert said == [f"CLIPImageEmbedder({TINY_MODEL}) has RANDOM weights: its embeddings mean nothing",
                    "AestheticScorer uses RANDOM weights: its scores mean nothing",
                    "NSFWScorer uses RANDOM weights: its scores mean nothing"]
