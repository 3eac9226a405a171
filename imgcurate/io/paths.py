"""Expand a user's ``urlpath`` into an ordered list of shard URLs.

Accepted: a directory (its ``.tar``, ``.tar.gz`` and ``.tgz`` files), a glob, a brace
range such as ``data/{00000..00009}.tar``, a single file, or a list of any of these; local
paths or any fsspec URL. Directories and globs are listed in sorted order; explicit lists and
brace ranges keep the order given.
"""

from __future__ import annotations

import os
from typing import Sequence

import fsspec
from braceexpand import braceexpand
from fsspec.core import url_to_fs

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_shard_name(path: str) -> bool:
    return path.endswith(SHARD_SUFFIXES)


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` and the path within it."""
    return url_to_fs(url, **(storage_options or {}))


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URL that names ``path`` on its own: absolute for local files, ``proto://`` otherwise."""
    if is_local_fs(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def writable_path(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Like :func:`filesystem`, creating the parent directory on filesystems that have them."""
    fs, path = filesystem(url, storage_options)
    if is_local_fs(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return fs, path


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def expand_shards(
    urlpath: str | os.PathLike | Sequence[str | os.PathLike],
    storage_options: dict | None = None,
    suffixes: Sequence[str] = SHARD_SUFFIXES,
) -> list[str]:
    """Shard URLs named by ``urlpath``, in order, without duplicates."""
    items = [urlpath] if isinstance(urlpath, (str, os.PathLike)) else list(urlpath)
    if not items:
        raise ValueError("no input path given")
    shards: list[str] = []
    for item in items:
        for pattern in braceexpand(os.fspath(item)):
            shards.extend(_expand_one(pattern, storage_options, tuple(suffixes)))
    if not shards:
        raise FileNotFoundError(f"no WebDataset shards ({', '.join(suffixes)}) found at {urlpath!r}")
    seen: set[str] = set()
    for shard in shards:
        if shard in seen:
            raise ValueError(f"shard {shard!r} is named twice in the input; each shard may be read once")
        seen.add(shard)
    return shards


def _expand_one(pattern: str, storage_options: dict | None, suffixes: tuple[str, ...]) -> list[str]:
    fs, path = filesystem(pattern, storage_options)
    if any(ch in path for ch in "*?["):
        matches = sorted(p for p in fs.glob(path) if p.endswith(suffixes) and fs.isfile(p))
        if not matches:
            raise FileNotFoundError(f"no shards match {pattern!r}")
        return [full_url(fs, p) for p in matches]
    if fs.isdir(path):
        listing = sorted(
            entry["name"] for entry in fs.ls(path, detail=True)
            if entry["name"].endswith(suffixes) and (entry["type"] == "file" or fs.isfile(entry["name"]))  # symlinks too
        )
        if not listing:
            raise FileNotFoundError(f"directory {pattern!r} holds no shards ({', '.join(suffixes)})")
        return [full_url(fs, p) for p in listing]
    if not fs.exists(path):
        raise FileNotFoundError(f"input {pattern!r} does not exist")
    return [full_url(fs, path)]


def sidecar_url(shard_url: str) -> str:
    """``00000.tar`` → ``00000.parquet`` (img2dataset's layout)."""
    for suffix in SHARD_SUFFIXES:
        if shard_url.endswith(suffix):
            return shard_url[: -len(suffix)] + ".parquet"
    raise ValueError(f"not a shard name: {shard_url!r}")
