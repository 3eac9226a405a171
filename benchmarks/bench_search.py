"""Search: recall of the approximate index against exact search, query latency, build cost, export speed.

* **Synthetic vectors**: 1,000,000 clustered 768-d unit vectors (16,000 with ``--quick``; 10 per sample asked for, 2,000–20,000) in
  clip-retrieval's layout (``img_emb/img_emb_NNN.npy``, float16, 10,000 per file), generated once
  and cached: 1,000 topics, a cluster centre per 10 vectors around them, each vector at a cosine
  of 0.55–0.95 from its centre; the queries are drawn the same way.
* **Ours**: ``build_index(kind="ivfpq")`` at its default parameters (what ``kind="auto"`` builds
  above ``FLAT_MAX_VECTORS``), searched with its exact re-ranking. **Peer**: the index autofaiss's
  rules pick for the same data and memory budget (``HNSW32`` here), with ``efSearch`` chosen as
  autofaiss chooses it (the largest that keeps a single query under 10 ms), built from the same
  files one file at a time. autofaiss itself is not installed: it requires numpy < 2 and pandas < 3,
  so its rules are applied here as its ``get_optimal_index_keys_v2`` states them.
* **Real photos**: the benchmark's JPEGs embedded by imgcurate's tiny model (random weights), the
  same IVF-PQ index against exact search.
* **Export**: ``export_embeddings`` of an in-memory frame of 768-d embeddings against ``numpy.save``
  of the same float16 arrays, one file per partition.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, Config, Dataset, Measure, compare, first_images, interleave, timed

NAME = "search"
DIM = 768
FULL_VECTORS = 1_000_000
FILE_ROWS = 10_000
VECTORS_PER_CLUSTER = 10
TOPICS = 1_000
GENERATOR_VERSION = 1
AUTOFAISS_QUERY_MS = 10.0  # autofaiss's default max_index_query_time_ms
AUTOFAISS_MEMORY = "4G"  # clip-retrieval's default max_index_memory_usage (the same budget as ours)
BATCH = 100


# ---------------------------------------------------------------------------------------
# Data


def clustered_vectors(n: int, seed: int, clusters: int) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` centres (the same centres for every seed), float32."""
    fixed = np.random.default_rng(12345)
    topics = fixed.standard_normal((TOPICS, DIM)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    centres = topics[fixed.integers(0, TOPICS, clusters)] + fixed.standard_normal((clusters, DIM)).astype(np.float32) / math.sqrt(DIM)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    cosine = rng.uniform(0.55, 0.95, n).astype(np.float32)
    sigma = np.sqrt((1 / cosine**2 - 1) / DIM)
    points = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, DIM)).astype(np.float32) * sigma[:, None]
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def synthetic_set(config: Config, count: int) -> Path:
    """The synthetic vectors in clip-retrieval's layout (cached), with ``queries.npy`` beside them."""
    directory = config.data / f"vectors-{count}x{DIM}"
    spec = {"count": count, "dim": DIM, "file_rows": FILE_ROWS, "generator": GENERATOR_VERSION}
    marker = directory / "_complete.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "img_emb").mkdir(parents=True)
    files = -(-count // FILE_ROWS)
    width = int(math.log10(files)) + 1
    clusters = max(1, count // VECTORS_PER_CLUSTER)
    print(f"generating {count} clustered {DIM}-d vectors under {directory} ...", flush=True)
    for number in range(files):
        rows = min(FILE_ROWS, count - number * FILE_ROWS)
        vectors = clustered_vectors(rows, seed=1000 + number, clusters=clusters).astype(np.float16)
        np.save(directory / "img_emb" / f"img_emb_{str(number).zfill(width)}.npy", vectors)
    np.save(directory / "queries.npy", clustered_vectors(1000, seed=7, clusters=clusters))
    marker.write_text(json.dumps(spec))
    return directory


# ---------------------------------------------------------------------------------------
# autofaiss's choice


def autofaiss_index_key(count: int, dim: int, max_index_memory_usage: str = AUTOFAISS_MEMORY) -> str:
    """autofaiss's ``get_optimal_index_keys_v2`` (defaults: not memory-mapped, CPU), first choice."""
    from imgcurate.retrieval.index import parse_memory

    if count < 1000:
        return "Flat"
    if count < 10_000:
        return "HNSW15"
    m_hnsw = int(math.floor((parse_memory(max_index_memory_usage) / (4 * count) - dim) / 2))
    if m_hnsw >= 8:
        return f"HNSW{min(m_hnsw, 32)}"
    raise NotImplementedError("the benchmark's sizes only reach autofaiss's HNSW choice")


BUILD_PEER = """
import sys, time, faiss
from imgcurate.retrieval.vectors import VectorStore
store = VectorStore.open(sys.argv[1] + "/img_emb")
started = time.perf_counter()
index = faiss.index_factory(store.dim, sys.argv[2], faiss.METRIC_INNER_PRODUCT)
for _, chunk in store.chunks():
    index.add(chunk)
faiss.write_index(index, sys.argv[3])
print("BUILD_SECONDS", time.perf_counter() - started)
"""

BUILD_OURS = """
import sys, time
from imgcurate.retrieval import build_index
started = time.perf_counter()
build_index(sys.argv[1], kind="ivfpq", output_dir=sys.argv[3], model_id="synthetic")
print("BUILD_SECONDS", time.perf_counter() - started)
"""


def build_in_process(code: str, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS MB) of a fresh process building an index: VmHWM, as common.peak_rss_mb reads it."""
    wrapper = code + "\nprint('PEAK_RSS_KB', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    out = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    values = dict(line.split()[:2] for line in out.stdout.splitlines() if line.startswith(("BUILD_SECONDS", "PEAK_RSS_KB")))
    return float(values["BUILD_SECONDS"]), int(values["PEAK_RSS_KB"]) / 1024


def mean_query_ms(index, queries: np.ndarray, k: int = 40, limit_s: float = 2.0) -> float:
    """autofaiss's speed test: queries one at a time, mean milliseconds (stopping after ``limit_s``)."""
    started, count = time.perf_counter(), 0
    for query in queries:
        index.search(query[None, :], k)
        count += 1
        if time.perf_counter() - started > limit_s:
            break
    return (time.perf_counter() - started) / count * 1000


def autofaiss_ef_search(index, queries: np.ndarray) -> int:
    """The largest efSearch whose single queries stay under autofaiss's 10 ms (its binary search)."""
    low, high = 16, 2**14 - 1
    index.hnsw.efSearch = low
    if mean_query_ms(index, queries) > AUTOFAISS_QUERY_MS:
        return low
    while low < high:
        middle = (low + high + 1) // 2
        index.hnsw.efSearch = middle
        if mean_query_ms(index, queries) <= AUTOFAISS_QUERY_MS:
            low = middle
        else:
            high = middle - 1
    return low


# ---------------------------------------------------------------------------------------
# Measures


def recall_at(found: list[np.ndarray], truth: list[np.ndarray], k: int = 10) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def latencies_ms(search_one, queries: np.ndarray) -> list[float]:
    out = []
    for query in queries:
        started = time.perf_counter()
        search_one(query[None, :])
        out.append((time.perf_counter() - started) * 1000)
    return out


def measure_indexes(config: Config, directory: Path, work: Path) -> tuple[list[Measure], dict]:
    import faiss

    from imgcurate.retrieval import open_index
    from imgcurate.retrieval.vectors import VectorStore, exact_scan

    store = VectorStore.open(str(directory / "img_emb"))
    queries = np.load(directory / "queries.npy")[: 200 if config.quick else 1000]
    started = time.perf_counter()
    truth = [ids for ids, _ in exact_scan(store, queries, k=10)]
    exact_seconds = time.perf_counter() - started
    key = autofaiss_index_key(store.count, store.dim)
    ours_seconds, ours_peak = build_in_process(BUILD_OURS, str(directory), "-", str(work / "ours"))
    peer_seconds, peer_peak = build_in_process(BUILD_PEER, str(directory), key, str(work / "peer.index"))
    ours = open_index(str(work / "ours"))
    peer = faiss.read_index(str(work / "peer.index"))
    ef_search = autofaiss_ef_search(peer, queries[:200])
    peer.hnsw.efSearch = ef_search
    ours_recall = recall_at([ids for ids, _ in ours.knn(queries, 10)], truth)
    peer_recall = recall_at(list(peer.search(queries, 10)[1]), truth)
    sample = queries[:200]
    ours_lat, peer_lat = [], []
    for _ in range(config.repeats):
        ours_lat.append(latencies_ms(lambda q: ours.knn(q, 10), sample))
        peer_lat.append(latencies_ms(lambda q: peer.search(q, 10), sample))
    batches = [queries[i : i + BATCH] for i in range(0, len(queries), BATCH)]
    ours_qps, peer_qps = interleave(
        config.repeats,
        lambda: len(queries) / timed(lambda: [ours.knn(b, 10) for b in batches]),
        lambda: len(queries) / timed(lambda: [peer.search(b, 10) for b in batches]),
    )
    peer_name = f"autofaiss's choice, {key} (efSearch {ef_search})"
    size = f"{store.count:,} clustered {store.dim}-d vectors"
    measures = [
        compare(f"recall@10 vs exact, {size}", "recall", [ours_recall], [1.0], "exact search", ">= 0.95", minimum=0.95,
                note=f"ours: {ours.document['faiss_description']} at its defaults (nprobe {ours.params['nprobe']}, "
                     f"{ours.params['rerank']}x candidates re-ranked exactly); {len(queries)} queries"),
        compare("recall@10, ours / autofaiss's index", "recall", [ours_recall], [peer_recall], peer_name, "report"),
        compare("single-query latency p50", "ms", [statistics.median(r) for r in ours_lat],
                [statistics.median(r) for r in peer_lat], peer_name, "report", note="k=10, one query at a time"),
        compare("single-query latency p99", "ms", [float(np.percentile(r, 99)) for r in ours_lat],
                [float(np.percentile(r, 99)) for r in peer_lat], peer_name, "report"),
        compare(f"queries/s in batches of {BATCH}", "queries/s", ours_qps, peer_qps, peer_name, "report"),
        compare("index build time", "s", [ours_seconds], [peer_seconds], peer_name, "report",
                note="each in a fresh process, one file of vectors at a time"),
        compare("index build peak RSS", "MB", [ours_peak], [peer_peak], peer_name, "report",
                note="VmHWM of the building process"),
    ]
    parameters = {"vectors": store.count, "dim": store.dim, "queries": len(queries), "exact_scan_seconds": round(exact_seconds, 2),
                  "ours": {"kind": ours.kind, "params": ours.params, "faiss": ours.document["faiss_description"]},
                  "autofaiss": {"index_key": key, "efSearch": ef_search, "max_index_memory_usage": AUTOFAISS_MEMORY,
                                "installed": False,
                                "why_not": "autofaiss 2.18 requires numpy<2 and pandas<3; its rules are applied here"}}
    return measures, parameters


def measure_photos(config: Config, dataset: Dataset, work: Path) -> Measure:
    """Recall of the same IVF-PQ index on the benchmark's real photos (tiny model, random weights)."""
    import dask

    import imgcurate
    from imgcurate.models import TINY_MODEL, CLIPModel
    from imgcurate.retrieval import build_index, export_embeddings
    from imgcurate.retrieval.vectors import VectorStore, exact_scan

    model = CLIPModel(TINY_MODEL, pretrained="random", device="cpu")
    with dask.config.set(scheduler="threads"):
        df = imgcurate.embed(imgcurate.read_webdataset(dataset.urls, with_images=False), model)
        export_embeddings(df, str(work / "photos"), model_id=model.model_id)
    from imgcurate.retrieval.index import MIN_IVFPQ_VECTORS

    # an IVF-PQ index wants at least MIN_IVFPQ_VECTORS (the test suite's 24-photo run builds a flat one)
    index = build_index(str(work / "photos"), kind="ivfpq" if dataset.samples >= MIN_IVFPQ_VECTORS else "flat")
    from imgcurate.ops.decode import Preprocess, decode_batch

    query_images = first_images(dataset, 100)
    queries = model.embed_pixels(np.stack(decode_batch(query_images, Preprocess.from_open_clip(model.preprocess))))
    queries = queries + np.random.default_rng(3).standard_normal(queries.shape).astype(np.float32) * 0.01
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = [ids for ids, _ in exact_scan(VectorStore.open(str(work / "photos" / "img_emb")), queries, k=10)]
    recall = recall_at([ids for ids, _ in index.knn(queries, 10)], truth)
    return compare(f"recall@10 vs exact, {index.count:,} real photos", "recall", [recall], [1.0], "exact search",
                   ">= 0.95", minimum=0.95,
                   note=f"{index.document['faiss_description']}, defaults; tiny model with random weights; "
                        f"100 queries: the first photos' embeddings, slightly perturbed")


def measure_export(config: Config, work: Path, dtype: str = "float16") -> Measure:
    """export_embeddings MB/s ÷ numpy.save of the same arrays (``dtype``), one file per partition."""
    import dask
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    from imgcurate.retrieval import export_embeddings

    rows, partitions = (200_000, 8) if not config.quick else (20_000, 4)
    per = rows // partitions
    vectors = [clustered_vectors(per, seed=50 + p, clusters=1000) for p in range(partitions)]
    frames = [pd.DataFrame({"key": pd.array([f"{p:03d}{i:06d}" for i in range(per)], dtype=pd.ArrowDtype(pa.string())),
                            "source_shard": pd.array([f"/data/{p:05d}.tar"] * per, dtype=pd.ArrowDtype(pa.string())),
                            "source_index": pd.array(np.arange(per), dtype=pd.ArrowDtype(pa.int64())),
                            "caption": pd.array([f"a photo, number {i}" for i in range(per)], dtype=pd.ArrowDtype(pa.string())),
                            "embedding": pd.array(pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), DIM),
                                                  dtype=pd.ArrowDtype(pa.list_(pa.float32(), DIM)))})
              for p, v in enumerate(vectors)]
    df = dd.from_map(lambda frame: frame, frames, meta=frames[0].iloc[:0])
    megabytes = sum(v.size for v in vectors) * np.dtype(dtype).itemsize / 1e6

    def ours() -> float:
        shutil.rmtree(work / "export", ignore_errors=True)
        with dask.config.set(scheduler="threads"):
            return megabytes / timed(lambda: export_embeddings(df, str(work / "export"), dtype=dtype, model_id="synthetic"))

    def peer() -> float:
        shutil.rmtree(work / "numpy", ignore_errors=True)
        (work / "numpy").mkdir()
        # the frame's embeddings are float32: numpy writes them as float16 the only way it can, converting first
        return megabytes / timed(lambda: [np.save(work / "numpy" / f"img_emb_{p}.npy", v.astype(dtype, copy=False))
                                          for p, v in enumerate(vectors)])

    ours_runs, peer_runs = interleave(config.repeats, ours, peer, warm_up=True)
    converts = " (both convert the frame's float32 to float16 on the way)" if dtype == "float16" else ""
    return compare(f"export embeddings, {dtype}", "MB/s", ours_runs, peer_runs, f"numpy.save of the same arrays as {dtype}",
                   ">= 0.8", minimum=0.8, note=f"{rows:,} x {DIM} {dtype} ({megabytes:.0f} MB) in {partitions} partitions, "
                                               f"with their metadata Parquet; Dask threads{converts}")


