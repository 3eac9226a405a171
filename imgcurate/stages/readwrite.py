"""The stages at both ends of a pipeline: which shards, reading them, writing the result."""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..common.errors import PipelineError, check_on_error
from .base import Context, Stage, ignore_engine_options


class FilePartitioningStage(Stage):
    """Find the input shards; ``files_per_partition`` shards become one partition."""

    name = "partition"

    def __init__(self, file_paths: str | Sequence[str], files_per_partition: int = 1,
                 file_extensions: Sequence[str] = (".tar",), storage_options: dict | None = None, **engine_options):
        ignore_engine_options(self, engine_options)
        self.file_paths = file_paths
        self.files_per_partition = files_per_partition
        self.file_extensions = tuple(file_extensions)
        self.storage_options = storage_options

    def validate(self, context: Context) -> None:
        from ..io.paths import expand_shards

        if not isinstance(self.files_per_partition, int) or self.files_per_partition < 1:
            raise PipelineError(f"files_per_partition must be a positive integer, got {self.files_per_partition!r}")
        try:
            context.shards = expand_shards(self.file_paths, self.storage_options, suffixes=self.file_extensions)
        except (FileNotFoundError, ValueError) as exc:
            raise PipelineError(f"input: {exc}") from exc
        context.files_per_partition = self.files_per_partition
        context.storage_options = self.storage_options


class ImageReaderStage(Stage):
    """Read the shards into the dataframe (image bytes stay in the shards unless ``with_images``)."""

    name = "read"
    failure_reasons = ("truncated_sample",)

    def __init__(self, with_images: bool = False, sidecar_parquet: bool | str = "auto", on_error: str = "report",
                 verbose: bool = False, **engine_options):
        ignore_engine_options(self, engine_options)
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
    """Write WebDataset shards of exactly ``images_per_tar`` samples plus Parquet metadata."""

    name = "write"

    def __init__(self, output_dir: str, images_per_tar: int = 1000, remove_image_data: bool = True, verbose: bool = False,
                 overwrite: bool = False, keep_dropped: bool = False, storage_options: dict | None = None,
                 deterministic_name: bool = True, **engine_options):
        ignore_engine_options(self, engine_options)
        self.output_dir = output_dir
        self.images_per_tar = images_per_tar
        self.remove_image_data = remove_image_data
        self.verbose = verbose
        self.overwrite = overwrite
        self.keep_dropped = keep_dropped
        self.storage_options = storage_options
        self.deterministic_name = deterministic_name  # names are always deterministic here

    def validate(self, context: Context) -> None:
        from ..io.paths import filesystem
        from ..io.outputdir import check_output_dir

        if isinstance(self.images_per_tar, bool) or not isinstance(self.images_per_tar, int) or self.images_per_tar < 1:
            raise PipelineError(f"images_per_tar must be a positive integer, got {self.images_per_tar!r}")
        fs, root = filesystem(self.output_dir, self.storage_options)
        try:
            check_output_dir(fs, root, self.overwrite)
        except (FileExistsError, NotADirectoryError) as exc:
            raise PipelineError(str(exc)) from exc

    def write(self, df, context: Context, manifest_extra: dict[str, Any]):
        from ..io.writer import write_webdataset

        return write_webdataset(
            df, self.output_dir, images_per_tar=self.images_per_tar, remove_image_data=self.remove_image_data,
            overwrite=self.overwrite, storage_options=self.storage_options,
            source_storage_options=context.storage_options, keep_dropped=self.keep_dropped,
            progress=self.verbose, manifest_extra=manifest_extra,
        )
