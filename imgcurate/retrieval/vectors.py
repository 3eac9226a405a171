"""The exported vectors on disk, read the way embedding-reader and autofaiss read them.

An embeddings folder (``img_emb/`` or ``text_emb/``) holds ``.npy`` files; their names sorted as
strings give the order, files that hold no vector are skipped, and vector ``i`` of the whole set
is row ``i - start`` of the file whose range holds it. :class:`VectorStore` memory-maps the files,
so the search reads only the vectors it re-ranks and a scan streams them in chunks: nothing holds
the whole set in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np

SCAN_ROWS = 65_536  # vectors per chunk of a sequential pass: 192 MiB of float32 at 768-d


@dataclass(frozen=True)
class NpyFile:
    """One ``.npy`` file of a set: where it is, how many vectors it holds and their width and type."""

    path: str
    count: int
    dim: int
    dtype: str


def read_npy_header(path: str) -> NpyFile:
    """The shape and type of a 2-d ``.npy`` file, from its header alone."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
    if len(shape) != 2 or fortran:
        raise ValueError(f"{path}: expected a C-ordered 2-d array of embeddings, found shape {shape}")
    return NpyFile(path, int(shape[0]), int(shape[1]), np.dtype(dtype).str)


def list_npy_files(directory: str) -> list[NpyFile]:
    """The ``.npy`` files under ``directory`` (recursively), sorted by path as strings, empty ones left out."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory!r} is not a directory of .npy embeddings")
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
                   if name.endswith(".npy"))
    return [f for f in map(read_npy_header, paths) if f.count > 0]


class VectorStore:
    """The vectors of a set of ``.npy`` files, addressed by global row number (see the module docstring)."""

    def __init__(self, files: list[NpyFile]):
        if not files:
            raise ValueError("no embeddings: every .npy file is empty or there are none")
        dims = {f.dim for f in files}
        if len(dims) != 1:
            raise ValueError(f"the .npy files hold vectors of different widths: {sorted(dims)}")
        self.files = files
        self.dim = files[0].dim
        self.starts = np.cumsum([0] + [f.count for f in files])
        self.count = int(self.starts[-1])

    @classmethod
    def open(cls, directory: str) -> "VectorStore":
        return cls(list_npy_files(directory))

    @cached_property
    def arrays(self) -> list[np.ndarray]:
        return [np.load(f.path, mmap_mode="r") for f in self.files]

    def chunks(self, rows: int = SCAN_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first global row, float32 vectors) over the whole set, in order, ``rows`` at a time.

        Read with plain file reads, not through the memory maps: a pass over a set larger than memory
        then holds one chunk at a time instead of mapping every page it has read."""
        for start, f in zip(self.starts, self.files):
            header = self.header_bytes(f.path)
            item = np.dtype(f.dtype).itemsize * f.dim
            with open(f.path, "rb") as stream:
                for offset in range(0, f.count, rows):
                    n = min(rows, f.count - offset)
                    stream.seek(header + offset * item)
                    chunk = np.fromfile(stream, dtype=f.dtype, count=n * f.dim).reshape(n, f.dim)
                    yield int(start) + offset, chunk.astype(np.float32, copy=False)

    @staticmethod
    def header_bytes(path: str) -> int:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(stream)
            return stream.tell()

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """float32 vectors of the global rows ``ids`` (any order, repeats allowed)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.count):
            raise IndexError(f"vector ids out of range 0..{self.count - 1}")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        file_of = np.searchsorted(self.starts, ids, side="right") - 1
        for number in np.unique(file_of):
            where = np.flatnonzero(file_of == number)
            rows = ids[where] - self.starts[number]
            order = np.argsort(rows, kind="stable")  # ascending rows: the page cache is read forwards
            out[where[order]] = self.arrays[number][rows[order]]
        return out

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` distinct vectors drawn uniformly (seeded), as float32, read file by file."""
        n = min(n, self.count)
        ids = np.sort(np.random.default_rng(seed).choice(self.count, size=n, replace=False))
        return self.gather(ids)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(file number in this set, row in that file) of each global row."""
        ids = np.asarray(ids, dtype=np.int64)
        file_of = np.searchsorted(self.starts, ids, side="right") - 1
        return file_of, ids - self.starts[file_of]


def similarities(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Inner products, float32 (queries × vectors): the one place a similarity is computed exactly."""
    return np.asarray(queries, dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T


def exact_scan(store: VectorStore, queries: np.ndarray, *, min_similarity: float | None = None,
               k: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query, (ids, similarities) best first: every vector at or above ``min_similarity``, and/or the
    ``k`` best, by a streaming pass over the whole store (exact; memory bounded by one chunk)."""
    found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(queries))]
    for start, chunk in store.chunks():
        scores = similarities(queries, chunk)
        for q, row in enumerate(scores):
            keep = np.arange(len(row)) if min_similarity is None else np.flatnonzero(row >= min_similarity)
            if k is not None and len(keep) > k:
                keep = keep[np.argpartition(-row[keep], k - 1)[:k]]
            found[q].append((keep + start, row[keep]))
            if k is not None and sum(len(ids) for ids, _ in found[q]) > 4 * k:  # keep memory at O(k)
                found[q] = [best_first(*_concat(found[q]), k)]
    return [best_first(*_concat(parts), k) for parts in found]


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate([p[0] for p in parts]).astype(np.int64), np.concatenate([p[1] for p in parts]).astype(np.float32)


def best_first(ids: np.ndarray, scores: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` and ``scores`` sorted by score descending (ties by id, so results are deterministic), cut to ``k``."""
    order = np.lexsort((ids, -scores))
    if k is not None:
        order = order[:k]
    return ids[order], scores[order]
