"""The output directory: what imgcurate writes there, when it may write, and how a run publishes.

Names (README, "Output format"): ``NNNNN.tar`` / ``NNNNN.parquet`` shards, ``_metadata``,
``_index.json``, ``_manifest.json``, ``_failures/``, ``_dropped/``; while a run writes, its
staging in ``_imgcurate_tmp/`` and the ``_imgcurate_incomplete`` marker, on which the run holds a
lock (:mod:`~imgcurate.io.runlock`) until ``_manifest.json`` is written last.

A run that fails before publishing removes what it staged and leaves the directory as it found it;
a directory left by a killed run (its marker held by nobody) is replaced by the next run; any other
non-empty directory is refused unless ``overwrite``, and files imgcurate did not write are never
deleted.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Iterator

from ..common.errors import OutputExistsError
from .paths import full_url, is_local_fs
from .runlock import marker_held, refuse_live_run

log = logging.getLogger("imgcurate")

TMP_DIR = "_imgcurate_tmp"
MARKER = "_imgcurate_incomplete"
INDEX_FILE = "_index.json"
MANIFEST_FILE = "_manifest.json"
# Directories without a .parquet suffix, so that out/*.parquet and out/*.tar mean the shards and
# nothing else in every reader that expands the glob (DuckDB, polars, pandas over glob(), Python's
# glob: a directory named *.parquet matched them and broke them).
FAILURES_DIR = "_failures"
FAILURES_PART = "part-00000.parquet"
OLD_FAILURES_DIR = "_failures.parquet"  # where imgcurate 0.1 put them: recognised, and replaced by a new run
SUMMARY_FILE = "_metadata"  # the Parquet summary file, so dask.read_parquet(out) reads the shards only
DROPPED_DIR = "_dropped"
SHARD_FILE = re.compile(r"^\d{5,}\.(tar|parquet)$")
SHARD_PARQUET = re.compile(r"^\d{5,}\.parquet$")
OUR_FILES = {INDEX_FILE, MANIFEST_FILE, FAILURES_DIR, OLD_FAILURES_DIR, SUMMARY_FILE, DROPPED_DIR, TMP_DIR, MARKER}
INTERRUPTED, PREVIOUS = "interrupted run", "previous output"


def shard_name(number: int) -> str:
    """``00042``: output shards are numbered from 0, at least five digits."""
    return f"{number:05d}"


def shard_parquet_files(fs, directory: str) -> list[str]:
    """The ``NNNNN.parquet`` metadata files directly in ``directory`` (an output, or its ``_dropped/``), in shard order."""
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(directory, detail=False))
    return [full_url(fs, f"{directory}/{name}") for name in names if SHARD_PARQUET.match(name)]


def entries(fs, root: str) -> list[str]:
    """The names directly in ``root``; none when it is not a directory."""
    return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(root, detail=False)] if fs.isdir(root) else []


def check_output_dir(fs, root: str, overwrite: bool) -> str:
    """What writing to ``root`` would replace: ``""`` (nothing), :data:`INTERRUPTED` or :data:`PREVIOUS`.

    Raises :class:`OutputExistsError` where writing is refused; changes nothing.
    """
    if fs.exists(root) and not fs.isdir(root):
        raise NotADirectoryError(f"output {root!r} exists and is not a directory")
    names = entries(fs, root)
    if not names:
        return ""
    if MARKER in names and marker_held(fs, f"{root}/{MARKER}"):
        raise refuse_live_run(f"{root}/{MARKER}")
    foreign = sorted(n for n in names if n not in OUR_FILES and not SHARD_FILE.match(n))
    # staging without a marker: tasks of a failed run that were still running when it cleaned up
    interrupted = MARKER in names or TMP_DIR in names
    if foreign:
        left_by = f" (beside the leftovers of an interrupted imgcurate run, marked by {MARKER})" if interrupted else ""
        raise OutputExistsError(
            f"output directory {root!r} holds files imgcurate did not write ({', '.join(foreign[:5])}"
            f"{', …' if len(foreign) > 5 else ''}){left_by}; refusing to replace it, choose another directory"
        )
    if not (overwrite or interrupted):
        raise OutputExistsError(
            f"output directory {root!r} is not empty; pass overwrite=True (--overwrite) to replace the imgcurate output "
            f"there (a directory left by an interrupted run, marked by {MARKER}, is replaced without it)"
        )
    return INTERRUPTED if interrupted else PREVIOUS


def inside(path: str, directory: str) -> bool:
    """Whether ``path`` lies inside ``directory``."""
    return path.startswith(directory.rstrip("/") + "/")


def remove_staging(fs, root: str) -> None:
    if fs.exists(f"{root}/{TMP_DIR}"):
        fs.rm(f"{root}/{TMP_DIR}", recursive=True)


def clear_leftovers(fs, root: str, replacing: str) -> None:
    """Remove the staging an interrupted run left (the caller holds the marker, so none is running)."""
    if replacing == INTERRUPTED:
        log.warning("%s was left by an interrupted run: replacing it", root)
    remove_staging(fs, root)


@contextmanager
def withdrawn_on_error(fs, root: str, existed: bool, replacing: str) -> Iterator[None]:
    """Leave the output directory as it was found when the body raises (nothing is published yet).

    A marker found there stays: the leftovers of that earlier interrupted run are still there.
    """
    try:
        yield
    except BaseException:
        remove_staging(fs, root)
        if replacing != INTERRUPTED and fs.exists(f"{root}/{MARKER}"):
            fs.rm(f"{root}/{MARKER}")
        if not existed and is_local_fs(fs) and fs.isdir(root) and not entries(fs, root):
            fs.rmdir(root)
        raise


def publish_shards(fs, root: str, assembled: dict[str, dict[str, str]], local: bool) -> None:
    """Put the new shards in place and remove shards of an earlier output that are not replaced.

    ``assembled[directory]`` maps each new shard file name to where it was assembled: renamed
    into ``directory`` on local filesystems; on object stores shards were written in place.
    """
    for directory, files in assembled.items():
        for name in entries(fs, directory):
            if SHARD_FILE.match(name) and name not in files:
                fs.rm(f"{directory}/{name}")
        if local:
            if files:
                fs.makedirs(directory, exist_ok=True)
            for name in sorted(files):
                fs.mv(files[name], f"{directory}/{name}")
    dropped = f"{root}/{DROPPED_DIR}"
    if not assembled.get(dropped) and fs.exists(dropped):
        fs.rm(dropped, recursive=True)
