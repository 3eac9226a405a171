"""Error types and the failure policy.

Bad input never stops a job by accident. Every function that can meet bad input takes one
``on_error`` argument, and this module is the only place that interprets it:

* ``"report"`` (default): the problem becomes a *failure row* in the dataframe (columns
  ``error``, ``error_member``, ``error_detail``); the writer lists those rows in
  ``_failures/`` and counts them in ``_manifest.json``.
* ``"skip"``: the problem is dropped silently (counted nowhere).
* ``"raise"``: the first problem raises :class:`SampleError` (the CLI's ``--strict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

OnError = Literal["report", "skip", "raise"]
ON_ERROR_CHOICES = ("report", "skip", "raise")


class ImgcurateError(Exception):
    """Base class of every error imgcurate raises on purpose."""


class SampleError(ImgcurateError):
    """A shard, member or sample could not be used (raised under ``on_error="raise"``)."""

    def __init__(self, failure: "Failure"):
        self.failure = failure
        super().__init__(failure.describe())


class OutputExistsError(ImgcurateError, FileExistsError):
    """The output directory holds data and ``overwrite`` was not given."""


class PipelineError(ImgcurateError, ValueError):
    """A pipeline or its parameters are invalid; raised before any work starts."""


class WeightsNotFoundError(ImgcurateError, FileNotFoundError):
    """A model weight file is missing and cannot be downloaded."""


# Reason codes. A *sample* reason means the sample cannot be used at all; a *member* reason
# means one tar member was rejected (the sample it belonged to, if any, may still be fine).
SAMPLE_REASONS = {
    "truncated_sample": "the shard ends inside this sample",
    "no_image": "the sample has no image member",
    "decode_error": "the image bytes could not be decoded",
    "image_too_large": "the image exceeds the pixel limit",
    "unreadable_image": "the image bytes could not be read back from the source shard",
    "no_uid": "the sample has no uid, so it cannot be selected or saved by uid",
    "bad_uid": "the sample's uid is not 32 hexadecimal digits",
    "hash_decode_error": "the image could not be decoded to compute its perceptual hash (pHash)",
}
MEMBER_REASONS = {
    "unsafe_member_name": "member path is absolute or escapes the shard",
    "link_member": "symlink or hardlink member (never followed)",
    "special_member": "device, fifo or other non-regular member",
    "no_extension": "member name has no extension, so it belongs to no sample",
    "invalid_caption": "caption is not UTF-8 text",
    "invalid_json": ".json member does not parse as a JSON object",
    "invalid_cls": ".cls member is not an integer",
    "invalid_gzip": ".gz member does not decompress",
    "member_too_large": "member exceeds the size limit",
    "truncated_member": "the shard ends inside this member",
}
SHARD_REASONS = {
    "not_a_tar": "file is not a tar archive",
    "unreadable_shard": "shard could not be opened or read",
    "invalid_sidecar": "sidecar Parquet could not be read or has no 'key' column",
}
REASONS = {**SAMPLE_REASONS, **MEMBER_REASONS, **SHARD_REASONS}

# Not failures: why a sample whose image is fine has no text embedding and no CLIP score. The row
# stays in play with null ``text_embedding`` / ``clip_score`` and this code in ``caption_problem``;
# a CLIP-score filter drops it as ``clip_score:<code>``. A caption is never scored as empty text.
CAPTION_REASONS = {
    "no_caption": "the sample has no caption (no .txt member, or one that was rejected as invalid_caption)",
    "empty_caption": "the caption is empty or only whitespace",
}


@dataclass(frozen=True)
class Failure:
    """One rejected shard, member or sample."""

    reason: str
    detail: str
    shard: str | None = None
    member: str | None = None
    key: str | None = None

    def __post_init__(self):
        if self.reason not in REASONS:
            raise ValueError(f"unknown failure reason {self.reason!r}")

    @property
    def rejects_sample(self) -> bool:
        return self.reason in SAMPLE_REASONS

    def describe(self) -> str:
        where = ", ".join(
            f"{label} {value!r}"
            for label, value in (("shard", self.shard), ("member", self.member), ("key", self.key))
            if value
        )
        return f"{self.reason}: {self.detail}" + (f" ({where})" if where else "")


def check_on_error(on_error: str) -> OnError:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error  # type: ignore[return-value]


def apply_policy(failures: Iterable[Failure], on_error: OnError) -> list[Failure]:
    """Return the failures to keep as rows; raise or drop according to ``on_error``."""
    failures = list(failures)
    if on_error == "raise" and failures:
        raise SampleError(failures[0])
    if on_error == "skip":
        return []
    return failures
