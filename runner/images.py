"""When is a figure stale? Pixels, not bytes: PNG bytes change with zlib, libpng and matplotlib
versions while the picture does not. Two figures are the same when they have the same size and
at most `TOLERANCE` of their pixels differ by more than `CHANNEL_DELTA` in some channel (text
anti-aliasing moves a few edge pixels between FreeType versions). Pure: bytes in, bool out."""

from __future__ import annotations

import io

TOLERANCE = 0.005  # share of pixels allowed to differ
CHANNEL_DELTA = 16  # out of 255


def same_picture(old: bytes, new: bytes) -> bool:
    if old == new:
        return True
    from PIL import Image, ImageChops  # only when a figure changed bytes: most runs never do

    try:
        a, b = (Image.open(io.BytesIO(data)).convert("RGBA") for data in (old, new))
    except (OSError, ValueError):  # not a picture: only equal bytes are the same
        return False
    if a.size != b.size:
        return False
    difference = ImageChops.difference(a, b)
    channels = difference.split()
    mask = channels[0].point(lambda v: 255 if v > CHANNEL_DELTA else 0)
    for channel in channels[1:]:
        mask = ImageChops.lighter(mask, channel.point(lambda v: 255 if v > CHANNEL_DELTA else 0))
    changed = mask.histogram()[255]
    return changed <= TOLERANCE * a.size[0] * a.size[1]
