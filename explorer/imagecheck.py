"""Is a screenshot of a map painted? Used by the browser test and the dashboard benchmark."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def count_saturated_colors(png, *, min_saturation: float = 0.35, min_value: float = 0.25,
                           min_share: float = 0.002, levels: int = 8) -> int:
    """Number of distinct saturated colours in an image.

    Pixels that are grey, white or nearly black (HSV saturation below ``min_saturation``
    or value below ``min_value``) are ignored; the rest are binned into ``levels`` steps
    per RGB channel, and a bin counts when it holds at least ``min_share`` of all pixels
    (so anti-aliased edges do not add colours).

    Parameters
    ----------
    png
        PNG bytes, a path, or a PIL image.
    """
    image = png if isinstance(png, Image.Image) else Image.open(
        io.BytesIO(png) if isinstance(png, (bytes, bytearray)) else png)
    rgb = np.asarray(image.convert("RGB"), dtype=np.int32).reshape(-1, 3)
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.int32).reshape(-1, 3)
    keep = (hsv[:, 1] >= min_saturation * 255) & (hsv[:, 2] >= min_value * 255)
    if not keep.any():
        return 0
    step = 256 // levels
    q = rgb[keep] // step
    codes = (q[:, 0] * levels + q[:, 1]) * levels + q[:, 2]
    counts = np.bincount(codes, minlength=levels ** 3)
    return int((counts >= max(1, min_share * len(rgb))).sum())
