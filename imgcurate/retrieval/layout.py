"""File names of an embeddings folder and of the index built in it.

The embeddings follow clip-retrieval's layout (``clip_retrieval/clip_inference/writer.py``), which
autofaiss and embedding-reader read: ``img_emb/img_emb_{n}.npy``, ``text_emb/text_emb_{n}.npy`` and
``metadata/metadata_{n}.parquet``, ``n`` zero-filled to ``int(log10(number of partitions)) + 1``
digits, so that sorting the names as strings keeps their order. The index sits beside them, as in
clip-retrieval's index folders (``image.index`` next to ``metadata/``), with imgcurate's description
of it in ``index.json``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

IMG_EMB = "img_emb"
TEXT_EMB = "text_emb"
METADATA = "metadata"
EXPORT_JSON = "embeddings.json"  # what export_embeddings wrote: model, width, type, files and counts
INDEX_FILE = "image.index"  # the faiss index (faiss.write_index)
INDEX_JSON = "index.json"  # what build_index built: kind, parameters, model, where the vectors and metadata are
INDEX_FORMAT = "imgcurate-index-v1"  # index.json's "format"
IVF_CAPS_FILE = "ivf_caps.npy"  # per inverted list, the cone around its centroid that holds every member

EXPORT_NAMES = (IMG_EMB, TEXT_EMB, METADATA, EXPORT_JSON, INDEX_FILE, INDEX_JSON, IVF_CAPS_FILE)


def number_width(partitions: int) -> int:
    """Digits of a file number: clip-retrieval's ``int(math.log10(output_partition_count)) + 1``."""
    return int(math.log10(max(1, partitions))) + 1


def file_names(number: int, width: int) -> dict[str, str]:
    """The relative paths of partition ``number``'s files."""
    text = str(number).zfill(width)
    return {IMG_EMB: f"{IMG_EMB}/img_emb_{text}.npy", TEXT_EMB: f"{TEXT_EMB}/text_emb_{text}.npy",
            METADATA: f"{METADATA}/metadata_{text}.parquet"}


@dataclass(frozen=True)
class IndexFiles:
    """Where an index's vectors and metadata are, as ``index.json`` lists them (absolute paths)."""

    embeddings: list[str]
    metadata: list[str | None]
    counts: list[int]

    @classmethod
    def from_document(cls, document: dict[str, Any], directory: str) -> "IndexFiles":
        def absolute(path):
            return None if path is None else os.path.join(directory, path)

        files = document["files"]
        return cls([absolute(f["embeddings"]) for f in files], [absolute(f["metadata"]) for f in files],
                   [int(f["count"]) for f in files])
