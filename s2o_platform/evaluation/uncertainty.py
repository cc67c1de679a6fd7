"""Is a predicted uncertainty honest? Pure NumPy: how well a per-pixel spread ranks and predicts the actual error.

- `spearman`: the rank correlation of uncertainty and absolute error (ties get their average rank), 1.0 when
  the spread orders pixels exactly as their errors, 0 when it says nothing, negative when it misleads.
- `calibration_table`: pixels binned by predicted spread (equal-count bins by quantile), with the mean predicted
  spread and the mean actual absolute error per bin. An honest spread gives errors that rise with it; for a
  Gaussian error of standard deviation s the mean absolute error is s * sqrt(2 / pi), about 0.80 s.
"""

from __future__ import annotations

import numpy as np

#: Pixels per tile whose predicted spread and actual error `s2o eval --uncertainty` keeps (bounded memory on any
#: store: 256 of a 256 px tile's 65536 pixels still give tens of thousands of pixels per setting).
UNCERTAINTY_PIXELS_PER_TILE = 256

#: E|X| / sigma for a zero-mean Gaussian X: what a calibrated spread's bins show as error over spread.
GAUSSIAN_ABS_ERROR_PER_SIGMA = float(np.sqrt(2.0 / np.pi))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties sharing the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    # runs of equal values: [start, end) in sorted order, each given the mean of ranks start+1..end
    boundaries = np.flatnonzero(np.diff(sorted_values) != 0) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def finite_pairs(uncertainty: np.ndarray, abs_error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two equally shaped arrays flattened to float64, with the pixels where either is NaN or inf left out."""
    a = np.asarray(uncertainty, dtype=np.float64).ravel()
    b = np.asarray(abs_error, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"uncertainty has {a.size} values, the error {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def spearman(uncertainty: np.ndarray, abs_error: np.ndarray) -> float | None:
    """Spearman's rank correlation of two equally shaped arrays (NaN pixels left out); None when either is
    constant over the pixels left (a rank correlation is undefined then)."""
    a, b = finite_pairs(uncertainty, abs_error)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def calibration_table(uncertainty: np.ndarray, abs_error: np.ndarray, bins: int = 10) -> list[dict]:
    """Pixels binned by predicted spread into `bins` bins of (nearly) equal count, lowest spread first: per bin
    its spread range [lo, hi], pixel count, mean predicted spread and mean actual absolute error. Bins that
    equal spreads would split are merged (a pixel's bin depends only on its spread)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    a, b = finite_pairs(uncertainty, abs_error)
    if a.size == 0:
        return []
    edges = np.unique(np.quantile(a, np.linspace(0.0, 1.0, bins + 1)))
    # bin k holds edges[k] <= a < edges[k+1]; the top bin includes its upper edge
    index = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, max(len(edges) - 2, 0))
    table = []
    for k in range(max(len(edges) - 1, 1)):
        inside = index == k
        if not inside.any():
            continue
        table.append(
            {
                "lo": float(a[inside].min()),
                "hi": float(a[inside].max()),
                "pixels": int(inside.sum()),
                "mean_uncertainty": float(a[inside].mean()),
                "mean_abs_error": float(b[inside].mean()),
            }
        )
    return table
