"""imgcurate's tiny open_clip config, ``imgcurate-tiny-vit``.

A two-layer, 64-wide ViT on 64-pixel images with a 768-wide embedding (the width LAION's heads
take). It only ever has random weights: tests use it to run every stage in seconds, and the demo
uses it, labelled as random, where trained weights cannot be downloaded.
"""

from pathlib import Path

import open_clip

TINY_MODEL = "imgcurate-tiny-vit"
open_clip.add_model_config(Path(__file__).parent / "configs" / f"{TINY_MODEL}.json")
