"""imgcurate.embed on WebDatasets of the real photos: the same embeddings as open_clip's own path,
failure rows under each policy, fused head scores, column types, and what the writer keeps."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from imgcurate.dataframe import embed, score_aesthetic, score_nsfw
from imgcurate.common.errors import SampleError
from imgcurate.io.reader import read_webdataset
from imgcurate.io.writer import write_webdataset
from imgcurate.models import TINY_MODEL, AestheticScorer, CLIPImageEmbedder, NSFWScorer
from imgcurate.models.clip import _load_model
from imgcurate.models.heads import _load_head

from conftest import aesthetic_reference, aesthetic_state, nsfw_reference, nsfw_state, save_state, write_tar

MIN_COSINE = 0.99
DECODE_FAILURES = {"trunc": "decode_error", "rand": "decode_error", "empty": "decode_error", "textonly": "no_image"}


@pytest.fixture(scope="module")
def tiny() -> CLIPImageEmbedder:
    return CLIPImageEmbedder(TINY_MODEL, pretrained=None, device="cpu")


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Scorers on weight files in LAION's layout, with the values they hold."""
    directory = tmp_path_factory.mktemp("heads")
    aesthetic, nsfw = aesthetic_state(seed=1), nsfw_state(seed=2)
    return {
        "aesthetic": AestheticScorer(weights=save_state(aesthetic, directory / "aesthetic.pth"), device="cpu"),
        "nsfw": NSFWScorer(weights=save_state(nsfw, directory / "nsfw.pth"), device="cpu"),
        "aesthetic_state": aesthetic,
        "nsfw_state": nsfw,
    }


def vectors(column: pd.Series) -> np.ndarray:
    """An embedding column (no nulls) as a float32 matrix."""
    return np.array(column.tolist(), dtype=np.float32)


def open_clip_embeddings(model, preprocess, images: list[bytes]) -> np.ndarray:
    """open_clip's own path: its preprocess on a PIL image, encode_image, L2-normalised."""
    batch = torch.stack([preprocess(Image.open(io.BytesIO(data))) for data in images])
    with torch.inference_mode():
        features = model.eval().encode_image(batch)
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def assert_same_embeddings(ours: np.ndarray, reference: np.ndarray) -> None:
    cosine = (ours * reference).sum(axis=1)
    assert cosine.min() >= MIN_COSINE, cosine
    # Random-weight embeddings of different photos are also close (up to 0.999 for the tiny model):
    # the per-image match must hold after removing what all photos share, and pick the right photo.
    centre = reference.mean(axis=0)
    a, b = ours - centre, reference - centre
    centred = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert centred.min() >= MIN_COSINE, centred
    assert ((ours @ reference.T).argmax(axis=1) == np.arange(len(ours))).all()


def test_tiny_model_matches_open_clip_with_and_without_image_bytes(photo_dataset, tiny):
    directory, samples = photo_dataset
    frames = {with_images: embed(read_webdataset(directory, with_images=with_images), tiny).compute()
              for with_images in (True, False)}
    for frame in frames.values():
        assert frame.key.tolist() == [s["key"] for s in samples] and frame.error.isna().all()
    ours = vectors(frames[True].embedding)
    assert np.array_equal(ours, vectors(frames[False].embedding))  # bytes from the column or by range: same pixels
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
    model.visual.load_state_dict(tiny.model("cpu").visual.state_dict())  # the same random weights on both sides
    reference = open_clip_embeddings(model, preprocess, [s["image"] for s in samples])
    assert_same_embeddings(ours, reference)


@pytest.mark.slow
def test_standard_config_from_a_checkpoint_file_matches_open_clip(tmp_path, photo_dataset):
    directory, samples = photo_dataset
    checkpoint = tmp_path / "vit-b-32-random.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)  # random init, saved as a local checkpoint
    embedder = CLIPImageEmbedder("ViT-B-32", pretrained=str(checkpoint), device="cpu")
    assert embedder.describe()["open_clip_config"] == "ViT-B-32" and embedder.preprocess["size"] == 224
    frame = embed(read_webdataset(directory), embedder).compute()
    ours = vectors(frame.embedding)
    assert ours.shape == (len(samples), 512)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(checkpoint))
    reference = open_clip_embeddings(model, preprocess, [s["image"] for s in samples])
    assert_same_embeddings(ours, reference)


