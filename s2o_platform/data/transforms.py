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


def augment_pairs(sar: np.ndarray, optical: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random dihedral transform per sample, identical for SAR (B, C, H, W) and optical (B, 3, H, W)."""
    ks = rng.integers(0, 8, size=len(sar))
    sar_out = np.stack([dihedral(s, k) for s, k in zip(sar, ks)])
    opt_out = np.stack([dihedral(o, k) for o, k in zip(optical, ks)])
    return np.ascontiguousarray(sar_out), np.ascontiguousarray(opt_out)
