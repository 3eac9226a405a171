"""Deduplication: hashing vs imagehash, the pHash near-duplicate search at scale, semantic dedup vs bare faiss.

* ``hash_images`` (read → fetch → draft-decode → pHash, in Dask) against ``imagehash.phash`` on the
  same images' bytes, already in memory, in a pool of as many threads as cores (Pillow releases the
  GIL, so both sides use every core).
* The near-duplicate search on random 64-bit hashes with planted pairs at distances 0–max_distance
  (10M hashes and 10k pairs in a full run) against one pass reading the same hashes from the same
  Parquet files; every planted pair must be found. The peak RSS of a fresh process running the
  search is recorded (the threaded scheduler: the whole search in one process).
* Semantic dedup of unit embeddings (1M × 768 in a full run: synthetic clusters with planted
  near-copies) against faiss alone doing the same work: spherical k-means with the same
  clusters, iterations, seed and training-set size, assignment of every vector to its centroid,
  then within each cluster an exact inner-product search of the cluster against itself.
* What cutting clusters larger than ``max_cluster_rows`` into chunks costs, against the same call
  with every cluster whole (the marks must be equal).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import Config, Dataset, Measure, compare, first_images, interleave, peak_rss_mb, settle, timed

NAME = "dedup"
MAX_DISTANCE = 4
HASHES_PER_SAMPLE = 1_562  # 6,400 samples (a full run) -> 10M hashes
EMBEDDINGS_PER_SAMPLE = 156  # -> 1M embeddings
DIM = 768
ROWS_PER_CLUSTER = 1000
KMEANS_ITER = 10
EPS = 0.01
CUT_CLUSTERS = 4  # the cut measure: ~25,000 rows a cluster...
CUT_ROWS = 5_000  # ... cut into chunks of at most ~5,000


# ---------------------------------------------------------------------------------------
# Data


def _write_parts(directory: Path, table, parts: int) -> None:
    import pyarrow.parquet as pq

    bounds = np.linspace(0, len(table), parts + 1).astype(int)
    for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(start, stop - start), directory / f"part-{number:04d}.parquet")


def _cached(directory: Path, spec: dict) -> bool:
    marker = directory / "_complete.json"
    return marker.exists() and json.loads(marker.read_text()) == spec


def hash_data(directory: Path, count: int, pairs: int, seed: int = 0) -> dict:
    """``count`` random pHashes (16 hex digits) in Parquet parts, ``pairs`` of them planted near
    an earlier one at 0..MAX_DISTANCE bits; returns the planted (earlier, later, distance) rows."""
    import pyarrow as pa

    spec = {"count": count, "pairs": pairs, "seed": seed, "max_distance": MAX_DISTANCE, "version": 1}
    if _cached(directory, spec):
        return json.loads((directory / "_planted.json").read_text())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**63, count, dtype=np.int64).view(np.uint64) | (rng.integers(0, 2, count).astype(np.uint64) << np.uint64(63))
    chosen = rng.choice(count, 2 * pairs, replace=False)
    earlier, later = np.sort(chosen.reshape(pairs, 2), axis=1).T
    distance = rng.integers(0, MAX_DISTANCE + 1, pairs)
    for row, (a, b, d) in enumerate(zip(earlier, later, distance)):
        flips = rng.choice(64, d, replace=False)
        values[b] = values[a] ^ np.bitwise_or.reduce(np.uint64(1) << flips.astype(np.uint64), initial=np.uint64(0))
    hexes = pa.array([f"{int(v):016x}" for v in values.tolist()])
    per_shard = 100_000
    table = pa.table({"phash": hexes, "source_shard": pa.array([f"shard-{i // per_shard:05d}.tar" for i in range(count)]),
                      "source_index": pa.array(np.arange(count) % per_shard)})
    _write_parts(directory, table, max(2, min(64, count // 200_000)))
    planted = {"earlier": earlier.tolist(), "later": later.tolist(), "distance": distance.tolist()}
    (directory / "_planted.json").write_text(json.dumps(planted))
    (directory / "_complete.json").write_text(json.dumps(spec))
    return planted


def embedding_data(directory: Path, count: int, seed: int = 0) -> int:
    """``count`` unit 768-d embeddings around ``count / ROWS_PER_CLUSTER`` centres, 1 % planted as
    near-copies of another; Parquet parts of a fixed-size-list column. Returns the planted count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = {"count": count, "seed": seed, "dim": DIM, "version": 1}
    planted = count // 100
    if _cached(directory, spec):
        return planted
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, count // ROWS_PER_CLUSTER), DIM)).astype(np.float32)
    parts = max(2, min(32, count // 50_000))
    bounds = np.linspace(0, count, parts + 1).astype(int)
    sources = rng.integers(0, count, planted)
    copies = rng.integers(0, count, planted)
    for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        local = np.random.default_rng([seed, number])
        block = centres[local.integers(0, len(centres), stop - start)] + local.normal(scale=1.0, size=(stop - start, DIM)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        np.save(directory / f"block-{number:04d}.npy", block)
    # near-copies: vector j becomes vector i plus a little noise (i, j anywhere)
    blocks = [np.load(directory / f"block-{n:04d}.npy", mmap_mode="r+") for n in range(parts)]
    for i, j in zip(sources, copies):
        bi, bj = (int(np.searchsorted(bounds, row, side="right") - 1) for row in (i, j))
        vector = blocks[bi][i - bounds[bi]] + rng.normal(scale=0.003, size=DIM).astype(np.float32)
        blocks[bj][j - bounds[bj]] = vector / np.linalg.norm(vector)
    for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        block = np.asarray(blocks[number])
        table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), DIM),
                          "source_shard": pa.array([f"shard-{number:05d}.tar"] * (stop - start)),
                          "source_index": pa.array(np.arange(stop - start))})
        pq.write_table(table, directory / f"part-{number:04d}.parquet")
    del blocks
    for path in directory.glob("block-*.npy"):
        path.unlink()
    (directory / "_complete.json").write_text(json.dumps(spec))
    return planted


