"""Paired augmentation: the same dihedral transform (flips, 90-degree rotations) for SAR and optical.

SAR geometry has a look direction, but for tile-level translation the eight symmetries of the
square are label-preserving: the optical image transforms with the SAR exactly.
"""

from __future__ import annotations

import numpy as np


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """Apply symmetry k in 0..7 to the last two axes: rotate by 90*(k % 4) degrees, then flip if k >= 4."""
    out = np.rot90(array, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return out


def augment_pairs(
    sar: np.ndarray, optical: np.ndarray, rng: np.random.Generator, *aligned: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Random dihedral transform per sample, identical for SAR (B, C, H, W), optical (B, 3, H, W) and any
    further per-pixel arrays (B, ..., H, W) such as the validity mask; returns them in the same order."""
    ks = rng.integers(0, 8, size=len(sar))
    return tuple(
        np.ascontiguousarray(np.stack([dihedral(a, k) for a, k in zip(array, ks)]))
        for array in (sar, optical, *aligned)
    )
