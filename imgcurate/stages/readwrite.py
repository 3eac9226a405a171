"""The stages at both ends of a pipeline: which shards, reading them, writing the result."""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..common.errors import PipelineError, check_on_error
from .base import Context, Stage, accept_engine_options

SHARD_EXTENSIONS = (".tar", ".tar.gz", ".tgz")


def _bytes(size: int | str) -> int:
    """``blocksize`` as bytes: a number, or text such as ``"512MB"`` / ``"1GiB"``."""
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(size)) if isinstance(size, str) else int(size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"blocksize {size!r} is not a size in bytes ({exc})") from exc


class FilePartitioningStage(Stage):
    """Find the input shards; ``files_per_partition`` shards (or about ``blocksize`` bytes of them) become
    one partition; ``limit`` keeps the first partitions only."""

    name = "partition"

    def __init__(self, file_paths: str | Sequence[str], files_per_partition: int | None = None,
                 blocksize: int | str | None = None, file_extensions: Sequence[str] | None = None,
                 storage_options: dict | None = None, limit: int | None = None, name: str | None = None, **engine_options):
        accept_engine_options(self, engine_options, name)
        self.file_paths = file_paths
        self.files_per_partition = files_per_partition
        self.blocksize = blocksize
        self.file_extensions = tuple(file_extensions) if file_extensions is not None else SHARD_EXTENSIONS
        self.storage_options = storage_options
        self.limit = limit

    def validate(self, context: Context) -> None:
        from ..io.paths import expand_shards

        if self.files_per_partition is not None and self.blocksize is not None:
            raise PipelineError("give files_per_partition or blocksize, not both")
        per_partition = 1 if self.files_per_partition is None else self.files_per_partition
        if isinstance(per_partition, bool) or not isinstance(per_partition, int) or per_partition < 1:
            raise PipelineError(f"files_per_partition must be a positive integer, got {self.files_per_partition!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise PipelineError(f"limit must be a positive integer, got {self.limit!r}")
        try:
            shards = expand_shards(self.file_paths, self.storage_options, suffixes=self.file_extensions)
            if self.blocksize is not None:
                per_partition = self._files_per_block(shards)
        except (FileNotFoundError, ValueError) as exc:
            raise PipelineError(str(exc)) from exc  # each of these messages names the input or parameter at fault
        context.shards = shards[: self.limit * per_partition] if self.limit else shards
        context.files_per_partition = per_partition
        context.storage_options = self.storage_options

    def _files_per_block(self, shards: list[str]) -> int:
        """How many shards of the mean size (of the first 64) make about ``blocksize`` bytes."""
        from ..io.paths import filesystem

        block = _bytes(self.blocksize)
        if block < 1:
            raise ValueError(f"blocksize must be positive, got {self.blocksize!r}")
        sizes = [filesystem(url, self.storage_options)[0].size(filesystem(url, self.storage_options)[1]) for url in shards[:64]]
        mean = sum(sizes) / len(sizes) if sizes else block
        return max(1, round(block / max(mean, 1)))


class ImageReaderStage(Stage):
    """Read the shards into the dataframe (image bytes stay in the shards unless ``with_images``)."""

    name = "read"
    failure_reasons = ("truncated_sample",)

    def __init__(self, with_images: bool = False, sidecar_parquet: bool | str = "auto", on_error: str = "report",
                 verbose: bool = False, name: str | None = None, **engine_options):
        accept_engine_options(self, engine_options, name)
        self.with_images = with_images
        self.sidecar_parquet = sidecar_parquet
        self.on_error = on_error
        self.verbose = verbose

    def validate(self, context: Context) -> None:
        try:
            check_on_error(self.on_error)
        except ValueError as exc:
            raise PipelineError(str(exc)) from exc

    def apply(self, df, context: Context):
        from ..io.reader import read_webdataset

        df = read_webdataset(context.shards, with_images=self.with_images, sidecar_parquet=self.sidecar_parquet,
                             storage_options=context.storage_options, on_error=self.on_error)
        if context.files_per_partition > 1:
            df = df.repartition(npartitions=math.ceil(df.npartitions / context.files_per_partition))
        return df


class ImageWriterStage(Stage):
    """Write WebDataset shards of exactly ``images_per_tar`` samples plus Parquet metadata.

    ``remove_image_data=False`` also keeps each image's bytes in the Parquet metadata.
    ``deterministic_name`` is accepted for NeMo: names here are always deterministic (``00000.tar``, …).
    """

    name = "write"

    def __init__(self, output_dir: str, images_per_tar: int = 1000, remove_image_data: bool = True, verbose: bool = False,
                 overwrite: bool = False, keep_dropped: bool = False, storage_options: dict | None = None,
                 deterministic_name: bool = True, name: str | None = None, **engine_options):
        accept_engine_options(self, engine_options, name)
        self.output_dir = output_dir
        self.images_per_tar = images_per_tar
        self.remove_image_data = remove_image_data
        self.verbose = verbose
        self.overwrite = overwrite
        self.keep_dropped = keep_dropped
        self.storage_options = storage_options
        self.deterministic_name = deterministic_name

    def validate(self, context: Context) -> None:
        from ..io.outputdir import check_output_dir
        from ..io.paths import filesystem, full_url
        from ..io.writer import check_images_per_tar, refuse_inputs_inside_output

        try:
            check_images_per_tar(self.images_per_tar)
            fs, root = filesystem(self.output_dir, self.storage_options)
            refuse_inputs_inside_output(context.shards, full_url(fs, root))
            check_output_dir(fs, root, self.overwrite)
        except (ValueError, FileExistsError, NotADirectoryError) as exc:
            raise PipelineError(str(exc)) from exc

    def write(self, df, context: Context, manifest_extra: dict[str, Any]):
        from ..io.writer import write_webdataset

        return write_webdataset(
            df, self.output_dir, images_per_tar=self.images_per_tar, remove_image_data=self.remove_image_data,
            overwrite=self.overwrite, storage_options=self.storage_options,
            source_storage_options=context.storage_options, keep_dropped=self.keep_dropped,
            progress=self.verbose, manifest_extra=manifest_extra,
        )