# ---------------------------------------------------------------------------------------
# Measures


def measure_hashing(config: Config, dataset: Dataset) -> Measure:
    import imagehash
    from PIL import Image

    import imgcurate

    images = first_images(dataset, dataset.samples)
    threads = os.cpu_count() or 1

    def ours() -> float:
        df = imgcurate.read_webdataset(dataset.urls, with_images=False)
        return dataset.samples / timed(lambda: imgcurate.hash_images(df, "phash").compute(scheduler="threads"))

    def peer() -> float:
        with ThreadPoolExecutor(threads) as pool:
            return len(images) / timed(lambda: list(pool.map(lambda b: str(imagehash.phash(Image.open(io.BytesIO(b)))), images)))

    ours_runs, peer_runs = interleave(config.repeats, ours, peer, warm_up=True)
    return compare("hash_images (pHash) / imagehash.phash", "img/s", ours_runs, peer_runs,
                   f"imagehash.phash on the bytes in memory, {threads} threads", ">= 3", minimum=3.0,
                   note=f"{dataset.samples} JPEGs of 256-1600 px; ours reads them from the shards by byte range "
                        f"and decodes in JPEG draft mode")


SEARCH_CODE = """
import sys, dask, dask.dataframe as dd
sys.path.insert(0, {repo!r})
import imgcurate
with dask.config.set(scheduler="threads"):
    marked = imgcurate.mark_duplicates(dd.read_parquet({data!r}), "phash", max_distance={d})
    found = marked[marked.is_duplicate][["source_shard", "source_index", "phash_distance"]].compute()
print("FOUND", len(found))
"""


