"""The stage API: ``Pipeline`` and its stages, a thin layer over the dataframe core."""

from .pipeline import Pipeline, PipelineResult
from .stages import (
    FilePartitioningStage, ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage, ImageReaderStage,
    ImageWriterStage, Stage,
)

__all__ = [
    "Pipeline", "PipelineResult", "Stage", "FilePartitioningStage", "ImageReaderStage", "ImageEmbeddingStage",
    "ImageAestheticFilterStage", "ImageNSFWFilterStage", "ImageWriterStage",
]
