"""Which optical pixels are nodata: one rule for every source. Pure numpy.

A pixel is nodata when its file declares it (GeoTIFF nodata value or mask, NaN: the raster readers
turn those into NaN), or, where nothing is declared, when it is part of a *fill region*: zero in
every band within an all-zero square of at least FILL_BLOCK x FILL_BLOCK pixels. Measured on the
real SEN1-2 sample (../shared/data/real, 11 pairs, 256 px 8-bit PNGs): 4 of the 11 optical images
hold pure-black pixels (2, 50, 1 and 344 of 65,536), all of them real dark ground (water, shadow,
clipped by the 8-bit stretch; the 344 are a lake), and none lies in an all-zero 16 x 16 square
(the lake's largest all-zero squares are 8 x 8). Sensor fill (a Sentinel-2 swath edge, a granule's
empty corner) spans hundreds of pixels in every direction.
"""

from __future__ import annotations

import numpy as np

FILL_BLOCK = 16


def _box_sums(mask: np.ndarray, k: int) -> np.ndarray:
    """Sums of `mask` over every k x k box, indexed by the box's top-left corner: (H-k+1, W-k+1)."""
    integral = np.pad(mask.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]


def fill_region(zero: np.ndarray, block: int = FILL_BLOCK) -> np.ndarray:
    """(H, W) bool: the pixels of `zero` covered by at least one all-True block x block square
    (a morphological opening with that square)."""
    h, w = zero.shape
    if h < block or w < block:
        return np.zeros_like(zero, dtype=bool)
    full = (_box_sums(zero, block) == block * block).astype(np.int64)  # squares by top-left corner
    # A pixel (i, j) is covered when some full square has its top-left corner in [i-block+1, i] x [j-block+1, j].
    padded = np.pad(full, ((block - 1, block - 1), (block - 1, block - 1)))
    return _box_sums(padded, block)[:h, :w] > 0


def invalid_optical(window: np.ndarray, block: int = FILL_BLOCK) -> np.ndarray:
    """(bands, H, W) float with NaN for declared nodata -> (H, W) bool: declared nodata or fill region."""
    declared = np.isnan(window).any(axis=0)
    zero = (np.nan_to_num(window) == 0).all(axis=0) & ~declared
    return declared | fill_region(zero, block)
