"""Decoding image bytes into model pixels, checked against open_clip's own preprocessing on the real photos.

Tolerances are mean absolute differences in 0–255 pixel levels:

* where no JPEG draft scaling happens (PNG, WebP, and JPEGs whose shorter side is under twice the
  model's size, as every photo here is at 224 px) imgcurate's pixels equal open_clip's (≤ 0.01);
* at the tiny model's 64 px, libjpeg scales the photos by 1/4 while decoding before the bicubic
  resize, so pixels differ slightly from resizing the full decode (measured: 0.5–0.6 mean, at most
  2.3 for one photo; allowed: 1.0 overall, 3.0 per photo). test_embed checks that the embeddings agree;
* open_clip resizes RGBA images with premultiplied alpha and then drops alpha, imgcurate drops alpha
  first (measured 0.8 on a photo with an alpha ramp; allowed 1.5).
"""

from __future__ import annotations

import io
import resource
import struct
import time
import warnings
import zlib

import numpy as np
import open_clip
import pytest
from PIL import Image

from imgcurate.models import TINY_MODEL, CLIPImageEmbedder
from imgcurate.ops.decode import DecodeFailure, Preprocess, decode_batch, decode_image

EXACT = 0.01
TINY_OVERALL, TINY_PER_IMAGE = 1.0, 3.0
ALPHA = 1.5


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def photo(photos) -> Image.Image:
    image = Image.open(photos[1])  # a 640×400 landscape photo
    image.load()
    return image


@pytest.fixture(scope="module")
def open_clip_preprocessing():
    """size → (imgcurate's Preprocess, open_clip's own transform, mean, std): the tiny model's and ViT-B-32's."""
    _, _, tiny_transform = open_clip.create_model_and_transforms(TINY_MODEL)
    configs = {}
    for model, transform in ((TINY_MODEL, tiny_transform), ("ViT-B-32", None)):
        embedder = CLIPImageEmbedder(model, pretrained=None if model == TINY_MODEL else "openai", device="cpu")
        config = embedder.preprocess
        if transform is None:
            transform = open_clip.image_transform(224, is_train=False, mean=config["mean"], std=config["std"])
        configs[Preprocess.from_open_clip(config).size] = (Preprocess.from_open_clip(config), transform,
                                                          np.asarray(config["mean"]), np.asarray(config["std"]))
    assert sorted(configs) == [64, 224]
    return configs


def open_clip_pixels(transform, mean, std, image: Image.Image) -> np.ndarray:
    """open_clip's model input for ``image``, back in 0–255 HWC pixel levels."""
    tensor = transform(image).permute(1, 2, 0).numpy().astype(np.float64)
    return (tensor * std + mean) * 255.0


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def formats(photo: Image.Image) -> dict[str, tuple[bytes, Image.Image, float, float]]:
    """name → (bytes, the image open_clip is given, tolerance at 64 px, tolerance at 224 px)."""
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, photo.width).astype(np.uint8), (photo.height, 1))))
    gray, cmyk, palette = photo.convert("L"), photo.convert("CMYK"), photo.convert("P")
    cases = {
        "jpeg": (encode(photo, "JPEG", quality=90), TINY_OVERALL, EXACT),
        "png": (encode(photo, "PNG"), EXACT, EXACT),
        "webp": (encode(photo, "WEBP", quality=90), EXACT, EXACT),
        "grayscale-jpeg": (encode(gray, "JPEG"), TINY_OVERALL, EXACT),
        "cmyk-jpeg": (encode(cmyk, "JPEG"), TINY_OVERALL, EXACT),
        "rgba-png": (encode(rgba, "PNG"), ALPHA, ALPHA),
    }
    out = {name: (data, Image.open(io.BytesIO(data)), tiny, full) for name, (data, tiny, full) in cases.items()}
    # open_clip resizes palette images with nearest neighbour; imgcurate converts to RGB first, so it is
    # compared with open_clip on the RGB image
    data = encode(palette, "PNG")
    out["palette-png"] = (data, Image.open(io.BytesIO(data)).convert("RGB"), EXACT, EXACT)
    return out


@pytest.mark.parametrize("size", [64, 224])
def test_formats_match_open_clip_preprocessing(photo, open_clip_preprocessing, size):
    prep, transform, mean, std = open_clip_preprocessing[size]
    for name, (data, reference_image, tiny_tolerance, full_tolerance) in formats(photo).items():
        pixels = decode_image(data, prep)
        assert pixels.dtype == np.uint8 and pixels.shape == (size, size, 3), name
        reference = open_clip_pixels(transform, mean, std, reference_image)
        difference = mean_abs_diff(pixels, reference)
        assert difference <= (tiny_tolerance if size == 64 else full_tolerance), (name, difference)


