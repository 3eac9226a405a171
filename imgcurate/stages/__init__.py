"""The stage API: ``Pipeline`` and its stages, a thin layer over the dataframe core.

``base`` says what a stage is; ``readwrite`` holds the stages at both ends (shards in, shards
out), ``models`` the CLIP embedding and LAION score filters, ``dedup`` the deduplication; ``pipeline``
orders and runs them.
"""

from .base import Stage
from .dedup import ImageDeduplicationStage
from .models import ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage
from .pipeline import Pipeline, PipelineResult
from .readwrite import FilePartitioningStage, ImageReaderStage, ImageWriterStage

__all__ = [
    "Pipeline", "PipelineResult", "Stage", "FilePartitioningStage", "ImageReaderStage", "ImageEmbeddingStage",
    "ImageAestheticFilterStage", "ImageNSFWFilterStage", "ImageDeduplicationStage", "ImageWriterStage",
]