def measure_search(config: Config) -> tuple[Measure, dict]:
    import dask
    import dask.dataframe as dd

    import imgcurate

    count = config.samples * HASHES_PER_SAMPLE
    pairs = max(1, count // 1000)
    directory = config.data / f"phash-{count}"
    planted = hash_data(directory, count, pairs)
    data = str(directory / "part-*.parquet")
    repeats = min(config.repeats, 3)
    found: dict = {}

    def ours() -> float:
        with dask.config.set(scheduler="threads"):
            def search():
                marked = imgcurate.mark_duplicates(dd.read_parquet(data), "phash", max_distance=MAX_DISTANCE)
                found["rows"] = marked[marked.is_duplicate][["source_shard", "source_index", "phash_distance"]].compute()
            return timed(search)

    def peer() -> float:
        from imgcurate.ops.hashing import phash_to_int64

        with dask.config.set(scheduler="threads"):
            frame = dd.read_parquet(data, columns=["phash"])
            return timed(lambda: frame.map_partitions(lambda f: len(phash_to_int64(f.phash.array.__arrow_array__())[0]),
                                                      meta=(None, "int64")).sum().compute())

    ours_runs, peer_runs = interleave(repeats, ours, peer)
    rows = found["rows"]
    per_shard = 100_000
    got = set(zip(rows.source_shard.str.slice(6, 11).astype(int) * per_shard + rows.source_index, rows.phash_distance))
    duplicates = {row for row, _ in got}
    missed = [(b, d) for b, d in zip(planted["later"], planted["distance"]) if b not in duplicates]
    settle()
    rss = peak_rss_mb(SEARCH_CODE.format(repo=str(Path(__file__).resolve().parents[1]), data=data, d=MAX_DISTANCE))
    measure = compare("near-duplicate search (pHash) / one read of the hashes", "s", ours_runs, peer_runs,
                      "reading the hashes from Parquet and parsing them once", "report",
                      note=f"{count:,} hashes, {pairs:,} planted pairs at 0-{MAX_DISTANCE} bits: {pairs - len(missed):,} found; "
                           f"peak RSS {rss:.0f} MB (threads, one process)")
    return measure, {"hashes": count, "planted_pairs": pairs, "planted_found": pairs - len(missed),
                     "duplicates_found": len(duplicates), "search_peak_rss_mb": round(rss), "max_distance": MAX_DISTANCE,
                     "search_repeats": repeats}


def faiss_alone(vectors: np.ndarray, n_clusters: int, seed: int) -> int:
    """The peer: the same k-means, assignment, and an exact search of each cluster against itself."""
    import faiss

    kmeans = faiss.Kmeans(DIM, n_clusters, niter=KMEANS_ITER, seed=seed, spherical=True, max_points_per_centroid=256)
    kmeans.train(vectors)
    index = faiss.IndexFlatIP(DIM)
    index.add(kmeans.centroids)
    _, nearest = index.search(vectors, 1)
    nearest = nearest[:, 0]
    order = np.argsort(nearest, kind="stable")
    bounds = np.searchsorted(nearest[order], np.arange(n_clusters + 1))
    duplicates = 0
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop - start < 2:
            continue
        members = vectors[order[start:stop]]
        cluster = faiss.IndexFlatIP(DIM)
        cluster.add(members)
        similarity, _ = cluster.search(members, 2)
        duplicates += int((similarity[:, 1] >= 1 - EPS).sum())
    return duplicates


def measure_semantic(config: Config) -> tuple[Measure, dict]:
    import dask
    import dask.dataframe as dd
    import pyarrow.parquet as pq

    import imgcurate

    count = config.samples * EMBEDDINGS_PER_SAMPLE
    directory = config.data / f"embeddings-{count}"
    planted = embedding_data(directory, count)
    data = str(directory / "part-*.parquet")
    n_clusters = max(1, count // ROWS_PER_CLUSTER)
    repeats = min(config.repeats, 2)
    found: dict = {}

    def ours() -> float:
        def run():
            with dask.config.set(scheduler="threads"):
                marked = imgcurate.mark_duplicates(dd.read_parquet(data, dtype_backend="pyarrow"), "semantic", n_clusters=n_clusters, eps=EPS,
                                                   max_iter=KMEANS_ITER, seed=1)
                found["ours"] = int(marked.is_duplicate.sum().compute())
        return timed(run)

    def peer() -> float:
        started = time.perf_counter()  # from the same Parquet files: reading them is part of both sides
        vectors = np.concatenate([
            np.asarray(t.column("embedding").combine_chunks().flatten().to_numpy(), dtype=np.float32).reshape(-1, DIM)
            for t in (pq.read_table(p, columns=["embedding"]) for p in sorted(directory.glob("part-*.parquet")))])
        found["peer"] = faiss_alone(vectors, n_clusters, 1)
        return time.perf_counter() - started

    ours_runs, peer_runs = interleave(repeats, ours, peer)
    measure = compare("semantic dedup / faiss k-means + flat search", "s", ours_runs, peer_runs,
                      "faiss: read the Parquet, the same k-means, assignment, per-cluster flat search", "<= 2",
                      maximum=2.0,
                      note=f"{count:,} x {DIM} embeddings, {n_clusters} clusters, {KMEANS_ITER} k-means iterations, "
                           f"eps {EPS}; {planted:,} planted near-copies; ours marks {found['ours']:,} duplicates, faiss finds "
                           f"{found['peer']:,} samples with a near neighbour (both of a pair)")
    return measure, {"embeddings": count, "dim": DIM, "n_clusters": n_clusters, "kmeans_iterations": KMEANS_ITER,
                     "eps": EPS, "planted_near_copies": planted, "duplicates_ours": found["ours"],
                     "duplicates_faiss": found["peer"], "semantic_repeats": repeats}


def measure_semantic_cut(config: Config) -> tuple[Measure, dict]:
    """What cutting large clusters costs: the first two Parquet parts of the semantic data in 4
    clusters, marked whole (one task per cluster) and cut into chunks of ``CUT_ROWS`` rows compared
    pair by pair; the marks must be equal."""
    import dask
    import dask.dataframe as dd

    import imgcurate

    count = config.samples * EMBEDDINGS_PER_SAMPLE
    directory = config.data / f"embeddings-{count}"
    embedding_data(directory, count)
    data = [str(path) for path in sorted(directory.glob("part-*.parquet"))[:2]]
    repeats = min(config.repeats, 2)
    marks: dict = {}

    def mark(max_cluster_rows: int, side: str) -> float:
        def run():
            with dask.config.set(scheduler="threads"):
                frame = imgcurate.mark_duplicates(dd.read_parquet(data, dtype_backend="pyarrow"), "semantic",
                                                  n_clusters=CUT_CLUSTERS, eps=EPS, max_iter=KMEANS_ITER, seed=1,
                                                  max_cluster_rows=max_cluster_rows)
                marks[side] = frame[["is_duplicate", "duplicate_of", "cluster", "max_similarity"]].compute()
        return timed(run)

    ours_runs, peer_runs = interleave(repeats, lambda: mark(CUT_ROWS, "cut"), lambda: mark(10 ** 9, "whole"))
    cut, whole = marks["cut"], marks["whole"]
    rows = len(whole)
    same = bool((cut["is_duplicate"].to_numpy() == whole["is_duplicate"].to_numpy()).all()
                and cut["duplicate_of"].astype(str).equals(whole["duplicate_of"].astype(str))
                and (cut["max_similarity"].to_numpy() == whole["max_similarity"].to_numpy()).all())
    sizes = whole["cluster"].value_counts().sort_index().tolist()
    measure = compare("semantic dedup, clusters cut into chunks / whole clusters", "s", ours_runs, peer_runs,
                      "the same call with every cluster in one task", "report",
                      note=f"{rows:,} x {DIM} embeddings in {CUT_CLUSTERS} clusters of {sizes} rows, chunks of at most "
                           f"~{CUT_ROWS:,} rows; the same marks: {same}")
    if not same:
        raise AssertionError("cutting clusters into chunks changed the semantic marks")
    return measure, {"cut_rows": rows, "cut_cluster_sizes": sizes, "cut_max_cluster_rows": CUT_ROWS, "cut_same_marks": same}


def _jpeg(image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _edits() -> dict:
    """The edits the default max_distance is measured on: (name, bytes of the photo -> bytes of the edit)."""
    from PIL import Image, ImageEnhance, ImageFilter

    def open_(data):
        return Image.open(io.BytesIO(data))

    def scaled(data, factor):
        image = open_(data)
        return _jpeg(image.resize((max(1, image.width // factor), max(1, image.height // factor)), Image.LANCZOS))

    def png_to_jpeg(data):
        png = io.BytesIO()
        open_(data).save(png, format="PNG")
        return _jpeg(open_(png.getvalue()), 75)

    def cropped(data, percent):
        image = open_(data)
        dx, dy = image.width * percent // 200, image.height * percent // 200
        return _jpeg(image.crop((dx, dy, image.width - dx, image.height - dy)))

    return {
        "jpeg q70": lambda d: _jpeg(open_(d), 70), "jpeg q30": lambda d: _jpeg(open_(d), 30),
        "jpeg q10": lambda d: _jpeg(open_(d), 10), "downscale 1/2": lambda d: scaled(d, 2),
        "downscale 1/4": lambda d: scaled(d, 4), "downscale 1/8": lambda d: scaled(d, 8), "PNG -> JPEG": png_to_jpeg,
        "brightness +20%": lambda d: _jpeg(ImageEnhance.Brightness(open_(d)).enhance(1.2)),
        "contrast +30%": lambda d: _jpeg(ImageEnhance.Contrast(open_(d)).enhance(1.3)),
        "blur r=2": lambda d: _jpeg(open_(d).filter(ImageFilter.GaussianBlur(2))),
        "greyscale": lambda d: _jpeg(open_(d).convert("L")),
        "crop 5%": lambda d: cropped(d, 5), "crop 10%": lambda d: cropped(d, 10),
        "rotate 2 degrees": lambda d: _jpeg(open_(d).rotate(2, resample=Image.BICUBIC)),
    }


def phash_threshold_measurement() -> dict:
    """On the real photos: the pHash distance of each edit to its photo (histograms, imagehash at
    full size and ours with draft decoding), the smallest distance between two different photos, and
    how far our draft-decoded hashes are from imagehash's, on the photos and every edit."""
    import itertools

    import imagehash
    from PIL import Image

    from common import PHOTOS
    from imgcurate.ops.hashing import DRAFT_SIDE, phash_image

    photos = [p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))]

    def reference(data):
        return int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)

    def histogram(values):
        return np.bincount(values, minlength=33)[:33].tolist()

    edits, draft_bits = {}, []
    for name, edit in _edits().items():
        theirs, ours = [], []
        for data in photos:
            edited = edit(data)
            theirs.append(bin(reference(data) ^ reference(edited)).count("1"))
            ours.append(bin(phash_image(data) ^ phash_image(edited)).count("1"))
            draft_bits.append(bin(phash_image(edited) ^ reference(edited)).count("1"))
        edits[name] = {"imagehash": histogram(theirs), "ours": histogram(ours)}
    draft_bits += [bin(phash_image(d) ^ reference(d)).count("1") for d in photos]
    originals = [reference(d) for d in photos]
    ours_originals = [phash_image(d) for d in photos]
    return {"photos": len(photos), "edits": edits, "draft_side": DRAFT_SIDE,
            "different_photos_min_distance": {
                "imagehash": min(bin(a ^ b).count("1") for a, b in itertools.combinations(originals, 2)),
                "ours": min(bin(a ^ b).count("1") for a, b in itertools.combinations(ours_originals, 2))},
            "draft_vs_imagehash_bits": histogram(draft_bits),
            "draft_within_2_bits": round(float(np.mean(np.array(draft_bits) <= 2)), 4)}


def run(config: Config, dataset: Dataset) -> tuple[list[Measure], dict]:
    threshold = phash_threshold_measurement()
    measures = [measure_hashing(config, dataset)]
    search, search_parameters = measure_search(config)
    semantic, semantic_parameters = measure_semantic(config)
    cut, cut_parameters = measure_semantic_cut(config)
    measures += [search, semantic, cut]
    parameters = {"repeats": config.repeats, "samples": dataset.samples, "cpus": os.cpu_count(), **search_parameters,
                  **semantic_parameters, **cut_parameters, "scheduler": "threads", "phash_threshold": threshold}
    return measures, parameters


if __name__ == "__main__":
    raise SystemExit("run the benchmarks with: python benchmarks/run.py --only dedup")
