"""Build a faiss index over exported embeddings, out of core, and open it again for search.

``build_index(embeddings_dir)`` reads ``img_emb/`` as embedding-reader does (sorted ``.npy`` files,
empty ones skipped) through memory maps, so the set may be larger than memory:

* ``flat``: ``IndexFlatIP``, exact, for sets up to :data:`FLAT_MAX_VECTORS` (measured: there one exact
  query costs about twice an IVF-PQ query on two quiet cores, 4.3 ms, and stays near autofaiss's 10 ms
  target under load; see benchmarks/README.md, "Search");
* ``ivfpq``: an inverted file of about √n lists with product-quantised codes, trained on a seeded
  sample and filled one file at a time; the code size is the largest that fits ``max_index_memory``
  (autofaiss's rule: the memory budget sets the compression). Candidates are re-ranked exactly
  against the exported vectors, so the similarities returned are exact;
* ``hnsw``: ``IndexHNSWFlat`` (inner product), filled one file at a time; its ``M`` follows
  autofaiss's rule for the memory budget (at most 32).

``kind="auto"`` chooses ``flat`` up to :data:`FLAT_MAX_VECTORS` and ``ivfpq`` above. The index is
saved as ``image.index`` with ``index.json`` (model, width, count, kind, parameters, files) and,
for ``ivfpq``, ``ivf_caps.npy``: per list, the cone around its centroid that holds every member and
the largest error of a member's code, which let a range search prove which lists cannot hold a
match and how far below the threshold a match's compressed similarity can fall
(:mod:`imgcurate.retrieval.query`).
With faiss's GPU build and a GPU, the k-means of the IVF training runs on the GPUs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .._version import __version__
from .ivf import faiss_centroids, list_members
from .layout import EXPORT_JSON, IMG_EMB, INDEX_FILE, INDEX_FORMAT, INDEX_JSON, IVF_CAPS_FILE, METADATA
from .query import SearchIndex, open_index
from .vectors import NpyFile, VectorStore, list_npy_files

log = logging.getLogger("imgcurate")
KINDS = ("auto", "flat", "ivfpq", "hnsw")
FLAT_MAX_VECTORS = 24_576
DEFAULT_MAX_INDEX_MEMORY = "4G"  # clip-retrieval's default max_index_memory_usage
TRAIN_POINTS_PER_LIST = 64  # faiss's k-means wants at least 39 per centroid; more costs training time
MIN_TRAIN_POINTS = 65_536  # at least this many (or all): product quantisation trains 256 centroids per sub-vector
MIN_IVFPQ_VECTORS = 1_000  # 256 centroids per sub-vector need a few points each
PQ_DIMS_PER_CODE = (8, 12, 16, 24, 32, 48, 64)  # dimensions per code byte, tried in this order (finest first)
DEFAULT_NPROBE_FRACTION = 1 / 32  # lists probed per query (see benchmarks/README.md for recall at this setting)
MIN_NPROBE = 8
DEFAULT_RERANK = 10  # candidates re-ranked exactly, per result asked for
HNSW_EF_SEARCH = 128


def parse_memory(value: str | int) -> int:
    """Bytes in ``"4G"``, ``"512M"``, ``"16GB"`` (powers of 1024, as autofaiss reads them) or an int."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(value).upper())
    if not match:
        raise ValueError(f"memory size {value!r} is not a number of bytes or like '4G', '512M'")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))


