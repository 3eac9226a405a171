"""Embedding export, the index and search on the real photos (imgcurate's tiny model with random weights).

The exported layout is read back here the way clip-retrieval's tools read it (embedding-reader's
file listing and header parsing, clip-retrieval's metadata provider), reimplemented from their
code, since neither installs beside pandas 3.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import imgcurate
from imgcurate.app.cli import main
from imgcurate.common import columns as C
from imgcurate.models import CLIPModel
from imgcurate.retrieval import build_index, export_embeddings, open_index, search, write_matches

from conftest import REPO, build_photo_dataset

TINY = "imgcurate-tiny-vit"


@pytest.fixture(scope="module")
def model():
    return CLIPModel(TINY, pretrained="random", device="cpu")


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory, photos, model):
    """(index directory, samples, embedded pandas frame) for the 30 photos in 3 shards."""
    base = tmp_path_factory.mktemp("search")
    samples = build_photo_dataset(base / "wds", photos)
    with dask.config.set(scheduler="threads"):
        df = imgcurate.embed(imgcurate.read_webdataset(str(base / "wds"), with_images=False), model)
        result = export_embeddings(df, str(base / "idx"), model_id=model.model_id)
        frame = df.compute()
    assert result.count == 30 and result.dim == model.dim and result.model_id == model.model_id
    build_index(str(base / "idx"))
    return base / "idx", samples, frame


# -- the layout, read as embedding-reader and clip-retrieval read it --------------------------------


def embedding_reader_headers(folder: Path) -> list[tuple[str, int, int, str, int]]:
    """embedding-reader's NumpyReader: files globbed as **/*.npy and sorted, shape and dtype parsed from the
    header's first line with its regular expressions, empty files skipped."""
    rows = []
    for path in sorted(str(p) for p in folder.glob("**/*.npy")):
        with open(path, "rb") as f:
            first_line = f.read(300).split(b"\n")[0]
        shape = re.search(r"'shape': \(([0-9]+), ([0-9]+)\)", str(first_line))
        dtype = re.search(r"'descr': '([<f0-9]+)'", str(first_line)).group(1)
        count, dim = int(shape.group(1)), int(shape.group(2))
        if count:
            rows.append((path, count, dim, dtype, len(first_line) + 1))
    return rows


def read_like_embedding_reader(folder: Path) -> np.ndarray:
    parts = []
    for path, count, dim, dtype, offset in embedding_reader_headers(folder):
        with open(path, "rb") as f:
            f.seek(offset)
            parts.append(np.frombuffer(f.read(count * dim * np.dtype(dtype).itemsize), dtype=dtype).reshape(count, dim))
    return np.concatenate(parts)


def read_metadata_like_clip_back(folder: Path) -> pd.DataFrame:
    """clip-retrieval's ParquetMetadataProvider: every metadata/*.parquet in sorted order, concatenated."""
    return pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)


def test_export_is_read_back_by_clip_retrieval_conventions(photo_index):
    directory, samples, frame = photo_index
    names = sorted(p.name for p in (directory / "img_emb").iterdir())
    assert names == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]  # 3 partitions: int(log10(3)) + 1 = 1 digit
    assert sorted(p.name for p in (directory / "metadata").iterdir()) == ["metadata_0.parquet", "metadata_1.parquet",
                                                                          "metadata_2.parquet"]
    assert not (directory / "text_emb").exists()  # no text embeddings in the frame
    headers = embedding_reader_headers(directory / "img_emb")
    assert [h[3] for h in headers] == ["<f2"] * 3 and {h[2] for h in headers} == {768}
    vectors = read_like_embedding_reader(directory / "img_emb")
    expected = np.stack(frame[C.EMBEDDING].tolist()).astype(np.float16)
    np.testing.assert_array_equal(vectors, expected)
    assert np.array_equal(vectors, np.concatenate([np.load(h[0]) for h in headers]))  # and as numpy loads them
    metadata = read_metadata_like_clip_back(directory / "metadata")
    assert list(metadata.columns[:8]) == ["image_path", "caption", "url", "key", "source_shard", "source_index",
                                          "image_ext", "image_nbytes"]
    assert metadata["image_path"].tolist() == [s["key"] for s in samples] == metadata["key"].tolist()
    assert metadata["caption"].tolist() == [s["caption"] for s in samples]
    assert metadata["source_index"].tolist() == frame["source_index"].tolist()
    assert {"width", "height", "license", "info"} <= set(metadata.columns)
    assert not {C.EMBEDDING, C.IMAGE, C.IMAGE_OFFSET, "extra_members"} & set(metadata.columns)
    assert json.loads(metadata["info"][0]) == samples[0]["json"]["info"]  # nested JSON kept as JSON text
    info = json.loads((directory / "embeddings.json").read_text())
    assert info["count"] == 30 and info["model_id"] == f"{TINY}/random" and info["dtype"] == "float16"


