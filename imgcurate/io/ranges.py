"""Byte ranges of source files, fetched or copied without going through a dataframe.

Rows carry where their image lies (shard URL, offset, size). :class:`RangeSource` serves those
ranges: ``pread`` on local files, ranged reads through a read-ahead cache on remote ones, a
forward-only decompressing reader on ``.tar.gz`` shards. :class:`ShardSink` writes an output
file and, when source and output are both local, copies ranges in the kernel
(``os.copy_file_range``) so image bytes never enter Python.
"""

from __future__ import annotations

import errno
import gzip
import os
from typing import BinaryIO

from .paths import filesystem, is_local_fs, writable_path
from .tar import is_compressed_shard

READ_AHEAD = 8 * 2**20  # remote reads: fetch 8 MiB at a time, so neighbouring images come in one request


class RangeSource:
    """Serve byte ranges of many files, keeping each open for the life of the object."""

    def __init__(self, storage_options: dict | None = None):
        self.storage_options = storage_options
        self._local: dict[str, int] = {}
        self._remote: dict[str, BinaryIO] = {}
        self._gzip: dict[str, tuple[BinaryIO, gzip.GzipFile]] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def local_fd(self, url: str) -> int | None:
        """An OS file descriptor for ``url`` when it is an uncompressed local file."""
        if is_compressed_shard(url):
            return None
        if url not in self._local:
            fs, path = filesystem(url, self.storage_options)
            if not is_local_fs(fs):
                return None
            self._local[url] = os.open(path, os.O_RDONLY)
        return self._local[url]

    def read(self, url: str, offset: int, size: int) -> bytes:
        if is_compressed_shard(url):
            return self._read_gzip(url, offset, size)
        fd = self.local_fd(url)
        if fd is not None:
            data = os.pread(fd, size, offset)
        else:
            f = self._remote.get(url)
            if f is None:
                fs, path = filesystem(url, self.storage_options)
                f = self._remote[url] = fs.open(path, "rb", block_size=READ_AHEAD, cache_type="readahead")
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(errno.EIO, f"{url} ended before byte {offset + size} (got {len(data)} of {size} bytes)")
        return data

    def _read_gzip(self, url: str, offset: int, size: int) -> bytes:
        # Decompression only runs forward: reopen when asked to go back.
        opened = self._gzip.get(url)
        if opened is None or opened[1].tell() > offset:
            if opened is not None:
                opened[1].close()
                opened[0].close()
            fs, path = filesystem(url, self.storage_options)
            raw = fs.open(path, "rb")
            opened = self._gzip[url] = (raw, gzip.GzipFile(fileobj=raw, mode="rb"))
        stream = opened[1]
        stream.seek(offset)
        data = stream.read(size)
        if len(data) != size:
            raise OSError(errno.EIO, f"{url} ended before byte {offset + size} of its tar stream")
        return data

    def close(self) -> None:
        for fd in self._local.values():
            os.close(fd)
        for f in self._remote.values():
            f.close()
        for raw, stream in self._gzip.values():
            stream.close()
            raw.close()
        self._local.clear()
        self._remote.clear()
        self._gzip.clear()


class ShardSink:
    """A file being written: local (an OS file descriptor) or any fsspec file."""

    def __init__(self, url: str, storage_options: dict | None = None):
        fs, path = writable_path(url, storage_options)
        if is_local_fs(fs):
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._file = None
        else:
            self._fd = None
            self._file = fs.open(path, "wb")
        self._buffer = bytearray()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= 4 * 2**20:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        if self._fd is not None:
            written = 0
            with memoryview(self._buffer) as view:
                while written < len(view):
                    written += os.write(self._fd, view[written:])
        else:
            self._file.write(bytes(self._buffer))
        self._buffer.clear()

    def copy_range(self, source: RangeSource, url: str, offset: int, size: int) -> None:
        """Append ``size`` bytes of ``url`` from ``offset``: in the kernel when both are local."""
        src_fd = source.local_fd(url) if self._fd is not None else None
        if src_fd is None:
            self.write(source.read(url, offset, size))
            return
        self.flush()
        remaining, position = size, offset
        try:
            while remaining:
                copied = os.copy_file_range(src_fd, self._fd, remaining, position)
                if copied == 0:
                    raise OSError(errno.EIO, f"{url} ended before byte {offset + size}")
                remaining -= copied
                position += copied
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            # filesystems without copy_file_range: fall back to an ordinary read
            data = os.pread(src_fd, remaining, position)
            if len(data) != remaining:
                raise OSError(errno.EIO, f"{url} ended before byte {offset + size}") from exc
            self._buffer += data
        self.size += size

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        elif self._file is not None:
            self._file.close()
            self._file = None