@pytest.mark.parametrize("size", [64, 224])
def test_exif_orientation_is_applied(photo, open_clip_preprocessing, size):
    prep, transform, mean, std = open_clip_preprocessing[size]
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels must be turned 90° clockwise to be seen upright
    data = encode(photo, "JPEG", quality=90, exif=exif.tobytes())
    stored = Image.open(io.BytesIO(data))
    upright = stored.transpose(Image.Transpose.ROTATE_270)  # the physically rotated image (PIL turns counter-clockwise)
    pixels = decode_image(data, prep)
    assert pixels.shape == (size, size, 3)
    assert mean_abs_diff(pixels, open_clip_pixels(transform, mean, std, upright)) <= (TINY_OVERALL if size == 64 else EXACT)
    assert mean_abs_diff(pixels, open_clip_pixels(transform, mean, std, stored)) > 20  # orientation does matter here


@pytest.mark.parametrize("size", [64, 224])
def test_all_photos_match_open_clip_preprocessing(real_photos, open_clip_preprocessing, size):
    photos = real_photos
    prep, transform, mean, std = open_clip_preprocessing[size]
    decoded = decode_batch([p.read_bytes() for p in photos], prep)
    differences = [mean_abs_diff(pixels, open_clip_pixels(transform, mean, std, Image.open(p)))
                   for p, pixels in zip(photos, decoded)]
    if size == 64:
        assert np.mean(differences) <= TINY_OVERALL and max(differences) <= TINY_PER_IMAGE, differences
    else:
        assert max(differences) <= EXACT, differences


@pytest.mark.parametrize("resize_mode", ["longest", "squash"])
def test_other_resize_modes_match_open_clip(photo, resize_mode):
    data = encode(photo, "PNG")
    transform = open_clip.image_transform(64, is_train=False, mean=(0, 0, 0), std=(1, 1, 1), resize_mode=resize_mode)
    pixels = decode_image(data, Preprocess(64, resize_mode=resize_mode))
    reference = transform(Image.open(io.BytesIO(data))).permute(1, 2, 0).numpy() * 255.0
    assert pixels.shape == (64, 64, 3)
    assert mean_abs_diff(pixels, reference) <= EXACT
    if resize_mode == "longest":  # a landscape photo fitted inside the square: black bars above and below
        assert pixels[0].max() == 0 and pixels[-1].max() == 0 and pixels[32].max() > 0


def test_small_image_is_upscaled(photo):
    pixels = decode_image(encode(photo.resize((10, 7)), "PNG"), Preprocess(64))
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8


# -- failures -----------------------------------------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` RGB pixels, with one tiny IDAT: a few dozen bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def failure_reason(data: bytes, prep: Preprocess = Preprocess(64)) -> str:
    with pytest.raises(DecodeFailure) as err:
        decode_image(data, prep)
    return err.value.reason


def test_bad_bytes_are_decode_errors(photos):
    jpeg = photos[0].read_bytes()
    png = encode(Image.open(photos[0]), "PNG")
    assert failure_reason(jpeg[: len(jpeg) // 2]) == "decode_error"
    assert failure_reason(png[: len(png) // 2]) == "decode_error"
    assert failure_reason(np.random.default_rng(0).bytes(5000)) == "decode_error"
    assert failure_reason(b"") == "decode_error"
    assert failure_reason(jpeg[:200]) == "decode_error"  # header only


def test_gigapixel_header_is_rejected_before_decoding(monkeypatch):
    data = png_header_only(40_000, 40_000)
    assert len(data) < 100
    with monkeypatch.context() as unlimited:  # a well-formed PNG (valid CRCs) of that size, not garbage
        unlimited.setattr(Image, "MAX_IMAGE_PIXELS", None)
        image = Image.open(io.BytesIO(data))
        assert image.size == (40_000, 40_000)
        image.verify()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assert failure_reason(data) == "image_too_large"
    assert time.perf_counter() - start < 0.5
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 64 * 1024  # the 4.8 GB of pixels were never allocated


def test_pixel_limit_comes_from_the_preprocess(photos):
    # 12000×12000 is between Pillow's warning and error thresholds: imgcurate's own limit rejects it
    assert failure_reason(png_header_only(12_000, 12_000)) == "image_too_large"
    data = photos[0].read_bytes()
    width, height = Image.open(photos[0]).size
    assert decode_image(data, Preprocess(64, max_pixels=width * height)).shape == (64, 64, 3)
    assert failure_reason(data, Preprocess(64, max_pixels=width * height - 1)) == "image_too_large"


def test_decode_batch_returns_failures_in_place(photos):
    good = photos[0].read_bytes()
    results = decode_batch([good, b"", good[:300], png_header_only(40_000, 40_000), good], Preprocess(64))
    assert [type(r).__name__ for r in results] == ["ndarray", "DecodeFailure", "DecodeFailure", "DecodeFailure", "ndarray"]
    assert [r.reason for r in results if isinstance(r, DecodeFailure)] == ["decode_error", "decode_error", "image_too_large"]
    assert np.array_equal(results[0], results[4])
    assert decode_batch([], Preprocess(64)) == []


def test_decoding_threads_leave_warning_filters_alone(photos):
    """Decoding in the thread pool must not leak a changed warnings filter into the process."""
    before = list(warnings.filters)
    batch = [b"not an image"] * 1000 + [p.read_bytes() for p in photos[:8]]
    for _ in range(5):
        decode_batch(batch, Preprocess(64))
        assert warnings.filters == before