def ivfpq_params(count: int, dim: int, budget: int) -> dict[str, Any]:
    """Lists, code size and search defaults of an IVF-PQ index over ``count`` vectors within ``budget`` bytes."""
    nlist = int(min(65_536, max(16, 2 ** round(math.log2(math.sqrt(count))))))
    centroid_bytes = nlist * dim * 4
    for dims_per_code in PQ_DIMS_PER_CODE:
        if dim % dims_per_code == 0 and count * (dim // dims_per_code + 8) + centroid_bytes <= budget:
            m = dim // dims_per_code
            break
    else:
        raise ValueError(f"an IVF-PQ index of {count} {dim}-d vectors does not fit max_index_memory={budget} bytes")
    return {"nlist": nlist, "m": m, "nbits": 8, "nprobe": max(MIN_NPROBE, round(nlist * DEFAULT_NPROBE_FRACTION)),
            "rerank": DEFAULT_RERANK, "train_size": min(count, max(MIN_TRAIN_POINTS, TRAIN_POINTS_PER_LIST * nlist))}


def hnsw_params(count: int, dim: int, budget: int) -> dict[str, Any]:
    """autofaiss's ``HNSW{M}`` choice: M = (budget / (4·count) − dim) / 2, at most 32; below 8 it does not fit."""
    m = int(math.floor((budget / (4 * count) - dim) / 2))
    if m < 8:
        raise ValueError(f"an HNSW index of {count} {dim}-d vectors does not fit max_index_memory={budget} bytes; "
                         f"use kind='ivfpq'")
    return {"M": min(m, 32), "ef_construction": 40, "ef_search": HNSW_EF_SEARCH, "rerank": DEFAULT_RERANK}


def choose_index(count: int, dim: int, kind: str = "auto", max_index_memory: str | int = DEFAULT_MAX_INDEX_MEMORY) -> tuple[str, dict]:
    """(kind, parameters) for ``count`` vectors of width ``dim`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    budget = parse_memory(max_index_memory)
    if kind == "auto":
        kind = "flat" if count <= FLAT_MAX_VECTORS else "ivfpq"
    if kind == "flat":
        return kind, {}
    if kind == "ivfpq":
        if count < MIN_IVFPQ_VECTORS:
            raise ValueError(f"{count} vectors are too few to train an IVF-PQ index (at least {MIN_IVFPQ_VECTORS}); "
                             f"use kind='flat'")
        return kind, ivfpq_params(count, dim, budget)
    return kind, hnsw_params(count, dim, budget)


def _gpu_training(index) -> None:
    """With faiss's GPU build and a GPU, the IVF k-means assigns points on the GPUs."""
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(index.d))


def _fill(index, store: VectorStore, progress: bool) -> None:
    from tqdm.std import tqdm

    with tqdm(total=store.count, desc="adding to the index", unit="vec", disable=not progress) as bar:
        for _, chunk in store.chunks():
            index.add(chunk)
            bar.update(len(chunk))


def ivf_caps(index, store: VectorStore) -> np.ndarray:
    """Per list, from a second pass over the vectors: the cosine of the widest angle between a member and
    the centroid's direction, the largest member norm, and the largest error of a member's code (the
    distance between the vector and what its code decodes to). An empty list gets (1, 0, 0): it holds no match."""
    import faiss

    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    centroids = faiss_centroids(index)
    centroids32 = centroids.astype(np.float32)
    directions = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-30)
    owner = list_members(index)
    caps = np.zeros((len(centroids), 3), dtype=np.float64)
    caps[:, 0] = 1.0
    for start, chunk in store.chunks():
        lists = owner[start : start + len(chunk)]
        wide = chunk.astype(np.float64)
        norms = np.linalg.norm(wide, axis=1)
        np.minimum.at(caps[:, 0], lists, np.einsum("ij,ij->i", wide, directions[lists]) / np.maximum(norms, 1e-30))
        np.maximum.at(caps[:, 1], lists, norms)
        # the codes faiss stored: the residual from the list's centroid, product-quantised (IndexIVFPQ.add)
        residuals = chunk - centroids32[lists]
        decoded = ivf.pq.decode(ivf.pq.compute_codes(residuals))
        np.maximum.at(caps[:, 2], lists, np.linalg.norm((residuals - decoded).astype(np.float64), axis=1))
    return caps


def _build(kind: str, params: dict[str, Any], store: VectorStore, progress: bool):
    import faiss

    dim = store.dim
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, params["nlist"], params["m"], params["nbits"],
                                 faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # faiss's IVF default; the lists only need to be roughly balanced
        _gpu_training(index)
        started = time.perf_counter()
        index.train(store.sample(params["train_size"]))
        log.info("trained %s lists and %s-byte codes on %s vectors in %.1f s", params["nlist"], params["m"],
                 params["train_size"], time.perf_counter() - started)
    started = time.perf_counter()
    _fill(index, store, progress)
    log.debug("added %s vectors in %.1f s", store.count, time.perf_counter() - started)
    return index


def _relative(path: str, directory: str) -> str:
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return os.path.relpath(path, directory) if path.startswith(directory + os.sep) else path


