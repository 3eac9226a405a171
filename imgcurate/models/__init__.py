"""Models: CLIP image embeddings (open_clip) and LAION's aesthetic and NSFW heads."""

from .clip import CLIPImageEmbedder, CLIPModel, resolve_model
from .heads import AestheticScorer, NSFWScorer
from .tiny import TINY_MODEL
from .weights import weights_home

__all__ = ["CLIPModel", "CLIPImageEmbedder", "AestheticScorer", "NSFWScorer", "TINY_MODEL", "resolve_model", "weights_home"]