def synthetic_frame(rows_per_partition: list[int], dim: int = 16, seed: int = 0, text: bool = False):
    """A Dask frame with unit embeddings (and text embeddings), one partition per entry (0 = empty)."""
    import dask.dataframe as dd

    rng = np.random.default_rng(seed)
    parts, number = [], 0
    for rows in rows_per_partition:
        vectors = rng.standard_normal((rows, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        data = {C.KEY: pa.array([f"k{number + i:05d}" for i in range(rows)], pa.string()),
                C.SOURCE_SHARD: pa.array([f"shard{len(parts)}.tar"] * rows, pa.string()),
                C.SOURCE_INDEX: pa.array(range(rows), pa.int64()),
                C.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)}
        if text:
            data[C.TEXT_EMBEDDING] = pa.FixedSizeListArray.from_arrays(pa.array(-vectors.reshape(-1)), dim)
        parts.append(pa.table(data).to_pandas(types_mapper=pd.ArrowDtype))
        number += rows
    return dd.from_map(lambda part: part, parts, meta=parts[0].iloc[:0], divisions=None)


def test_file_numbers_sort_as_strings_and_empty_partitions_write_nothing(tmp_path):
    sizes = [3, 0, 2, 5, 0, 1, 4, 2, 0, 3, 1, 2]  # 12 partitions: two-digit numbers
    with dask.config.set(scheduler="threads"):
        result = export_embeddings(synthetic_frame(sizes, text=True), str(tmp_path / "e"), dtype="float32")
    names = sorted(p.name for p in (tmp_path / "e" / "img_emb").iterdir())
    assert names == [f"img_emb_{n:02d}.npy" for n, size in enumerate(sizes) if size]
    assert sorted(p.name for p in (tmp_path / "e" / "text_emb").iterdir()) == [n.replace("img", "text") for n in names]
    keys = read_metadata_like_clip_back(tmp_path / "e" / "metadata")["image_path"].tolist()
    assert keys == [f"k{i:05d}" for i in range(sum(sizes))]  # string order of the names is the frame's order
    images = read_like_embedding_reader(tmp_path / "e" / "img_emb")
    assert images.dtype == np.float32 and len(images) == result.count == sum(sizes)
    np.testing.assert_array_equal(read_like_embedding_reader(tmp_path / "e" / "text_emb"), -images)
    with pytest.raises(FileExistsError, match="already holds an export"):
        export_embeddings(synthetic_frame(sizes), str(tmp_path / "e"))


# -- search ----------------------------------------------------------------------------------------


def test_flat_search_equals_brute_force_on_the_exported_arrays(photo_index):
    directory, _, _ = photo_index
    index = open_index(str(directory))
    assert index.kind == "flat" and index.count == 30
    vectors = np.concatenate([np.load(p) for p in sorted((directory / "img_emb").glob("*.npy"))]).astype(np.float32)
    queries = np.random.default_rng(1).standard_normal((5, 768)).astype(np.float32)
    for query in queries:
        results = search(index, embeddings=query, k=7)
        brute = vectors @ query
        order = np.argsort(-brute, kind="stable")[:7]
        assert results["index_id"].tolist() == order.tolist()
        np.testing.assert_allclose(results["similarity"].to_numpy(), brute[order], rtol=1e-5, atol=1e-6)
        assert results.columns[:5].tolist() == ["similarity", "key", "source_shard", "source_index", "caption"]


def test_a_query_by_one_of_the_datasets_images_returns_it_first(photo_index, model):
    directory, samples, _ = photo_index
    for sample in samples[::7]:
        results = search(str(directory), images=[sample["image"]], k=3)
        assert results["key"].iloc[0] == sample["key"]
        assert results["similarity"].iloc[0] == pytest.approx(1.0, abs=2e-3)  # float16 export
        assert results["similarity"].is_monotonic_decreasing


def test_several_images_mean_or_union(photo_index):
    directory, samples, _ = photo_index
    images = [samples[0]["image"], samples[10]["image"]]
    union = search(str(directory), images=images, k=4, combine="union")
    assert set(union["key"].iloc[:2]) == {samples[0]["key"], samples[10]["key"]}
    assert sorted(union["query"].iloc[:2]) == [0, 1] and union["key"].is_unique
    mean = search(str(directory), images=images, k=4)
    assert len(mean) == 4 and "query" not in mean.columns


def test_text_query_uses_the_text_tower(photo_index, model):
    directory, _, _ = photo_index
    results = search(str(directory), text="a photo of a lake", k=5)
    expected = model.embed_text(["a photo of a lake"])[0]
    vectors = np.concatenate([np.load(p) for p in sorted((directory / "img_emb").glob("*.npy"))]).astype(np.float32)
    assert results["index_id"].tolist() == np.argsort(-(vectors @ expected), kind="stable")[:5].tolist()


def test_metadata_is_looked_up_by_row_group(tmp_path, monkeypatch):
    import imgcurate.retrieval.export as export

    monkeypatch.setattr(export, "METADATA_ROW_GROUP", 4)  # many row groups per file
    with dask.config.set(scheduler="threads"):
        export_embeddings(synthetic_frame([13, 9, 11]), str(tmp_path / "e"))
    index = build_index(str(tmp_path / "e"))
    ids = np.array([30, 2, 14, 13, 0, 21, 5])
    assert index.metadata(ids).column("key").to_pylist() == [f"k{i:05d}" for i in ids]


# -- range search: exact on every index kind ---------------------------------------------------------


def clustered(n: int, dim: int, seed: int, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)) * rng.uniform(0.2, 0.9, (n, 1))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered_export(tmp_path_factory):
    import dask.dataframe as dd

    base = tmp_path_factory.mktemp("clustered")
    vectors = clustered(4000, 32, seed=0)
    parts = [pd.DataFrame({C.KEY: [f"v{i}" for i in range(start, start + 500)],
                           C.EMBEDDING: pd.array(list(vectors[start : start + 500]), dtype=pd.ArrowDtype(pa.list_(pa.float32(), 32)))})
             for start in range(0, 4000, 500)]
    with dask.config.set(scheduler="threads"):
        export_embeddings(dd.from_map(lambda p: p, parts, meta=parts[0].iloc[:0]), str(base / "e"), dtype="float32",
                          model_id="test/vectors")
    return base / "e", vectors


