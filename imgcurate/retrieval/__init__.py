"""Embedding export, vector indexes and semantic search (README, "Search and embedding export"); the
package is ``retrieval`` so that ``imgcurate.search`` can be the function.

* :func:`export_embeddings`: a dataframe's embeddings in clip-retrieval's layout (``img_emb/``,
  ``text_emb/``, ``metadata/``), one file set per partition, written by Dask tasks;
* :func:`build_index`: a faiss index over them, built out of core (flat, IVF-PQ or HNSW);
* :func:`search`: by text, example images or embeddings, top-k or range, best first, with metadata;
* :func:`open_index`: an index opened once for many searches;
* :func:`write_matches`: the samples a search found, copied into a new WebDataset.

The pieces: :mod:`.layout` (file names, and the files ``index.json`` lists), :mod:`.vectors` (the
``.npy`` files, memory-mapped), :mod:`.ivf` (a faiss IVF index's lists), :mod:`.export`,
:mod:`.index` (which opens what it built with :mod:`.query`), :mod:`.query`. ``mark_similar`` (the
dataframe side) is in :mod:`imgcurate.dataframe.similar`.
"""

from .export import ExportResult, export_embeddings
from .index import build_index
from .query import SearchIndex, open_index, search
from .subset import write_matches

__all__ = ["export_embeddings", "ExportResult", "build_index", "search", "open_index", "SearchIndex", "write_matches"]
