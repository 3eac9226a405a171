"""imgcurate: curate image datasets at scale on Dask dataframes over WebDataset shards.

The package follows the data path (see docs/architecture.md):
``io`` (shards ↔ partitions) → ``models`` (CLIP, LAION heads) → ``ops`` (partition functions) →
``dataframe`` (the verbs below) → ``stages`` (Pipeline) → ``app`` (CLI, report, notebook display);
``common`` is the plumbing they share (backend, failure policy, column names, cluster, progress).

Names are imported on first use, so ``import imgcurate`` loads neither Dask nor torch.
"""

import sys

from ._version import __version__

# public name -> module that defines it
_PUBLIC = {
    "read_webdataset": "imgcurate.io.reader",
    "write_webdataset": "imgcurate.io.writer",
    "WriteResult": "imgcurate.io.writer",
    "where": "imgcurate.dataframe",
    "mark_where": "imgcurate.dataframe",
    "mark_dropped": "imgcurate.dataframe",
    "ok_rows": "imgcurate.dataframe",
    "embed": "imgcurate.dataframe",
    "score_aesthetic": "imgcurate.dataframe",
    "score_nsfw": "imgcurate.dataframe",
    "filter_aesthetic": "imgcurate.dataframe",
    "filter_nsfw": "imgcurate.dataframe",
    "validate_images": "imgcurate.dataframe",
    "embed_text": "imgcurate.dataframe",
    "clip_score": "imgcurate.dataframe",
    "clip_score_threshold": "imgcurate.dataframe",
    "filter_clip_score": "imgcurate.dataframe",
    "basic_filter": "imgcurate.dataframe",
    "check_uids": "imgcurate.dataframe",
    "select_uids": "imgcurate.dataframe",
    "save_uids": "imgcurate.dataframe",
    "uid_subset_misses": "imgcurate.dataframe",
    "hash_images": "imgcurate.dataframe",
    "mark_duplicates": "imgcurate.dataframe",
    "dedup": "imgcurate.dataframe",
    "sql": "imgcurate.dataframe.sql",
    "mark_similar": "imgcurate.dataframe",
    "export_embeddings": "imgcurate.retrieval",
    "build_index": "imgcurate.retrieval",
    "search": "imgcurate.retrieval",
    "show": "imgcurate.app.display",
    "make_sample_dataset": "imgcurate.app.sample_data",
    "CLIPModel": "imgcurate.models",
    "CLIPImageEmbedder": "imgcurate.models",
    "AestheticScorer": "imgcurate.models",
    "NSFWScorer": "imgcurate.models",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'imgcurate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


if "IPython" in sys.modules:  # in Jupyter: results display as HTML tables (cheap: nothing heavy is imported)
    from .app.notebook import register_html_formatters

    register_html_formatters()


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
