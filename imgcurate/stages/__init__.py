"""The stage API: ``Pipeline`` and its stages, a thin layer over the dataframe core.

``base`` says what a stage is; ``readwrite`` holds the stages at both ends (shards in, shards
out), ``models`` the CLIP embedding and LAION score filters, ``captions`` the image–text filters
and uid subsets, ``dedup`` the deduplication; ``pipeline`` orders and runs them.
"""

from .base import Stage
from .captions import ImageTextAlignmentFilterStage, ImageTextBasicFilterStage, UidSubsetStage
from .dedup import ImageDeduplicationStage
from .executors import DaskExecutor, RayActorPoolExecutor, RayClient, RayDataExecutor, XennaExecutor
from .models import ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage
from .pipeline import Pipeline, PipelineResult
from .readwrite import FilePartitioningStage, ImageReaderStage, ImageWriterStage

__all__ = [
    "Pipeline", "PipelineResult", "Stage", "FilePartitioningStage", "ImageReaderStage", "ImageEmbeddingStage",
    "ImageAestheticFilterStage", "ImageNSFWFilterStage", "ImageTextAlignmentFilterStage", "ImageTextBasicFilterStage",
    "UidSubsetStage", "ImageDeduplicationStage", "ImageWriterStage",
    "DaskExecutor", "XennaExecutor", "RayDataExecutor", "RayActorPoolExecutor", "RayClient",
]
