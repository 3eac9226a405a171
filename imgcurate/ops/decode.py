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

For a model on a GPU, :func:`decode_batch_on_device` decodes JPEGs with nvJPEG
(``torchvision.io.decode_jpeg`` on the GPU) and resizes them there, in batches whose
full-resolution pixels fit a byte budget (:func:`plan_gpu_batches`). Which images go there is
decided per image from the header (:func:`nvjpeg_route`): only those nvJPEG decodes as the CPU path
does; EXIF orientation is applied on the GPU (:func:`orient`), everything else takes the CPU path.
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

from ..common.backend import decoder_for

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


# GPU decoding keeps at most this many bytes of full-resolution pixels on the device at once (one
# image larger than that is decoded alone); see docs/gpu.md for the whole bound per worker
GPU_DECODE_BYTES = 256 * 2**20
_ORIENTATIONS = range(1, 9)


@dataclass(frozen=True)
class Route:
    """Where an image is decoded when its model runs on a GPU, decided from its header alone.

    ``cpu_reason`` is None for JPEGs nvJPEG decodes as the CPU path would (after :func:`orient`),
    else why the CPU decoder takes the image. ``channels`` × ``pixels`` bytes is its size decoded
    at full resolution; ``orientation`` its EXIF orientation (1–8, 1 when it has none)."""

    cpu_reason: str | None
    pixels: int = 0
    channels: int = 3
    orientation: int = 1

    @property
    def decoded_bytes(self) -> int:
        return self.pixels * self.channels


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation :func:`ImageOps.exif_transpose` applies (1 when none, or not one of 1–8)."""
    orientation = image.getexif().get(0x0112, 1)
    return orientation if orientation in _ORIENTATIONS else 1


def nvjpeg_route(image: Image.Image, data: bytes, prep: Preprocess) -> Route:
    """Whether nvJPEG can decode ``image`` (opened by :func:`_open`, header only) the way :func:`decode_image` does.

    The CPU path applies EXIF orientation, converts CMYK and Adobe-RGB JPEGs with libjpeg's rules,
    decodes progressive JPEGs at reduced scale, and refuses truncated files. nvJPEG ignores EXIF (the
    orientation is applied on the GPU afterwards, :func:`orient`) and its colour conversion assumes
    YCbCr or grey, and it decodes progressive JPEGs one at a time with the Huffman stage on the host:
    those, CMYK, RGB-coded JPEGs, files without an end-of-image marker and resize modes other than
    open_clip's default go to the CPU decoder, so the result does not depend on where it ran.
    """
    pixels = image.size[0] * image.size[1]
    if image.format != "JPEG":
        return Route(f"{image.format or 'unknown'} image", pixels)
    if prep.resize_mode != "shortest":
        return Route(f"resize mode {prep.resize_mode}", pixels)
    if image.mode not in ("RGB", "L"):
        return Route(f"{image.mode} JPEG", pixels)
    if image.info.get("progressive"):
        return Route("progressive JPEG", pixels)
    component_ids = tuple(layer[0] for layer in getattr(image, "layer", ()))
    if image.mode == "RGB" and (image.info.get("adobe_transform") == 0 or component_ids == (82, 71, 66)):  # "R", "G", "B"
        return Route("RGB-coded JPEG", pixels)
    if not data.rstrip(b"\0")[-2:] == b"\xff\xd9":
        return Route("no end-of-image marker", pixels)
    try:
        orientation = _orientation(image)
    except Exception:  # noqa: BLE001 - Pillow raises many kinds on bad EXIF; the CPU path then decides
        return Route("unreadable EXIF", pixels)
    return Route(None, pixels, 1 if image.mode == "L" else 3, orientation)


def plan_gpu_batches(decoded_bytes: Sequence[int], budget: int = GPU_DECODE_BYTES) -> list[list[int]]:
    """Positions of images grouped, in order, into batches decoded together on the GPU: each batch's
    full-resolution pixels fit in ``budget`` bytes, except an image larger than the budget, which is a batch alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    held = 0
    for position, size in enumerate(decoded_bytes):
        if current and held + size > budget:
            batches.append(current)
            current, held = [], 0
        current.append(position)
        held += size
    if current:
        batches.append(current)
    return batches


def orient(pixels, orientation: int):
    """A (channels, height, width) torch tensor turned as :func:`ImageOps.exif_transpose` turns an
    image with EXIF ``orientation`` (1–8)."""
    import torch

    if orientation == 2:
        return pixels.flip(2)
    if orientation == 3:
        return pixels.flip((1, 2))
    if orientation == 4:
        return pixels.flip(1)
    if orientation == 5:
        return pixels.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(pixels, -1, (1, 2))
    if orientation == 7:
        return pixels.transpose(1, 2).flip((1, 2))
    if orientation == 8:
        return torch.rot90(pixels, 1, (1, 2))
    return pixels


