"""The inverted lists of a faiss IVF index, as both building (the lists' caps) and searching (the
lists worth probing) read them."""

from __future__ import annotations

import numpy as np


def list_members(index) -> np.ndarray:
    """For each vector id, the inverted list that holds it."""
    import faiss

    invlists = faiss.extract_index_ivf(index).invlists
    owner = np.full(index.ntotal, -1, dtype=np.int64)
    for number in range(invlists.nlist):
        size = invlists.list_size(number)
        if size:
            owner[faiss.rev_swig_ptr(invlists.get_ids(number), size)] = number
    return owner


def faiss_centroids(index) -> np.ndarray:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist).astype(np.float64)
