"""Cutting a raster into square windows, and the georeference of each window. Pure arithmetic.

Windows start at 0, stride, 2*stride, ... along each axis; when the last one does not reach the
raster's edge, one more window is aligned to the edge (so the raster is covered completely; the
last window then overlaps its neighbour more than the others do). A raster smaller than one window
has no windows.

An affine geotransform is kept as the six coefficients (a, b, c, d, e, f) of

    x = a * col + b * row + c
    y = d * col + e * row + f

which is rasterio's `Affine` order (GDAL's is (c, a, b, f, d, e)).
"""

from __future__ import annotations

from dataclasses import dataclass

AffineCoefficients = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class Window:
    """A window of a raster in pixel coordinates: rows [row_off, row_off+height), cols likewise."""

    row_off: int
    col_off: int
    height: int
    width: int


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of windows of `size` with `stride` along an axis of `length` pixels."""
    if size <= 0 or stride <= 0:
        raise ValueError(f"window size and stride must be positive, got size={size}, stride={stride}")
    if length < size:
        return []
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def grid_windows(height: int, width: int, size: int, stride: int | None = None) -> list[Window]:
    """All windows of `size` x `size` covering a `height` x `width` raster, row-major order."""
    stride = size if stride is None else stride
    return [
        Window(row, col, size, size)
        for row in window_starts(height, size, stride)
        for col in window_starts(width, size, stride)
    ]


def window_transform(transform: AffineCoefficients, window: Window) -> AffineCoefficients:
    """Geotransform of a window: the same pixel size and rotation, the origin moved to the window's corner."""
    a, b, c, d, e, f = transform
    return (
        a,
        b,
        a * window.col_off + b * window.row_off + c,
        d,
        e,
        d * window.col_off + e * window.row_off + f,
    )


def pixel_to_world(transform: AffineCoefficients, row: float, col: float) -> tuple[float, float]:
    """World (x, y) of pixel coordinates (row, col); (0, 0) is the raster's top-left corner."""
    a, b, c, d, e, f = transform
    return a * col + b * row + c, d * col + e * row + f