@pytest.mark.parametrize("kind, params", [("flat", {}), ("ivfpq", {"nlist": 32, "m": 8, "nprobe": 1, "train_size": 4000}),
                                          ("hnsw", {"M": 8, "ef_search": 16})])
def test_range_search_is_exact_on_every_kind(clustered_export, tmp_path, kind, params):
    directory, vectors = clustered_export
    index = build_index(str(directory), kind=kind, params=params, output_dir=str(tmp_path / kind))
    queries = np.concatenate([vectors[:20] + 0.05, clustered(20, 32, seed=5)]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    brute = queries @ vectors.T
    for threshold in (0.95, 0.8, 0.5):
        found = index.within(queries, threshold)
        for q, (ids, scores) in enumerate(found):
            sure = set(np.flatnonzero(brute[q] >= threshold + 1e-5))
            possible = set(np.flatnonzero(brute[q] >= threshold - 1e-5))
            assert sure <= set(ids.tolist()) <= possible, (kind, threshold, q)
            assert (scores >= threshold).all() and (np.diff(scores) <= 0).all()
    if kind == "ivfpq":
        plans = index.range_plan(queries, 0.95)
        # tight thresholds probe only the lists whose cone reaches the threshold; loose ones scan
        assert all(plan is not None and len(plan) < 32 for plan in plans[:20])
        assert all(plan is None for plan in index.range_plan(queries, 0.0))
        # faiss's own range search on the same index (compressed distances, nprobe lists) misses true matches
        index.faiss.nprobe = 1
        limits, _, ids = index.faiss.range_search(queries, 0.8)
        found = sum(len(set(ids[limits[q] : limits[q + 1]].tolist()) & set(np.flatnonzero(brute[q] >= 0.8)))
                    for q in range(len(queries)))
        assert found < (brute >= 0.8).sum()


def test_ivfpq_top_k_recall_against_brute_force(clustered_export, tmp_path):
    directory, vectors = clustered_export
    index = build_index(str(directory), kind="ivfpq", params={"nlist": 32, "m": 8, "nprobe": 8, "train_size": 4000},
                        output_dir=str(tmp_path / "ivf"))
    queries = clustered(50, 32, seed=7)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(ids) & set(t)) / 10 for (ids, _), t in zip(index.knn(queries, 10), truth)])
    assert recall >= 0.9
    index.params["nprobe"] = 1  # one list holds fewer than the candidates asked for: faiss pads with -1
    for ids, scores in index.knn(queries[:5], 100):
        assert 0 < len(ids) <= 100 and ids.min() >= 0 and (np.diff(scores) <= 0).all()
    document = json.loads((tmp_path / "ivf" / "index.json").read_text())
    assert document["kind"] == "ivfpq" and document["faiss_description"] == "IVF32,PQ8x8"
    assert document["model_id"] == "test/vectors" and document["count"] == 4000 and document["dim"] == 32
    assert document["files"][0]["embeddings"].endswith("img_emb_0.npy")  # outside the index directory: absolute


