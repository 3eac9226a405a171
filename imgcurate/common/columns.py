"""Names and types of the columns imgcurate itself produces.

A sample is one row. Columns in order of appearance (see README, "Dataframe columns"):

* ``key``: the WebDataset key (member path up to the first dot of its basename);
* ``image`` (bytes, only with ``with_images=True``), ``image_ext``, ``image_nbytes``;
* ``caption`` (from ``.txt``), ``cls`` (from ``.cls``, when the dataset has it);
* one column per ``.json`` field and per sidecar-Parquet column, one bytes column per other
  component extension;
* ``extra_json`` / ``extra_members``: JSON fields and components that did not fit the
  schema inferred from the first shard (nothing is dropped);
* ``source_shard``, ``source_index`` (sample order in its shard);
* ``error``, ``error_member``, ``error_detail``: set on failure rows only;
* ``_image_offset``: where the image bytes start in the (decompressed) source shard, so the
  writer and the decoder can fetch them by byte range; ``_arrow_schema``: on the cudf backend
  only, the partition's Arrow schema (see :func:`imgcurate.common.backend.to_cudf_layout`).
  Columns starting with ``_`` are internal and never written.
"""

from __future__ import annotations

import pyarrow as pa

KEY = "key"
IMAGE = "image"
IMAGE_EXT = "image_ext"
IMAGE_NBYTES = "image_nbytes"
CAPTION = "caption"
CLS = "cls"
EXTRA_JSON = "extra_json"
EXTRA_MEMBERS = "extra_members"
SOURCE_SHARD = "source_shard"
SOURCE_INDEX = "source_index"
ERROR = "error"
ERROR_MEMBER = "error_member"
ERROR_DETAIL = "error_detail"
IMAGE_OFFSET = "_image_offset"
ARROW_SCHEMA = "_arrow_schema"
DROPPED_BY = "dropped_by"
EMBEDDING = "embedding"
EMBEDDING_MODEL = "embedding_model"  # CLIPModel.model_id of what made `embedding` (and `text_embedding`)
TEXT_EMBEDDING = "text_embedding"
CLIP_SCORE = "clip_score"
# why an image that is fine has no text embedding or clip score: common/errors.CAPTION_REASONS (not a failure)
CAPTION_PROBLEM = "caption_problem"
CAPTION_LANGUAGE = "caption_language"
UID = "uid"  # DataComp's sample id: 32 hexadecimal digits, from the .json or the sidecar Parquet
ORIGINAL_WIDTH = "original_width"  # img2dataset's size of the image before it resized it
ORIGINAL_HEIGHT = "original_height"
IMAGE_WIDTH = "image_width"  # the stored image's size, read from its header (basic filter, without img2dataset's)
IMAGE_HEIGHT = "image_height"
AESTHETIC_SCORE = "aesthetic_score"
NSFW_SCORE = "nsfw_score"
# deduplication (imgcurate.hash_images, imgcurate.mark_duplicates)
IMAGE_SHA256 = "image_sha256"
PHASH = "phash"
IS_DUPLICATE = "is_duplicate"
DUPLICATE_OF = "duplicate_of"
PHASH_DISTANCE = "phash_distance"
CLUSTER = "cluster"
MAX_SIMILARITY = "max_similarity"

ERROR_COLUMNS = (ERROR, ERROR_MEMBER, ERROR_DETAIL)
EXTRA_MEMBERS_TYPE = pa.map_(pa.string(), pa.binary())

# Columns the reader fills itself; a .json field or sidecar column of the same name never
# overwrites them (see io/schema.py for how such values are kept).
READER_COLUMNS = (
    KEY, IMAGE, IMAGE_EXT, IMAGE_NBYTES, CAPTION, CLS, EXTRA_JSON, EXTRA_MEMBERS,
    SOURCE_SHARD, SOURCE_INDEX, *ERROR_COLUMNS, IMAGE_OFFSET,
)

# Not written into a sample's .json: the image itself, what the tar member names already
# say, provenance of this particular copy, and vectors (Parquet only) with the name of the model
# that made them (one value for the whole run, so it stays beside the vectors and in the manifest).
NOT_IN_SAMPLE_JSON = (
    KEY, IMAGE, IMAGE_EXT, IMAGE_NBYTES, CAPTION, CLS, EXTRA_JSON, EXTRA_MEMBERS,
    SOURCE_SHARD, SOURCE_INDEX, *ERROR_COLUMNS, DROPPED_BY, EMBEDDING, TEXT_EMBEDDING, EMBEDDING_MODEL,
)


def is_internal(name: str) -> bool:
    return name.startswith("_")


def embedding_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


# the one earlier sample a duplicate duplicates, named as the reader names every sample
DUPLICATE_OF_TYPE = pa.struct([(SOURCE_SHARD, pa.string()), (SOURCE_INDEX, pa.int64())])