# -- failures -----------------------------------------------------------------------------------

@pytest.fixture
def broken_dataset(tmp_path, photos) -> Path:
    """Two shards: good photos among a truncated JPEG, random bytes, an empty image and a text-only
    sample; the second shard ends inside its last sample's image."""
    good = photos[0].read_bytes()
    write_tar(tmp_path / "00000.tar", [
        ("a.jpg", good), ("a.txt", b"a"),
        ("trunc.jpg", good[: len(good) // 2]), ("trunc.txt", b"cut in half"),
        ("rand.jpg", np.random.default_rng(0).bytes(4000)),
        ("empty.jpg", b""),
        ("textonly.txt", b"a caption and no image"),
        ("b.jpg", photos[1].read_bytes()),
    ])
    shard = write_tar(tmp_path / "00001.tar", [("c.jpg", photos[2].read_bytes()), ("cut.txt", b"c"),
                                              ("cut.jpg", photos[3].read_bytes())])
    data = shard.read_bytes()
    cut_at = data.index(b"cut.jpg") + 512 + 1000  # inside cut.jpg's data
    shard.write_bytes(data[:cut_at])
    return tmp_path


@pytest.mark.parametrize("with_images", [True, False])
def test_failures_become_rows_with_null_embedding_and_scores(broken_dataset, tiny, heads, with_images):
    source = read_webdataset(broken_dataset, with_images=with_images)
    read = source.compute().set_index("key")
    frame = embed(source, tiny, aesthetic=heads["aesthetic"], nsfw=heads["nsfw"]).compute()
    by_key = frame.set_index("key")
    for key, reason in DECODE_FAILURES.items():
        row = by_key.loc[key]
        assert row.error == reason, key
        if reason == "no_image":
            assert pd.isna(row.error_member)
        else:
            assert row.error_member == f"{key}.jpg"
        assert isinstance(row.error_detail, str) and row.error_detail
        assert pd.isna(row.embedding) and pd.isna(row.aesthetic_score) and pd.isna(row.nsfw_score)
    ok = frame[frame.error.isna()]
    assert ok.key.tolist() == ["a", "b", "c"]
    assert ok.embedding.notna().all() and ok.aesthetic_score.notna().all() and ok.nsfw_score.notna().all()
    # rows that failed when the shard was read are passed through as they were
    read_failures = frame[frame.key == "cut"]
    assert sorted(read_failures.error) == ["truncated_member", "truncated_sample"]
    for _, row in read_failures.iterrows():
        before = read[(read.index == "cut") & (read.error == row.error)].iloc[0]
        assert row.error_detail == before.error_detail and row.error_member == before.error_member
        assert pd.isna(row.embedding) and pd.isna(row.aesthetic_score)
    assert len(frame) == len(read)


def test_failure_policies(broken_dataset, tiny):
    source = read_webdataset(broken_dataset)
    skipped = embed(source, tiny, on_error="skip").compute()
    assert skipped.key.tolist() == ["a", "b", "c", "cut", "cut"]  # decode failures gone, read failures kept
    assert skipped.embedding.notna().tolist() == [True, True, True, False, False]
    with pytest.raises(SampleError, match="decode_error|no_image"):
        embed(source, tiny, on_error="raise").compute()
    with pytest.raises(ValueError, match="on_error"):
        embed(source, tiny, on_error="ignore")


# -- scores, types, meta --------------------------------------------------------------------------

def test_fused_scores_equal_separate_scoring_and_numpy(photo_dataset, tiny, heads):
    directory, _ = photo_dataset
    source = read_webdataset(directory)
    fused = embed(source, tiny, aesthetic=heads["aesthetic"], nsfw=heads["nsfw"]).compute()
    separate = score_nsfw(score_aesthetic(embed(source, tiny), heads["aesthetic"]), heads["nsfw"]).compute()
    matrix = vectors(fused.embedding)
    assert np.array_equal(matrix, vectors(separate.embedding))
    for column, state, reference in (("aesthetic_score", heads["aesthetic_state"], aesthetic_reference),
                                     ("nsfw_score", heads["nsfw_state"], nsfw_reference)):
        scores = fused[column].to_numpy(dtype=np.float32)
        np.testing.assert_allclose(scores, separate[column].to_numpy(dtype=np.float32), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(scores, reference(state, matrix), rtol=1e-5, atol=1e-5)


def test_embedding_column_type_and_meta_without_loading_models(photo_dataset, tiny, heads):
    directory, _ = photo_dataset
    source = read_webdataset(directory, with_images=False)
    loads = (_load_model.cache_info(), _load_head.cache_info())
    lazy = embed(source, tiny, aesthetic=heads["aesthetic"], nsfw=heads["nsfw"])
    assert (_load_model.cache_info(), _load_head.cache_info()) == loads  # meta came from an empty partition
    assert lazy._meta.dtypes["embedding"].pyarrow_dtype == pa.list_(pa.float32(), 768)
    assert lazy._meta.dtypes["aesthetic_score"].pyarrow_dtype == pa.float32()
    frame = lazy.compute()
    assert frame.dtypes.to_dict() == lazy._meta.dtypes.to_dict()
    np.testing.assert_allclose(np.linalg.norm(vectors(frame.embedding), axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="768"):  # a 512-wide model with LAION's heads fails when the call is made
        embed(source, CLIPImageEmbedder("ViT-B-32", "openai", device="cpu"), aesthetic=heads["aesthetic"])


def test_written_parquet_has_vectors_and_scores_and_sample_json_only_scores(tmp_path, photo_dataset, tiny, heads):
    directory, samples = photo_dataset
    frame = embed(read_webdataset(directory), tiny, aesthetic=heads["aesthetic"], nsfw=heads["nsfw"])
    expected = frame.compute().set_index("key")
    out = tmp_path / "out"
    write_webdataset(frame, str(out), images_per_tar=12)
    table = pq.read_table(sorted(out.glob("[0-9]*.parquet")))  # one per shard, beside _metadata and _failures
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 768)
    assert table.column("key").to_pylist() == [s["key"] for s in samples]
    written = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(written, vectors(expected.embedding))
    for column in ("aesthetic_score", "nsfw_score"):
        assert table.column(column).to_pylist() == pytest.approx(expected[column].tolist(), rel=1e-6)
    docs = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    docs[member.name[: -len(".json")]] = json.loads(tar.extractfile(member).read())
    assert sorted(docs) == sorted(s["key"] for s in samples)
    for key, doc in docs.items():
        assert "embedding" not in doc
        assert doc["aesthetic_score"] == pytest.approx(float(expected.loc[key, "aesthetic_score"]), rel=1e-6)
        assert doc["nsfw_score"] == pytest.approx(float(expected.loc[key, "nsfw_score"]), rel=1e-6)


# -- GPU ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_with_nvjpeg_matches_cpu(photo_dataset, tiny):
    from imgcurate.ops.decode import Preprocess, decode_batch, decode_batch_cuda

    directory, samples = photo_dataset
    prep = Preprocess.from_open_clip(tiny.preprocess)
    jpegs = [s["image"] for s in samples if s["ext"] == "jpg"]
    on_gpu = decode_batch_cuda(jpegs, prep, "cuda")
    on_cpu = decode_batch(jpegs, prep)
    for gpu_pixels, cpu_pixels in zip(on_gpu, on_cpu):
        assert gpu_pixels.is_cuda and gpu_pixels.dtype == torch.uint8 and tuple(gpu_pixels.shape) == cpu_pixels.shape
        assert np.abs(gpu_pixels.cpu().numpy().astype(float) - cpu_pixels).mean() < 4.0
    cuda = CLIPImageEmbedder(TINY_MODEL, pretrained=None, device="cuda", precision="bf16")
    source = read_webdataset(directory)
    ours = vectors(embed(source, cuda).compute().embedding)
    cpu = vectors(embed(source, tiny).compute().embedding)
    assert_same_embeddings(ours, cpu)