# -- mark_similar ------------------------------------------------------------------------------------


def test_mark_similar_marks_what_is_close_to_an_evaluation_set(photo_index, tmp_path, model):
    directory, samples, frame = photo_index
    evaluation = [samples[i]["image"] for i in (1, 12, 25)]
    # the evaluation set's own index, made from its images
    pixels_index = tmp_path / "eval"
    from imgcurate.retrieval.query import embed_images

    vectors = embed_images(evaluation, model)
    parts = pd.DataFrame({C.KEY: ["e0", "e1", "e2"],
                          C.EMBEDDING: pd.array(list(vectors), dtype=pd.ArrowDtype(pa.list_(pa.float32(), 768)))})
    export_embeddings(parts, str(pixels_index), model_id=model.model_id)
    build_index(str(pixels_index))
    import dask.dataframe as dd

    frame = frame.reset_index(drop=True)
    df = dd.from_pandas(frame, npartitions=3, sort=False)
    threshold = 0.999
    marked = imgcurate.mark_similar(df, str(pixels_index), threshold).compute()
    stored = np.load(pixels_index / "img_emb" / "img_emb_0.npy").astype(np.float32)
    expected = (np.stack(frame[C.EMBEDDING].tolist()) @ stored.T).max(axis=1) >= threshold
    assert marked["similar"].tolist() == expected.tolist()
    assert {samples[i]["key"] for i in (1, 12, 25)} <= set(marked.loc[marked["similar"], "key"])
    by_array = imgcurate.mark_similar(df, vectors, threshold, column="near_eval").compute()
    assert by_array["near_eval"].sum() >= 3
    clean = marked[~marked["similar"]]
    assert not {samples[i]["key"] for i in (1, 12, 25)} & set(clean["key"])
    with pytest.raises(ValueError, match="dimension mismatch"):
        imgcurate.mark_similar(df, np.ones((2, 16), np.float32), 0.5)
    with pytest.raises(ValueError, match="not of"):
        imgcurate.mark_similar(df, str(pixels_index), 0.5, model_id="ViT-B-32/openai")


# -- the command line ----------------------------------------------------------------------------------


