"""The WebDataset member rules, written once: this module is their specification.

* A member's **key** is its path up to the first dot of its basename (directories kept in the
  key), and the rest, lower-cased, its **extension**: ``a/b.seg.PNG`` is key ``a/b``, ext
  ``seg.png`` (the webdataset library's own regular expression, :data:`KEY_EXT`).
* **Grouping**: consecutive members with the same key form one sample; a key that comes back
  later, or an extension seen twice in a row, starts a new sample with the same key.
* **Names**: a leading ``./`` is stripped; absolute paths, ``..`` components, NUL bytes and names
  that are not UTF-8 are unsafe (rejected, never used).
* **Compression**: a ``.gz`` member other than a compressed image is inflated and takes the
  extension without ``.gz`` (``0001.txt.gz`` is the caption of ``0001``).
* A sample's **image** is its first member with an image extension (:data:`IMAGE_EXTENSIONS`).

The member-by-member scanner (:mod:`~imgcurate.io.samples`) applies these functions to every
member. The fast path for plain shards (:mod:`~imgcurate.io.tarindex` and its compiled twin,
``split_names`` in ``_fastio.c``) takes only names for which :func:`is_plain_name` holds, where
the rules reduce to "split at the first dot of the last path component"; tests/test_rules.py
holds both to these functions on random and hostile names.
"""

from __future__ import annotations

import re

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm", "pnm", "jp2", "avif"}
)
KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # the webdataset library's own rule
# characters of names the fast path takes as they are (no normalisation can change them)
PLAIN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+./,=@%~")


def split_key(name: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a member name, or None when it has no extension."""
    match = KEY_EXT.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def _strip_dot_slash(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` is unsafe to use as a member name, or None when it is safe."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "member name is not UTF-8"
    name = _strip_dot_slash(name)
    if not name:
        return "member name is empty"
    if name.startswith("/"):
        return "member path is absolute"
    if "\0" in name:
        return "member name contains a NUL byte"
    if any(part == ".." for part in name.split("/")):
        return "member path contains '..'"
    return None


def normalize_member_name(name: str) -> str | None:
    """The member name with leading ``./`` removed, or None if it is unsafe to use."""
    return None if unsafe_name_reason(name) else _strip_dot_slash(name)


def is_plain_name(name: str) -> bool:
    """Whether the fast path may take ``name`` as it is: not empty, only :data:`PLAIN_NAME_CHARS`,
    not absolute, no ``./`` prefix, no ``..`` component (so :func:`normalize_member_name` returns it
    unchanged)."""
    return (bool(name) and all(c in PLAIN_NAME_CHARS for c in name) and not name.startswith(("/", "./"))
            and ".." not in name.split("/"))


def is_image(ext: str) -> bool:
    return ext in IMAGE_EXTENSIONS


def inflates(ext: str) -> bool:
    """Whether a member with this extension is gunzipped (``.gz`` other than compressed images)."""
    return ext.endswith(".gz") and ext[:-3] not in IMAGE_EXTENSIONS


def component_ext(ext: str) -> str:
    """The extension a member takes in its sample (``txt.gz`` → ``txt``)."""
    return ext[:-3] if inflates(ext) else ext


def starts_new_sample(current_key: str | None, current_exts, key: str, ext: str) -> bool:
    """Whether a member (``key``, component extension ``ext``) starts a new sample after the current
    one (``current_key`` with extensions ``current_exts``; None before the first sample)."""
    return current_key is None or current_key != key or ext in current_exts