def finish_on_device(pixels, orientation: int, prep: Preprocess):
    """A decoded (channels, height, width) uint8 tensor → the model's (size, size, 3) uint8 pixels on
    the same device: EXIF orientation, grey to RGB, bicubic antialiased resize of the shorter side, centre crop."""
    import torch
    from torch.nn.functional import interpolate

    pixels = orient(pixels, orientation)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    height, width = pixels.shape[1:]
    target_w, target_h = _resized_size(width, height, prep.size, "shortest")
    if (target_w, target_h) != (width, height):
        pixels = interpolate(pixels[None].float(), size=(target_h, target_w), mode=prep.interpolation,
                             antialias=True, align_corners=False).clamp_(0, 255).round_().to(torch.uint8)[0]
    top, left = int(round((target_h - prep.size) / 2.0)), int(round((target_w - prep.size) / 2.0))
    return pixels[:, top : top + prep.size, left : left + prep.size].permute(1, 2, 0).contiguous()


def _decode_jpegs(data: list, grey: list[bool], device: str) -> list:
    """torchvision's ``decode_jpeg`` on ``device`` (nvJPEG on CUDA) for a batch, greyscale images kept as
    one channel; a batch that fails is decoded image by image, and an image that fails is None."""
    import torchvision.io as tvio

    decoded: list = [None] * len(data)
    for mode, wanted in ((tvio.ImageReadMode.RGB, False), (tvio.ImageReadMode.GRAY, True)):
        rows = [i for i, is_grey in enumerate(grey) if is_grey == wanted]
        if not rows:
            continue
        try:
            for row, image in zip(rows, tvio.decode_jpeg([data[i] for i in rows], mode=mode, device=device)):
                decoded[row] = image
        except RuntimeError:  # one image nvJPEG cannot decode fails the whole batch
            for row in rows:
                try:
                    decoded[row] = tvio.decode_jpeg(data[row], mode=mode, device=device)
                except RuntimeError:
                    decoded[row] = None
    return decoded


def decode_batch_on_device(images: Sequence[bytes], prep: Preprocess, device: str = "cuda",
                           budget: int = GPU_DECODE_BYTES) -> list:
    """Decode for a model on ``device``: the JPEGs :func:`nvjpeg_route` sends there are decoded by
    torchvision on that device (nvJPEG on CUDA) in batches of at most ``budget`` bytes of full-resolution
    pixels, each image resized before the next batch is decoded; the rest, and any image the device
    decoder refuses, take the CPU path. Items are uint8 tensors (size, size, 3) on ``device``, or
    :class:`DecodeFailure` (from the CPU path, so failures are the same wherever the model runs)."""
    import torch

    results: list = [None] * len(images)
    on_device: list[tuple[int, Route]] = []
    for i, data in enumerate(images):
        try:
            image = _open(data, prep)
        except DecodeFailure as failure:
            results[i] = failure
            continue
        route = nvjpeg_route(image, data, prep)
        if route.cpu_reason is None:
            on_device.append((i, route))
    for batch in plan_gpu_batches([route.decoded_bytes for _, route in on_device], budget):
        chosen = [on_device[position] for position in batch]
        decoded = _decode_jpegs([torch.frombuffer(bytearray(images[row]), dtype=torch.uint8) for row, _ in chosen],
                                [route.channels == 1 for _, route in chosen], device)
        for j, (row, route) in enumerate(chosen):
            if decoded[j] is not None:
                results[row] = finish_on_device(decoded[j], route.orientation, prep)
                decoded[j] = None  # the full-resolution pixels go as soon as the image is resized
    rest = [i for i, result in enumerate(results) if result is None]
    for i, pixels in zip(rest, decode_batch([images[i] for i in rest], prep)):
        results[i] = pixels if isinstance(pixels, DecodeFailure) else torch.from_numpy(pixels).to(device)
    return results


def decode_batch_cuda(images: Sequence[bytes], prep: Preprocess, device: str = "cuda") -> list:
    """:func:`decode_batch_on_device` on a CUDA device (nvJPEG)."""
    return decode_batch_on_device(images, prep, device)


def decode_for_device(images: Sequence[bytes], prep: Preprocess, device: str) -> list:
    """Decode where the model runs, with the decoder the backend chooses for ``device``
    (:func:`imgcurate.common.backend.decoder_for`): nvJPEG for a GPU, the CPU thread pool otherwise."""
    if decoder_for(device) == "nvjpeg":
        return decode_batch_on_device(images, prep, device)
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