def test_cli_index_and_search_to_a_new_webdataset(tmp_path, photos, capsys):
    samples = build_photo_dataset(tmp_path / "wds", photos)
    idx = tmp_path / "idx"
    assert main(["index", str(tmp_path / "wds"), "--output", str(idx), "--model", TINY, "--pretrained", "random",
                 "--scheduler", "threads", "--no-progress"]) == 0
    assert "built a flat index" in capsys.readouterr().out
    query = [samples[4]["image"], samples[17]["image"]]
    images = []
    for n, data in enumerate(query):
        images.append(tmp_path / f"q{n}.{samples[[4, 17][n]]['ext']}")
        images[-1].write_bytes(data)
    args = ["search", str(idx), "--image", str(images[0]), "--image", str(images[1]), "--combine", "union",
            "--min-similarity", "0.98", "--scheduler", "threads", "--no-progress"]
    assert main(args + ["--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    keys = {r["key"] for r in records}
    assert {samples[4]["key"], samples[17]["key"]} <= keys and all(r["similarity"] >= 0.98 for r in records)
    out = tmp_path / "subset"
    assert main(args + ["--output", str(out), "--images-per-tar", "2", "--report", str(tmp_path / "page.html")]) == 0
    printed = capsys.readouterr().out
    assert "similarity" in printed and f"wrote {len(keys)} samples" in printed
    # the samples that did not match are neither dropped nor failed: the line says where they went
    assert f"read {len(samples)}, removed {len(samples) - len(keys)}, dropped 0, failed 0" in printed
    by_key = {s["key"]: s for s in samples}
    members = {}
    shard_sizes = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            shard_sizes.append(sum(1 for n in names if n.endswith((".jpg", ".png"))))
            for member in tar:
                if member.name.endswith((".jpg", ".png")):
                    members[member.name.split(".")[0]] = tar.extractfile(member).read()
    assert set(members) == keys
    assert all(members[k] == by_key[k]["image"] for k in keys)  # original bytes
    assert shard_sizes[:-1] == [2] * (len(shard_sizes) - 1) and 1 <= shard_sizes[-1] <= 2
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["search"]["query"]["min_similarity"] == 0.98
    assert manifest["search"]["query"]["images"] == [str(p) for p in images] and manifest["search"]["matches"] == len(keys)
    written = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("0*.parquet"))])
    assert (written["similarity"] >= 0.98).all()
    page = (tmp_path / "page.html").read_text()
    assert page.count("data:image/jpeg;base64,") == len(keys) and "similarity" in page and "RANDOM WEIGHTS" in page
    assert main(["search", str(idx), "--text", "a red car", "-k", "5"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["similarity", "key", "caption"] and len(table) == 6


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_queries_get_errors_that_name_the_problem(photo_index, tmp_path, capsys):
    directory, _, _ = photo_index
    with pytest.raises(ValueError, match="k=31 is larger than the index, which holds 30 vectors"):
        search(str(directory), text="x", k=31)
    with pytest.raises(ValueError, match="dimension mismatch: the index holds 768-d vectors, the queries are 512-d"):
        search(str(directory), embeddings=np.ones(512, np.float32))
    with pytest.raises(ValueError, match=r"query image .*broken.jpg cannot be decoded \(decode_error"):
        (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        search(str(directory), images=[str(tmp_path / "broken.jpg")])
    other = CLIPModel("ViT-L-14", pretrained="random")  # described only: never built
    with pytest.raises(ValueError, match="built with embeddings of .imgcurate-tiny-vit/random., but the query model is .ViT-L-14/random."):
        search(str(directory), text="x", model=other)
    with pytest.raises(ValueError, match="exactly one of"):
        search(str(directory), text="x", embeddings=np.ones(768))
    with pytest.raises(FileNotFoundError, match="no index in"):
        search(str(tmp_path), text="x")
    assert main(["search", str(directory), "--text", "x", "-k", "99"]) == 2
    assert "k=99 is larger than the index" in capsys.readouterr().err


def test_empty_index_is_refused(tmp_path):
    frame = pd.DataFrame({C.KEY: ["a", "b"], C.ERROR: ["decode_error", "decode_error"],
                          C.EMBEDDING: pd.array([None, None], dtype=pd.ArrowDtype(pa.list_(pa.float32(), 8)))})
    result = export_embeddings(frame, str(tmp_path / "e"))
    assert result.count == 0 and result.not_exported == 2
    with pytest.raises(ValueError, match="empty index: no embeddings in"):
        build_index(str(tmp_path / "e"))


def test_text_query_without_weights_offline_says_which_file(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("IMGCURATE_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user" / ".cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with dask.config.set(scheduler="threads"):
        export_embeddings(synthetic_frame([5], dim=512), str(tmp_path / "e"), model_id="ViT-B-32-quickgelu/openai")
    build_index(str(tmp_path / "e"))
    from imgcurate.common.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="CLIP weights for ViT-B-32-quickgelu pretrained='openai' are not on this machine"):
        search(str(tmp_path / "e"), text="a dog", k=2)
    assert len(search(str(tmp_path / "e"), embeddings=np.ones(512), k=2)) == 2  # embeddings need no model


def test_write_matches_refuses_results_without_sources(photo_index, tmp_path):
    directory, _, _ = photo_index
    results = search(str(directory), text="x", k=3)
    with pytest.raises(ValueError, match="no source_shard"):
        write_matches(results.drop(columns=["source_shard"]), str(tmp_path / "o"))


def test_search_is_the_function_whichever_module_was_imported_first():
    code = ("import imgcurate.retrieval.index, imgcurate; from imgcurate.retrieval import search; "
            "assert imgcurate.search is search and callable(imgcurate.search); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.gpu
def test_ivf_training_runs_on_the_gpu_with_faiss_gpu(clustered_export, tmp_path):
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("needs faiss's GPU build and a GPU")
    directory, vectors = clustered_export
    index = build_index(str(directory), kind="ivfpq", params={"nlist": 32, "m": 8, "nprobe": 32, "train_size": 4000},
                        output_dir=str(tmp_path / "gpu"))
    queries = clustered(20, 32, seed=9)
    for (ids, _), row in zip(index.within(queries, 0.8), queries @ vectors.T):
        assert set(ids.tolist()) >= set(np.flatnonzero(row >= 0.8 + 1e-5).tolist())


def test_cli_checks_query_images_and_outputs_before_any_work(photo_index, tmp_path, capsys, monkeypatch):
    """A missing query image, an output that would be refused, or an index directory that already holds
    an export fail before a model runs or a shard is read."""
    import imgcurate.retrieval as retrieval

    directory, _, _ = photo_index
    monkeypatch.setattr(retrieval, "search", lambda *a, **k: pytest.fail("the query ran"))
    monkeypatch.setattr(retrieval, "export_embeddings", lambda *a, **k: pytest.fail("shards were read"))
    assert main(["search", str(directory), "--image", str(tmp_path / "missing.jpg")]) == 2
    assert "--image" in (err := capsys.readouterr().err) and "missing.jpg': no such file" in err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("not imgcurate's")
    assert main(["search", str(directory), "--text", "x", "--output", str(taken)]) == 2
    assert "holds files imgcurate did not write (notes.txt)" in capsys.readouterr().err
    assert main(["search", str(directory), "--text", "x", "--output", str(tmp_path / "new"), "--images-per-tar", "0"]) == 2
    assert "images_per_tar must be a positive integer" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--output", str(directory), "--model", TINY, "--pretrained", "random"]) == 2
    assert "already holds an export" in capsys.readouterr().err


def test_cli_query_image_by_url(photo_index, tmp_path, capsys):
    """--image takes what the query reads (a path or an fsspec URL), and the manifest records its full URL
    (not a local path made of it)."""
    import fsspec

    directory, samples, _ = photo_index
    with fsspec.open("memory://queries/q.jpg", "wb") as f:
        f.write(samples[4]["image"])
    out = tmp_path / "subset"
    assert main(["search", str(directory), "--image", "memory://queries/q.jpg", "-k", "1", "--output", str(out),
                 "--scheduler", "threads", "--no-progress"]) == 0
    assert samples[4]["key"] in capsys.readouterr().out
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["search"]["query"]["images"] == ["memory:///queries/q.jpg"]
    assert main(["search", str(directory), "--image", "memory://queries/none.jpg"]) == 2
    assert "--image 'memory://queries/none.jpg': no such file" in capsys.readouterr().err