def flat_latency_ms(directory: Path, sizes=(8_192, 16_384, 24_576, 32_768)) -> dict[str, float]:
    """Median single-query latency of IndexFlatIP at a few sizes: where exact search stops being cheap
    (the measure behind FLAT_MAX_VECTORS)."""
    import faiss

    from imgcurate.retrieval.vectors import VectorStore

    store = VectorStore.open(str(directory / "img_emb"))
    vectors = store.gather(np.arange(min(store.count, max(sizes))))
    queries = np.load(directory / "queries.npy")[:100]
    out = {}
    for size in sizes:
        if size > len(vectors):
            break
        index = faiss.IndexFlatIP(DIM)
        index.add(vectors[:size])
        out[str(size)] = round(statistics.median(latencies_ms(lambda q: index.search(q, 10), queries)), 2)
    return out


def run(config: Config, dataset: Dataset) -> tuple[list[Measure], dict]:
    count = FULL_VECTORS if not config.quick else max(2_000, min(20_000, config.samples * 10))
    directory = synthetic_set(config, count)
    work = Path(tempfile.mkdtemp(prefix="imgcurate-bench-search-", dir=config.data))
    try:
        measures, parameters = measure_indexes(config, directory, work)
        measures.append(measure_photos(config, dataset, work))
        measures.append(measure_export(config, work))
        measures.append(measure_export(config, work, "float32"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from imgcurate.retrieval.index import FLAT_MAX_VECTORS

    parameters.update({"repeats": config.repeats, "flat_max_vectors": FLAT_MAX_VECTORS, "photos": dataset.samples,
                       "flat_latency_ms": flat_latency_ms(directory)})
    return measures, parameters


if __name__ == "__main__":
    raise SystemExit("run the benchmarks with: python benchmarks/run.py --only search")
