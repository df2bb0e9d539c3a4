"""When is a figure stale? Pixels, not bytes: PNG bytes change with zlib, libpng and matplotlib
versions while the picture does not. Two figures are the same when they have the same size and
at most `TOLERANCE` of their pixels differ by more than `CHANNEL_DELTA` in some channel (text
anti-aliasing moves a few edge pixels between FreeType versions). Pure: bytes in, a verdict
out (`same_picture`) or what differs (`difference`); and whether bytes from a kernel are a PNG
at all (`png_problem`)."""

from __future__ import annotations

import io

TOLERANCE = 0.005  # share of pixels allowed to differ
CHANNEL_DELTA = 16  # out of 255
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_problem(data: bytes, max_pixels: int) -> str:
    """Why `data` is not a figure the runner keeps ("" when it is one): it must be a PNG as
    Pillow reads it (signature, header, every chunk and its CRC; `verify`, which decodes no
    pixels) of `max_pixels` at most (a small file can hold a huge picture, which comparing it
    would decode)."""
    if not data.startswith(PNG_SIGNATURE):
        return "not a PNG"
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                width, height = image.size
                image.verify()
    except Exception:  # what Pillow's parser raises on a broken file varies
        return "not a PNG"
    if width * height > max_pixels:
        return f"{width}x{height} pixels, over the {max_pixels:,} a figure may have"
    return ""


def same_picture(old: bytes, new: bytes) -> bool:
    return difference(old, new) is None


def difference(old: bytes, new: bytes) -> str | None:
    """None when the two are the same picture; else what differs, in words: "size 640x480 ->
    800x600", "12.5 % of pixels differ by more than 16/255", or "not a picture" (a file that
    cannot be read as an image, unless its bytes are equal)."""
    if old == new:
        return None
    from PIL import Image, ImageChops  # only when a figure changed bytes: most runs never do

    try:
        a, b = (Image.open(io.BytesIO(data)).convert("RGBA") for data in (old, new))
    except (OSError, ValueError):  # not a picture: only equal bytes are the same
        return "not a picture"
    if a.size != b.size:
        return f"size {a.size[0]}x{a.size[1]} -> {b.size[0]}x{b.size[1]}"
    channels = ImageChops.difference(a, b).split()
    mask = channels[0].point(lambda v: 255 if v > CHANNEL_DELTA else 0)
    for channel in channels[1:]:
        mask = ImageChops.lighter(mask, channel.point(lambda v: 255 if v > CHANNEL_DELTA else 0))
    changed = mask.histogram()[255]
    if changed <= TOLERANCE * a.size[0] * a.size[1]:
        return None
    share = 100 * changed / (a.size[0] * a.size[1])
    return f"{share:.3g} % of pixels differ by more than {CHANNEL_DELTA}/255"
