"""Image–text pairs as dataframe verbs: caption embeddings, the CLIP score and its filters, DataComp's
basic filter, and uid subsets in DataComp's ``.npy`` format.

The filters mark rows (``dropped_by``) instead of deleting them, as the stage API does, so the
writer counts what each rule removed; :func:`~imgcurate.dataframe.ok_rows` gives the rows kept.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np

from ..common import columns as C
from ..common.errors import check_on_error

log = logging.getLogger("imgcurate")
CLIP_SCORE_STAGE = "clip_score"
SELECT_UIDS_STAGE = "select_uids"
PARTITIONS_PER_ROUND = 64  # partitions whose results the driver holds at once when it streams them
MISSES_LISTED = 100_000
HISTOGRAM_TASKS = 32  # tasks per histogram pass of clip_score_threshold (each takes a run of partitions)  # uids of a subset absent from the input listed by name (all are counted)


# ---------------------------------------------------------------------------------------
# Text embeddings and the CLIP score


def embed_text(df, clip):
    """Add ``text_embedding`` (fixed_size_list<float32>[dim], unit length) of each row's ``caption``, by ``clip``'s
    text tower (open_clip's tokenizer for the model), and ``caption_problem``: rows without a usable caption get
    a null vector and ``no_caption`` / ``empty_caption`` (not failures). ``embedding_model`` names the model."""
    from ..ops.captions import text_embedding_partition

    meta = text_embedding_partition(df._meta, clip)
    return df.map_partitions(text_embedding_partition, clip, meta=meta)


def clip_score(df, clip, *, keep_text_embedding: bool = False, on_error: str = "report",
               storage_options: dict | None = None):
    """Add ``clip_score`` (float32): the cosine of the unit image and text embeddings of each pair, as DataComp
    and LAION compute it (plain cosine, in [-1, 1]; CLIP ViT-L/14 puts matching pairs around 0.2–0.4).

    The ``embedding`` column is used when the model that made it (``embedding_model``) is ``clip``; another
    model's vectors are an error, naming both. Without the column, the images are embedded in the same pass
    (``embedding`` is added; image failures become failure rows under ``on_error``). Rows without a usable
    caption get a null score and ``caption_problem``. ``keep_text_embedding`` also keeps ``text_embedding``."""
    from ..ops.captions import clip_score_partition

    check_on_error(on_error)
    options = dict(keep_text_embedding=keep_text_embedding, on_error=on_error, storage_options=storage_options)
    meta = clip_score_partition(df._meta, clip, **options)
    return df.map_partitions(clip_score_partition, clip, **options, meta=meta)


@dataclass(frozen=True)
class ClipScoreThreshold:
    """The score a top fraction keeps: every row in play scoring at least ``threshold``."""

    threshold: float | None  # None when no row has a score
    top_fraction: float
    scored: int  # rows in play with a score (DataComp's N)
    rank: int  # int(scored * top_fraction): the threshold is the score at this index of the descending order

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def clip_score_threshold(df, top_fraction: float, *, progress: bool = False) -> ClipScoreThreshold:
    """The threshold that keeps the top ``top_fraction`` of the scored rows over the whole frame, exactly as
    DataComp's ``get_threshold``: sort the N scores descending, take the one at index ``int(N * top_fraction)``;
    keeping ``score >= threshold`` keeps ties (``top_fraction=1`` keeps every scored row).

    Computed without gathering the scores: a 65,536-bin histogram of the upper 16 bits of each score's
    float32 bit pattern (ordered like the values), summed over partitions, finds the bin holding that rank,
    and a second histogram of the lower 16 bits within that bin finds the exact value. Two passes over ``clip_score``:
    persist the frame first if computing it is expensive (``df = df.persist()``)."""
    import dask

    from ..common.progress import compute
    from ..ops.captions import key_histogram, key_to_score, rank_in_histogram

    _check_fraction(top_fraction)
    if C.CLIP_SCORE not in df.columns:
        raise ValueError(f"no '{C.CLIP_SCORE}' column: score the pairs first (imgcurate.clip_score)")
    parts = df.to_delayed()
    # a task takes a few partitions: a histogram pass costs little per row, so per-task overhead would dominate
    per_task = max(1, len(parts) // HISTOGRAM_TASKS)
    groups = [parts[i : i + per_task] for i in range(0, len(parts), per_task)]
    upper = compute([dask.delayed(key_histogram)(group) for group in groups], desc="clip score threshold", progress=progress)
    scored = int(sum(counts.sum() for _, counts in upper))
    if scored == 0:
        return ClipScoreThreshold(None, top_fraction, 0, 0)
    rank = min(int(scored * top_fraction), scored - 1)  # a fraction of 1 keeps the lowest score too
    high, within = rank_in_histogram(upper, rank)
    lower = compute([dask.delayed(key_histogram)(group, high) for group in groups], desc="clip score threshold",
                    progress=progress)
    low, _ = rank_in_histogram(lower, within)
    key = (high << 16) | low
    return ClipScoreThreshold(key_to_score(key), top_fraction, scored, int(scored * top_fraction))


def _check_fraction(top_fraction) -> None:
    if isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float)) or not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be a number in (0, 1], got {top_fraction!r}")


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")


def filter_clip_score(df, threshold: float | None = None, top_fraction: float | None = None, *,
                      stage: str = CLIP_SCORE_STAGE, progress: bool = False):
    """Mark rows as ``dropped_by=stage`` unless ``clip_score >= threshold``, or unless they are in the top
    ``top_fraction`` of the scored rows (:func:`clip_score_threshold`, computed now). Rows without a score are
    dropped too, labelled ``stage:no_caption`` / ``stage:empty_caption`` (their ``caption_problem``).
    The threshold a fraction gave is logged; :func:`clip_score_threshold` returns it for the manifest."""
    from ..ops.captions import mark_clip_score_partition

    if (threshold is None) == (top_fraction is None):
        raise ValueError("give either threshold or top_fraction")
    if top_fraction is not None:  # no score at all: nothing is kept
        found = clip_score_threshold(df, top_fraction, progress=progress)
        log.info("clip score: top %g of %d scored rows is clip_score >= %s", top_fraction, found.scored, found.threshold)
        threshold = found.threshold if found.threshold is not None else math.inf
    elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    meta = mark_clip_score_partition(df._meta, threshold, stage)
    return df.map_partitions(mark_clip_score_partition, threshold, stage, meta=meta)


# ---------------------------------------------------------------------------------------
# DataComp's basic filter


def basic_filter(df, *, language: str | None = "en", min_caption_words: int = 3, min_caption_chars: int = 6,
                 min_image_side: int = 200, max_aspect_ratio: float = 3.0, stage: str = "basic_filter",
                 on_error: str = "report", storage_options: dict | None = None):
    """DataComp's basic filter, rule by rule: adds ``caption_language`` (fastText lid.176), and marks each row that
    breaks a rule ``dropped_by = "basic_filter:<rule>"`` (``language``, ``caption_words``, ``caption_chars``,
    ``image_side``, ``aspect_ratio``; the first broken rule names it). Defaults are DataComp's: English, more
    than 2 words, more than 5 characters, smaller side >= 200 px, aspect ratio <= 3. Sizes are img2dataset's
    ``original_width`` / ``original_height`` when present, else read from the image header (``image_width`` /
    ``image_height``; images that cannot be read are failures under ``on_error``)."""
    from ..ops.captions import basic_filter_partition

    check_on_error(on_error)
    for name, value in (("min_caption_words", min_caption_words), ("min_caption_chars", min_caption_chars),
                        ("min_image_side", min_image_side), ("max_aspect_ratio", max_aspect_ratio)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    options = dict(language=language, min_caption_words=min_caption_words, min_caption_chars=min_caption_chars,
                   min_image_side=min_image_side, max_aspect_ratio=max_aspect_ratio, stage=stage, on_error=on_error,
                   storage_options=storage_options)
    meta = basic_filter_partition(df._meta, **options)
    return df.map_partitions(basic_filter_partition, **options, meta=meta)


# ---------------------------------------------------------------------------------------
# uids


def _require_uid(df) -> None:
    if C.UID not in df.columns:
        raise ValueError(f"the frame has no '{C.UID}' column: DataComp's shards carry the uid in each sample's .json "
                         "(or in the sidecar Parquet)")


def check_uids(df, on_error: str = "report"):
    """Rows in play whose ``uid`` is missing or not 32 hexadecimal digits become failure rows (``no_uid``,
    ``bad_uid``) under ``on_error``; the others are untouched."""
    from ..ops.uids import check_uids_partition

    _require_uid(df)
    check_on_error(on_error)
    meta = check_uids_partition(df._meta, on_error)
    return df.map_partitions(check_uids_partition, on_error, meta=meta)


def select_uids(df, path: str, *, stage: str = SELECT_UIDS_STAGE, on_error: str = "report",
                storage_options: dict | None = None):
    """Keep exactly the samples whose ``uid`` is listed in the DataComp subset file ``path`` (``.npy`` of
    ``np.dtype("u8,u8")``); the others are marked ``dropped_by=stage``. A uid listed twice keeps its sample
    once. Rows with a missing or malformed uid are failures (``no_uid``, ``bad_uid``). The file is checked
    now (a wrong dtype is an error naming the expected one) and loaded once per worker process
    (memory-mapped when local). See :func:`uid_subset_misses` for the listed uids the input lacks."""
    from ..ops.uids import check_uid_file, select_uids_partition

    _require_uid(df)
    check_on_error(on_error)
    check_uid_file(path, storage_options)
    path = os.fspath(path)
    meta = select_uids_partition(df._meta, path, stage, on_error, storage_options)
    return df.map_partitions(select_uids_partition, path, stage, on_error, storage_options, meta=meta)


@dataclass
class SubsetMisses:
    """How a uid subset file compares with a dataset."""

    path: str
    listed: int  # entries in the file
    duplicates: int  # entries repeating an earlier one
    found: int  # distinct listed uids present in the input
    missing: int  # distinct listed uids absent from the input
    missing_uids: list[str] = field(default_factory=list)  # the first MISSES_LISTED of them, in file order

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["missing_uids_listed"] = len(self.missing_uids)
        return out


def _stream(tasks: list, *, desc: str, progress: bool) -> Iterator[Any]:
    """The results of ``tasks`` in order, computed a round of :data:`PARTITIONS_PER_ROUND` at a time, so the
    driver holds one round of results, never all of them."""
    from ..common.progress import compute

    for start in range(0, len(tasks), PARTITIONS_PER_ROUND):
        yield from compute(tasks[start : start + PARTITIONS_PER_ROUND], desc=desc, progress=progress)


def uid_subset_misses(df, path: str, *, storage_options: dict | None = None, progress: bool = False) -> SubsetMisses:
    """Count (and list, up to :data:`MISSES_LISTED`) the uids of the subset file that no row in play of ``df``
    has. One pass over the ``uid`` column; the driver keeps one byte per listed uid."""
    import dask

    from ..ops.uids import first_occurrences, open_uid_subset, subset_hits_partition, uid_strings

    _require_uid(df)
    path = os.fspath(path)
    subset = open_uid_subset(path, storage_options)
    hit = np.zeros(len(subset), dtype=bool)
    tasks = [dask.delayed(subset_hits_partition)(part, path, storage_options) for part in df.to_delayed()]
    for positions in _stream(tasks, desc="uid subset", progress=progress):
        hit[positions] = True
    first = first_occurrences(subset)
    missing = np.flatnonzero(first & ~hit)
    return SubsetMisses(path, len(subset), int(len(subset) - first.sum()), int((first & hit).sum()), len(missing),
                        uid_strings(np.asarray(subset[missing[:MISSES_LISTED]])))


@dataclass
class SavedUids:
    """What :func:`save_uids` wrote."""

    path: str
    uids: int
    bad_uid: int = 0  # rows in play left out because their uid is not 32 hexadecimal digits
    no_uid: int = 0  # rows in play left out because they have no uid
    left_out_keys: list[str] = field(default_factory=list)  # keys of the first few rows left out

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def save_uids(df, path: str, *, storage_options: dict | None = None, progress: bool = False) -> SavedUids:
    """Write the uids of the rows in play (not failed, not dropped) as DataComp saves a subset: a ``.npy`` of
    ``np.dtype("u8,u8")`` pairs (upper, lower 64 bits), sorted, byte for byte what ``np.save`` writes for it.

    Each partition's uids are sorted where it is computed and spilled to a local temporary file as it
    arrives; the file is then written by a bucketed merge of those runs, so no machine holds every uid.
    Rows whose uid is missing or malformed are left out and counted (run :func:`check_uids` first to list
    them as failures)."""
    import dask

    from ..io.paths import writable_path
    from ..ops.uids import merged_buckets, partition_uid_run, write_uid_file

    _require_uid(df)
    path = os.fspath(path)
    fs, target = writable_path(path, storage_options)
    saved = SavedUids(path, 0)
    spill = tempfile.mkdtemp(prefix="imgcurate-uids-")
    try:
        runs = []
        tasks = [dask.delayed(partition_uid_run)(part) for part in df.to_delayed()]
        for number, (run, bad, none, keys) in enumerate(_stream(tasks, desc="uids", progress=progress)):
            saved.bad_uid += bad
            saved.no_uid += none
            saved.left_out_keys += keys[: max(0, 20 - len(saved.left_out_keys))]
            if len(run):
                run_path = os.path.join(spill, f"{number:08d}.npy")
                np.save(run_path, run)
                runs.append(np.load(run_path, mmap_mode="r"))
        saved.uids = sum(len(run) for run in runs)
        with fs.open(target, "wb") as out:
            write_uid_file(out, merged_buckets(runs), saved.uids)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    if saved.bad_uid or saved.no_uid:
        log.warning("save_uids: %d rows without a uid and %d with a malformed one were left out of %s (first keys: %s)",
                    saved.no_uid, saved.bad_uid, path, ", ".join(saved.left_out_keys[:5]))
    return saved
