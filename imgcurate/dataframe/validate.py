"""Decode-check every image still in play (``imgcurate reshard --validate-images``)."""

from __future__ import annotations

def validate_images(df, *, on_error: str = "report", storage_options: dict | None = None, max_pixels: int | None = None):
    """Turn rows whose image does not decode into failure rows, leaving the image bytes as they are.

    Every image still in play is decoded with Pillow (JPEGs at reduced scale); one that is not an
    image, is corrupt or truncated becomes ``decode_error``, one over ``max_pixels`` (default: the
    decoder's limit, Pillow's own) ``image_too_large``, refused from its header without decoding.
    Rows without an image are left alone. ``on_error`` is the failure policy. This is what
    ``imgcurate reshard --validate-images`` adds before copying.
    """
    from ..common.errors import check_on_error
    from ..ops.decode import DEFAULT_MAX_PIXELS
    from ..ops.validate import validate_partition

    check_on_error(on_error)
    options = dict(on_error=on_error, storage_options=storage_options, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    meta = validate_partition(df._meta, **options)
    return df.map_partitions(validate_partition, **options, meta=meta)
