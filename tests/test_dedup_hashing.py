"""hash_images on real photos: SHA-256 of the stored bytes, and pHash as imagehash computes it.

imagehash is the reference: at full size our bits equal ``str(imagehash.phash(Image.open(...)))``
on every photo and variant; with the default JPEG draft decoding they stay within 2 bits and no
near-duplicate decision at the default threshold changes.
"""

from __future__ import annotations

import hashlib
import io
import itertools

import imagehash
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import imgcurate
from imgcurate.dataframe.duplicates import DEFAULT_MAX_DISTANCE
from imgcurate.ops.hashing import DRAFT_SIDE, phash_image, phash_to_int64

from conftest import build_photo_dataset, png_bytes, write_tar


def reencoded(data: bytes, quality: int = 70) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def halved(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.resize((image.width // 2, image.height // 2), Image.LANCZOS).save(out, format="JPEG", quality=90)
    return out.getvalue()


def png_to_jpeg(data: bytes) -> bytes:
    return reencoded(png_bytes(data), quality=75)


VARIANTS = {"q70": reencoded, "half": halved, "png_to_jpeg": png_to_jpeg}


def reference(data: bytes) -> int:
    return int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def photo_variants(photos) -> list[tuple[str, bytes]]:
    """Every photo, its PNG, and its three variants."""
    out = []
    for photo in photos:
        data = photo.read_bytes()
        out += [(photo.stem, data), (f"{photo.stem}.png", png_bytes(data))]
        out += [(f"{photo.stem}.{name}", make(data)) for name, make in VARIANTS.items()]
    return out


@pytest.fixture(scope="module")
def images(photos) -> list[tuple[str, bytes]]:
    return photo_variants(photos)


def test_full_size_phash_is_imagehash_bit_for_bit(images):
    for name, data in images:
        assert phash_image(data, draft_side=None) == reference(data), name


def test_draft_decoding_stays_within_two_bits_and_changes_no_decision(real_photos):
    """A claim about real photographs (the README's measurement), so not made of generated stand-ins."""
    photos = real_photos
    differing = [hamming(phash_image(data), reference(data)) for _, data in photo_variants(photos)]
    assert np.mean(np.array(differing) <= 2) >= 0.99
    for photo in photos:
        data = photo.read_bytes()
        for make in VARIANTS.values():
            variant = make(data)
            ours = hamming(phash_image(data), phash_image(variant))
            theirs = hamming(reference(data), reference(variant))
            assert (ours <= DEFAULT_MAX_DISTANCE) == (theirs <= DEFAULT_MAX_DISTANCE)
            assert ours <= DEFAULT_MAX_DISTANCE  # the default finds re-encodes, downscales, PNG->JPEG
    originals = [phash_image(p.read_bytes()) for p in photos]
    assert min(hamming(a, b) for a, b in itertools.combinations(originals, 2)) > DEFAULT_MAX_DISTANCE


def test_hash_images_columns_match_the_bytes_with_and_without_images_in_the_frame(tmp_path, photos):
    samples = build_photo_dataset(tmp_path / "wds", photos)
    expected_sha = [hashlib.sha256(s["image"]).hexdigest() for s in samples]
    expected_phash = [f"{phash_image(s['image'], DRAFT_SIDE):016x}" for s in samples]
    for with_images in (True, False):
        frame = imgcurate.hash_images(imgcurate.read_webdataset(tmp_path / "wds", with_images=with_images)).compute(
            scheduler="threads")
        assert frame.image_sha256.tolist() == expected_sha
        assert frame.phash.tolist() == expected_phash
    exact = imgcurate.hash_images(imgcurate.read_webdataset(tmp_path / "wds"), "phash", draft_side=None).compute(
        scheduler="threads")
    assert exact.phash.tolist() == [str(imagehash.phash(Image.open(io.BytesIO(s["image"])))) for s in samples]
    assert "image_sha256" not in exact.columns


def test_undecodable_and_missing_images_are_failures_with_null_hashes(tmp_path, photos):
    good = photos[0].read_bytes()
    write_tar(tmp_path / "00000.tar", [
        ("a.jpg", good),
        ("b.jpg", good[: len(good) // 3]),  # truncated
        ("c.jpg", bytes(range(256)) * 4),  # not an image
        ("d.txt", b"a caption without an image"),
        ("e.jpg", good),
    ])
    frame = imgcurate.hash_images(imgcurate.read_webdataset(tmp_path, with_images=False)).compute(scheduler="threads")
    by_key = frame.set_index("key")
    assert by_key.loc["a", "phash"] == by_key.loc["e", "phash"] and by_key.loc["a", "error"] is pd_na()
    assert by_key.loc["b", "error"] == "hash_decode_error" and by_key.loc["c", "error"] == "hash_decode_error"
    assert by_key.loc["d", "error"] == "no_image"
    for key in "bcd":
        assert by_key.loc[key, "phash"] is pd_na() and by_key.loc[key, "image_sha256"] is pd_na()
    # never duplicates of each other, and counted by the writer under their reasons
    result = imgcurate.write_webdataset(imgcurate.dedup(imgcurate.read_webdataset(tmp_path, with_images=False), "phash"),
                                        tmp_path / "out", images_per_tar=10)
    assert result.counts["failed_by_reason"] == {"hash_decode_error": 2, "no_image": 1}
    assert result.samples == 1  # e is a copy of a


def pd_na():
    import pandas as pd

    return pd.NA


def test_phash_text_to_bits():
    values = pa.array(["8000000000000001", None, "ffffffffffffffff", "not hex at all!!", "0123456789ABCDEF", "abc"])
    bits, valid = phash_to_int64(values)
    assert valid.tolist() == [True, False, True, False, True, False]
    assert bits.view(np.uint64)[[0, 2, 4]].tolist() == [0x8000000000000001, 0xFFFFFFFFFFFFFFFF, 0x0123456789ABCDEF]
    assert bits[[1, 3, 5]].tolist() == [0, 0, 0]


def test_kinds_and_draft_side_are_checked_before_any_work(tmp_path, photos):
    build_photo_dataset(tmp_path, photos[:3], shards=1)
    df = imgcurate.read_webdataset(tmp_path)
    with pytest.raises(ValueError, match="kinds"):
        imgcurate.hash_images(df, ("md5",))
    with pytest.raises(ValueError, match="draft_side"):
        imgcurate.hash_images(df, draft_side=0)
