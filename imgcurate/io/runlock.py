"""One write at a time into an output directory.

A run marks the directory it writes with a marker file and, on local filesystems, holds an
exclusive ``flock`` on that file until it has finished. The lock is what tells a run still
writing from one that died: the operating system drops it when its process ends, however it
ends, so a marker nobody holds was left by an interrupted run (the next run replaces its
leftovers), while a held one belongs to a live run (a second run is refused, instead of
deleting the first one's staged files under it). Object stores have no such locks: there, two
runs into one directory are not told apart.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from ..common.errors import OutputExistsError
from .paths import is_local_fs

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not told apart
    fcntl = None


def marker_held(fs, path: str) -> bool:
    """Whether a live run holds the marker at ``path`` (always False where there are no locks)."""
    if fcntl is None or not is_local_fs(fs):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file is closed below
    except BlockingIOError:
        return True
    except OSError:  # a filesystem without locks (NFS without its lock service, some FUSE): nothing to tell
        return False
    finally:
        os.close(fd)
    return False


def refuse_live_run(path: str) -> OutputExistsError:
    """The error for a directory another run is writing, saying which run when its marker tells."""
    directory, name = os.path.split(path)
    try:
        with open(path, "rb") as f:
            marker = json.loads(f.read() or b"{}")
        who = f" (pid {marker['pid']} on {marker['host']}, started {marker['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        who = ""
    return OutputExistsError(
        f"another imgcurate run is writing to {directory!r} now{who}: it holds {name}; "
        "wait for it to finish, or write somewhere else"
    )


class RunMarker:
    """The marker of the run in progress (see :func:`hold_marker`)."""

    def __init__(self, fs, path: str, fd: int | None):
        self.fs, self.path, self.fd = fs, path, fd

    def write(self, version: str) -> None:
        """Say who is writing: the start time, the imgcurate version, the process and host."""
        data = json.dumps({
            "started": datetime.now(timezone.utc).isoformat(), "imgcurate_version": version,
            "pid": os.getpid(), "host": socket.gethostname(),
        }).encode()
        if self.fd is None:
            with self.fs.open(self.path, "wb") as f:
                f.write(data)
        else:  # through the locked file: replacing it would drop the lock
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)


@contextmanager
def hold_marker(fs, directory: str, name: str) -> Iterator[RunMarker]:
    """Create ``directory`` and the marker ``name`` in it, and hold the marker while the body runs.

    Raises :class:`OutputExistsError` when another run holds it. The body removes the marker
    when the run has finished; the lock goes when the body ends, whatever happens.
    """
    fs.makedirs(directory, exist_ok=True)
    path = f"{directory}/{name}"
    if fcntl is None or not is_local_fs(fs):
        yield RunMarker(fs, path, None)
        return
    fd = _lock(path)
    try:
        yield RunMarker(fs, path, fd)
    finally:
        if fd is not None:
            os.close(fd)


def _lock(path: str) -> int | None:
    """The marker's file descriptor, locked; None where the filesystem has no locks."""
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise refuse_live_run(path) from None
        except OSError:  # no locks here (NFS without its lock service, some FUSE): write as before, unlocked
            os.close(fd)
            return None
        opened = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return fd
        os.close(fd)  # the run holding it finished and removed it meanwhile: lock the file there now
    raise refuse_live_run(path)