def _paired_metadata(files: list[NpyFile], embeddings_dir: str) -> list[str | None]:
    """Each ``img_emb_{n}.npy``'s ``metadata_{n}.parquet``, when there is one."""
    out = []
    for f in files:
        number = os.path.basename(f.path)[len("img_emb_") : -len(".npy")]
        candidate = os.path.join(embeddings_dir, METADATA, f"metadata_{number}.parquet")
        out.append(candidate if os.path.isfile(candidate) else None)
    return out


def _export_info(embeddings_dir: str) -> dict[str, Any]:
    path = os.path.join(embeddings_dir, EXPORT_JSON)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def build_index(embeddings_dir: str, *, kind: str = "auto", output_dir: str | None = None, model_id: str | None = None,
                max_index_memory: str | int = DEFAULT_MAX_INDEX_MEMORY, params: dict[str, Any] | None = None,
                progress: bool = False) -> SearchIndex:
    """Build a faiss index over ``embeddings_dir/img_emb`` (clip-retrieval's layout) and save it in
    ``output_dir`` (default: ``embeddings_dir``); returns it opened for :func:`imgcurate.search`.

    ``kind``: ``"auto"``, ``"flat"``, ``"ivfpq"`` or ``"hnsw"`` (module docstring). ``model_id``: the
    model that made the embeddings, when ``embeddings.json`` (written by ``export_embeddings``) does not
    say it. ``max_index_memory``: the budget for the index itself (``"4G"``). ``params``: parameters
    to use instead of the chosen ones (``nlist``, ``m``, ``nprobe``, ``rerank``, ``train_size`` for
    ivfpq; ``M``, ``ef_construction``, ``ef_search``, ``rerank`` for hnsw); they are recorded as used.
    """
    import faiss

    embeddings_dir = os.path.abspath(os.fspath(embeddings_dir))
    output_dir = os.path.abspath(os.fspath(output_dir or embeddings_dir))
    files = list_npy_files(os.path.join(embeddings_dir, IMG_EMB))
    if not files:
        raise ValueError(f"empty index: no embeddings in {os.path.join(embeddings_dir, IMG_EMB)!r} (every .npy file is "
                         f"empty or there are none); export some first (imgcurate.export_embeddings)")
    store = VectorStore(files)
    info = _export_info(embeddings_dir)
    recorded = info.get("model_id")
    if model_id and recorded and model_id != recorded:
        raise ValueError(f"model_id={model_id!r} was given, but {EXPORT_JSON} says the embeddings were made by {recorded!r}")
    kind, chosen = choose_index(store.count, store.dim, kind, max_index_memory)
    unknown = sorted(set(params or {}) - set(chosen))
    if unknown:
        raise ValueError(f"unknown parameters for a {kind} index: {', '.join(unknown)} (it takes {', '.join(chosen) or 'none'})")
    params = {**chosen, **(params or {})}
    started = time.perf_counter()
    index = _build(kind, params, store, progress)
    os.makedirs(output_dir, exist_ok=True)
    for name in (INDEX_FILE, INDEX_JSON, IVF_CAPS_FILE):  # an older index here no longer describes these vectors
        if os.path.exists(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
    if kind == "ivfpq":
        np.save(os.path.join(output_dir, IVF_CAPS_FILE), ivf_caps(index, store))
    faiss.write_index(index, os.path.join(output_dir, INDEX_FILE))
    document = {
        "format": INDEX_FORMAT, "imgcurate_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": kind, "faiss_index": INDEX_FILE, "faiss_description": describe(kind, params), "metric": "inner_product",
        "model_id": model_id or recorded, "dim": store.dim, "count": store.count, "params": params,
        "max_index_memory": parse_memory(max_index_memory), "build_seconds": round(time.perf_counter() - started, 3),
        "dtype": files[0].dtype,
        "files": [{"embeddings": _relative(f.path, output_dir), "metadata": _relative(m, output_dir) if m else None,
                   "count": f.count} for f, m in zip(files, _paired_metadata(files, embeddings_dir))],
    }
    with open(os.path.join(output_dir, INDEX_JSON), "w") as f:
        json.dump(document, f, indent=1)
    return open_index(output_dir)


def describe(kind: str, params: dict[str, Any]) -> str:
    """The index as a faiss factory string (what autofaiss records as its index key)."""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{params['M']},Flat"
    return f"IVF{params['nlist']},PQ{params['m']}x{params['nbits']}"
