"""Decode image bytes into the model's input pixels.

The result must match open_clip's own preprocessing (resize the shorter side with bicubic
interpolation, centre crop, RGB), which the tests check on real photographs. Two things make it
faster than open_clip's path:

* JPEGs are decoded with Pillow's ``draft`` mode, which lets libjpeg downscale by 1/2, 1/4 or 1/8
  while decoding; the scale chosen keeps the shorter side at least the model's size, so the final
  bicubic resize still does the antialiasing;
* a batch is decoded in a thread pool (Pillow releases the GIL while decoding and resizing).

Bad bytes never raise out of :func:`decode_batch`: each failure comes back as a
:class:`DecodeFailure` with a reason code (``decode_error``, ``image_too_large``). The pixel limit
is checked from the image header, before any pixel is decoded.

On CUDA, :func:`decode_batch_cuda` decodes JPEGs with nvJPEG (``torchvision.io.decode_jpeg`` on
the GPU) and resizes on the GPU; other formats take the CPU path.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
# warnings.catch_warnings swaps process-wide state: decoding threads that enter and leave it
# interleaved would leave Pillow's bomb warning turned into an error for the whole process
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Preprocess:
    """What the model wants: square ``size``, resize and crop rules (open_clip's preprocess config)."""

    size: int = 224
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_open_clip(cls, config: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> "Preprocess":
        size = config["size"]
        size = size if isinstance(size, int) else int(size[0])
        return cls(size, config.get("interpolation", "bicubic"), config.get("resize_mode", "shortest"), max_pixels)


class DecodeFailure(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _resized_size(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    if mode == "squash":
        return size, size
    if mode == "longest":
        scale = size / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    # torchvision's Resize(int): the shorter side becomes `size`, the longer is truncated, not rounded
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _open(data: bytes, prep: Preprocess) -> Image.Image:
    if not data:
        raise DecodeFailure("decode_error", "empty image bytes")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():  # Image.open reads only the header: holding the lock is cheap
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeFailure("image_too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:  # its message names a memory address: keep failure lists reproducible
        raise DecodeFailure("decode_error", f"not an image format Pillow reads (starts with {data[:8].hex()})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeFailure("decode_error", f"{type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width * height > prep.max_pixels:
        raise DecodeFailure("image_too_large", f"{width}x{height} pixels is over the limit of {prep.max_pixels}")
    if width < 1 or height < 1:
        raise DecodeFailure("decode_error", f"image has no pixels ({width}x{height})")
    return image


def decode_image(data: bytes, prep: Preprocess) -> np.ndarray:
    """One image's bytes → uint8 (size, size, 3), as open_clip would feed the model."""
    image = _open(data, prep)
    try:
        if image.format == "JPEG" and prep.resize_mode == "shortest":
            width, height = image.size
            scale = prep.size / min(width, height)
            # draft() picks the smallest DCT scale that is still at least this big
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
        target = _resized_size(*image.size, prep.size, prep.resize_mode)
        if target != image.size:
            image = image.resize(target, _RESAMPLE.get(prep.interpolation, Image.BICUBIC))
        pixels = np.asarray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated or corrupt data
        raise DecodeFailure("decode_error", f"{type(exc).__name__}: {exc}") from exc
    return _center_crop(pixels, prep.size)


def _center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if height < size or width < size:  # "longest" mode: pad like open_clip's CenterCropOrPad (fill 0)
        padded = np.zeros((max(height, size), max(width, size), 3), dtype=np.uint8)
        top, left = (padded.shape[0] - height) // 2, (padded.shape[1] - width) // 2
        padded[top : top + height, left : left + width] = pixels
        pixels, height, width = padded, padded.shape[0], padded.shape[1]
    # torchvision's center_crop rounds the offsets
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return np.ascontiguousarray(pixels[top : top + size, left : left + size])


@lru_cache(maxsize=1)
def decode_pool() -> ThreadPoolExecutor:
    """One decoding thread pool per process, shared by every partition."""
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="imgcurate-decode")


def _decode_or_failure(data: bytes, prep: Preprocess) -> np.ndarray | DecodeFailure:
    try:
        return decode_image(data, prep)
    except DecodeFailure as failure:
        return failure


def decode_batch(images: Sequence[bytes], prep: Preprocess) -> list[np.ndarray | DecodeFailure]:
    """Decode many images in the process's thread pool; failures are returned in place."""
    return list(decode_pool().map(_decode_or_failure, images, [prep] * len(images)))


def decode_batch_cuda(images: Sequence[bytes], prep: Preprocess, device: str = "cuda") -> list:
    """nvJPEG on the GPU for JPEGs, the CPU path for the rest; items are uint8 CUDA tensors (size, size, 3)
    or :class:`DecodeFailure`."""
    import torch
    import torchvision.io as tvio
    from torch.nn.functional import interpolate

    results: list = [None] * len(images)
    jpeg_rows, jpeg_data = [], []
    for i, data in enumerate(images):
        try:
            image = _open(data, prep)
        except DecodeFailure as failure:
            results[i] = failure
            continue
        if image.format == "JPEG" and image.mode in ("RGB", "L") and prep.resize_mode == "shortest":
            jpeg_rows.append(i)
            jpeg_data.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    if jpeg_data:
        try:
            decoded = tvio.decode_jpeg(jpeg_data, mode=tvio.ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        except RuntimeError:  # one bad image fails the whole nvJPEG batch: decode them one by one
            decoded = []
            for data in jpeg_data:
                try:
                    decoded.append(tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB, device=device, apply_exif_orientation=True))
                except RuntimeError as exc:
                    decoded.append(DecodeFailure("decode_error", str(exc)))
        for row, image in zip(jpeg_rows, decoded):
            if isinstance(image, DecodeFailure):
                results[row] = image
                continue
            height, width = image.shape[1:]
            target_w, target_h = _resized_size(width, height, prep.size, "shortest")
            resized = interpolate(image[None].float(), size=(target_h, target_w), mode=prep.interpolation,
                                  antialias=True, align_corners=False).clamp_(0, 255).round_().to(torch.uint8)[0]
            top, left = int(round((target_h - prep.size) / 2.0)), int(round((target_w - prep.size) / 2.0))
            results[row] = resized[:, top : top + prep.size, left : left + prep.size].permute(1, 2, 0)
    rest = [i for i, r in enumerate(results) if r is None]
    for i, pixels in zip(rest, decode_batch([images[i] for i in rest], prep)):
        results[i] = pixels if isinstance(pixels, DecodeFailure) else torch.from_numpy(pixels).to(device)
    return results


def decode_for_device(images: Sequence[bytes], prep: Preprocess, device: str) -> list:
    """Decode where the model runs: nvJPEG when it runs on CUDA, the CPU thread pool otherwise."""
    if str(device).startswith("cuda"):
        return decode_batch_cuda(images, prep, device)
    return decode_batch(images, prep)


def validate_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise :class:`DecodeFailure` unless ``data`` is an image of at most ``max_pixels`` pixels that decodes.

    The pixel limit is checked from the header first, so a decompression bomb is refused without
    decoding it. JPEGs are decoded at 1/8 scale (draft mode): libjpeg still reads all the
    compressed data, so truncation and broken markers show up, at a fraction of the cost.
    """
    image = _open(data, Preprocess(max_pixels=max_pixels))
    try:
        if image.format == "JPEG":
            image.draft(image.mode, (1, 1))
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DecodeFailure("decode_error", f"{type(exc).__name__}: {exc}") from exc
