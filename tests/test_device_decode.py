"""Decoding for a model on a GPU, checked on the CPU: which images nvJPEG may take (decided from the
header), EXIF orientation applied to decoded tensors as Pillow applies it, the byte budget on
full-resolution pixels, and the whole device path run with torchvision's CPU JPEG decoder standing in
for nvJPEG (the same calls; tests/test_gpu.py runs them with nvJPEG on a GPU).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from imgcurate.common.backend import decoder_for
from imgcurate.ops import decode as decode_module
from imgcurate.ops.decode import (
    DecodeFailure, Preprocess, _open, decode_batch, decode_batch_on_device, nvjpeg_route, orient, plan_gpu_batches,
)

# mean absolute difference in pixel levels: torch's bicubic (a = -0.75, float) and Pillow's (a = -0.5,
# 8-bit passes) resize the same decode slightly differently. Measured 0.05-0.17 on the 30 photos at 224 px,
# where no draft scaling happens; at 64 px the CPU path's reduced-scale JPEG decoding adds up to 2.3
DEVICE_VS_CPU = 0.5


def jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, **options)
    return out.getvalue()


def with_orientation(image: Image.Image, orientation: int, **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(image, exif=exif, **options)


@pytest.fixture(scope="module")
def photo(photos) -> Image.Image:
    image = Image.open(photos[1]).convert("RGB")  # 640×400, landscape: a wrong rotation shows
    image.load()
    return image


@pytest.fixture(scope="module")
def cases(photo) -> dict[str, bytes]:
    """A real photo encoded every way the router tells apart."""
    png = io.BytesIO()
    photo.save(png, format="PNG")
    baseline = jpeg(photo)
    cases = {
        "baseline": baseline,
        "grayscale": jpeg(photo.convert("L")),
        "cmyk": jpeg(photo.convert("CMYK")),
        "progressive": jpeg(photo, progressive=True),
        "png": png.getvalue(),
        "truncated": baseline[: len(baseline) * 2 // 3],
        "padded after the end": baseline + b"\0" * 64,
        "grayscale rotated": with_orientation(photo.convert("L"), 6),
    }
    cases.update({f"exif {k}": with_orientation(photo, k) for k in range(2, 9)})
    return cases


EXPECTED_ROUTES = {
    "baseline": None, "grayscale": None, "padded after the end": None, "grayscale rotated": None,
    **{f"exif {k}": None for k in range(2, 9)},
    "cmyk": "CMYK JPEG", "progressive": "progressive JPEG", "png": "PNG image", "truncated": "no end-of-image marker",
}


def test_routes_are_decided_from_the_header(cases, photo):
    prep = Preprocess(224)
    for name, data in cases.items():
        route = nvjpeg_route(_open(data, prep), data, prep)
        assert route.cpu_reason == EXPECTED_ROUTES[name], name
        assert route.pixels == photo.width * photo.height
    grey = nvjpeg_route(_open(cases["grayscale rotated"], prep), cases["grayscale rotated"], prep)
    assert (grey.channels, grey.orientation, grey.decoded_bytes) == (1, 6, photo.width * photo.height)
    assert nvjpeg_route(_open(cases["exif 8"], prep), cases["exif 8"], prep).orientation == 8
    squash = Preprocess(224, resize_mode="squash")
    assert nvjpeg_route(_open(cases["baseline"], squash), cases["baseline"], squash).cpu_reason == "resize mode squash"


def test_orientation_on_tensors_is_pillows(cases):
    for k in range(1, 9):
        data = cases[f"exif {k}"] if k > 1 else cases["baseline"]
        image = Image.open(io.BytesIO(data))
        raw = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)  # as decoded, EXIF not applied
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        turned = orient(raw, nvjpeg_route(image, data, Preprocess()).orientation).permute(1, 2, 0).numpy()
        assert turned.shape == expected.shape and np.array_equal(turned, expected), k


def test_batches_hold_at_most_the_budget_of_full_resolution_pixels(photos):
    # bytes of RGB pixels of the photos' headers, at eight scales (thumbnails to 2.5 times their size)
    sizes = [3 * int(w * (1 + i % 8) / 3) * int(h * (1 + i % 8) / 3) for i, (w, h) in
             enumerate(Image.open(p).size for p in photos)]
    assert len(set(sizes)) > 8
    for budget in (1, min(sizes), int(np.median(sizes)) * 3, sum(sizes) // 4, sum(sizes)):
        batches = plan_gpu_batches(sizes, budget)
        assert [p for batch in batches for p in batch] == list(range(len(sizes)))  # every image once, in order
        for batch in batches:
            assert len(batch) == 1 or sum(sizes[p] for p in batch) <= budget
        # and no two neighbouring batches would have fitted together
        for first, second in zip(batches, batches[1:]):
            assert sum(sizes[p] for p in first) + sizes[second[0]] > budget
    assert plan_gpu_batches(sizes, sum(sizes)) == [list(range(len(sizes)))]
    assert plan_gpu_batches([], 10) == []


def test_the_device_path_gives_the_cpu_paths_pixels_and_failures(cases):
    prep = Preprocess(224)
    names = list(cases) + ["empty", "not an image"]
    images = list(cases.values()) + [b"", b"not an image at all"]
    on_cpu = decode_batch(images, prep)
    on_device = decode_batch_on_device(images, prep, device="cpu")  # torchvision's libjpeg stands in for nvJPEG
    for name, cpu, device in zip(names, on_cpu, on_device):
        if isinstance(cpu, DecodeFailure):
            assert isinstance(device, DecodeFailure) and device.reason == cpu.reason, name
            continue
        assert isinstance(device, torch.Tensor) and device.dtype == torch.uint8 and tuple(device.shape) == cpu.shape, name
        difference = np.abs(device.numpy().astype(float) - cpu.astype(float)).mean()
        assert difference < DEVICE_VS_CPU, (name, difference)  # a wrong turn or colour conversion differs by tens
    assert [name for name, r in zip(names, on_cpu) if isinstance(r, DecodeFailure)] == ["truncated", "empty", "not an image"]


def test_the_budget_bounds_each_decode_call_and_not_the_result(photos, monkeypatch):
    prep = Preprocess(64)
    images = [p.read_bytes() for p in photos[:12]]
    unbounded = decode_batch_on_device(images, prep, device="cpu", budget=2**40)
    calls: list[list[int]] = []
    original = decode_module._decode_jpegs

    def recording(data, grey, device):
        decoded = original(data, grey, device)
        calls.append([t.numel() for t in decoded if t is not None])  # bytes of full-resolution pixels at once
        return decoded

    monkeypatch.setattr(decode_module, "_decode_jpegs", recording)
    budget = 2 * max(Image.open(io.BytesIO(data)).width * Image.open(io.BytesIO(data)).height * 3 for data in images)
    bounded = decode_batch_on_device(images, prep, device="cpu", budget=budget)
    assert len(calls) > 2 and sum(len(c) for c in calls) == len(images)
    assert all(len(c) == 1 or sum(c) <= budget for c in calls)
    assert all(torch.equal(a, b) for a, b in zip(bounded, unbounded))


def test_the_backend_chooses_the_decoder():
    assert decoder_for("cuda") == decoder_for("cuda:1") == "nvjpeg"
    assert decoder_for("cpu") == decoder_for("mps") == "cpu"


# nvJPEG's IDCT and chroma upsampling are not libjpeg's: a little more than torchvision's CPU decoder
NVJPEG_VS_CPU = 2.0
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_nvjpeg_gives_the_cpu_paths_pixels_and_failures(cases, monkeypatch):
    prep = Preprocess(224)
    decoded_on_gpu: list[int] = []
    original = decode_module._decode_jpegs

    def recording(data, grey, device):
        decoded = original(data, grey, device)
        decoded_on_gpu.extend(t.shape[1] * t.shape[2] for t in decoded if t is not None)
        return decoded

    monkeypatch.setattr(decode_module, "_decode_jpegs", recording)
    names, images = list(cases), list(cases.values())
    on_cpu = decode_batch(images, prep)
    on_gpu = decode_batch_on_device(images, prep, device="cuda")
    # every image the router sends to nvJPEG was decoded there (none fell back to the CPU)
    assert len(decoded_on_gpu) == sum(reason is None for reason in EXPECTED_ROUTES.values())
    for name, cpu, gpu in zip(names, on_cpu, on_gpu):
        if isinstance(cpu, DecodeFailure):
            assert isinstance(gpu, DecodeFailure) and gpu.reason == cpu.reason, name
            continue
        assert gpu.is_cuda and gpu.dtype == torch.uint8 and tuple(gpu.shape) == cpu.shape, name
        difference = np.abs(gpu.cpu().numpy().astype(float) - cpu.astype(float)).mean()
        assert difference < NVJPEG_VS_CPU, (name, difference)


@pytest.mark.gpu
@needs_cuda
def test_gpu_decoding_holds_at_most_the_budget_of_full_resolution_pixels(photos):
    prep = Preprocess(224)
    images = [p.read_bytes() for p in photos]
    largest = max(np.prod(Image.open(p).size) for p in photos)
    budget = 4 * 2**20

    def peak(budget: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        results = decode_batch_on_device(images, prep, device="cuda", budget=budget)
        torch.cuda.synchronize()
        assert all(isinstance(r, torch.Tensor) for r in results)
        return torch.cuda.max_memory_allocated() - before

    decode_batch_on_device(images[:2], prep, device="cuda")  # nvJPEG's handle and buffers, outside the measure
    bounded, unbounded = peak(budget), peak(2**40)
    crops = len(images) * 3 * prep.size**2
    # the budget's pixels (or one image), one image's float32 copy while it is resized, and the crops kept
    assert bounded <= max(budget, 3 * largest) + 16 * largest + crops + 2**20, bounded
    assert unbounded > bounded
