"""Seamless mosaicking of overlapping tile predictions, with memory bounded by scene width.

Every tile is weighted by a separable taper that falls linearly towards its edges inside the
overlap (never to zero, so pixels at the scene border, covered by one tile only, keep their value);
the mosaic is the weighted sum divided by the summed weights, so neighbouring tiles cross-fade
instead of meeting at a seam.

`StripMosaic` takes tiles window row by window row (row-major order) and hands back finished bands
of output rows as soon as no later window can touch them: it never holds more than two window
heights of rows, i.e. about 2 * tile * width * (channels + 1) * 4 bytes, whatever the scene height.

What a translated tile adds to a mosaic (`mosaic_tile`: RGB plus validity, in OPTICAL_TILE_DTYPE's precision) and
the output pixels a blended band becomes (`output_pixels`) are one rule for archive translation's COGs and the
Python API's images alike.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

OUTPUT_DTYPES = ("uint8", "float32")
#: The precision optical tiles travel in from the model to the mosaic (StripTranslator's output blocks).
OPTICAL_TILE_DTYPE = np.float16


def taper_1d(length: int, overlap: int) -> np.ndarray:
    """Weights along one axis: 1 in the middle, falling linearly to 0.5/overlap at the edges."""
    if overlap <= 0:
        return np.ones(length, np.float32)
    distance_to_edge = np.minimum(np.arange(length) + 0.5, length - np.arange(length) - 0.5)
    return np.clip(distance_to_edge / overlap, 0.0, 1.0).astype(np.float32)


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) weights: the outer product of two tapers."""
    t = taper_1d(tile, overlap)
    return np.outer(t, t)


class StripMosaic:
    """Accumulate (channels, tile, tile) predictions at (row, col) into a scene of `height` x `width`.

    Tiles must arrive with non-decreasing row offsets; `add` returns the output bands finished by
    it, `finish` the rest. Each band is (first_row, array of shape (channels, rows, width)).
    """

    def __init__(self, height: int, width: int, channels: int, tile: int, overlap: int):
        self.height, self.width, self.channels, self.tile = height, width, channels, tile
        self.weights = blend_weights(tile, overlap)
        self.start = 0  # first row held in the buffers
        self.current_row = 0
        self.sum = np.zeros((channels, 0, width), np.float32)
        self.weight = np.zeros((0, width), np.float32)

    def _ensure_rows(self, end: int) -> None:
        have = self.start + self.weight.shape[0]
        if end > have:
            extra = end - have
            self.sum = np.concatenate(
                [self.sum, np.zeros((self.channels, extra, self.width), np.float32)], axis=1
            )
            self.weight = np.concatenate([self.weight, np.zeros((extra, self.width), np.float32)], axis=0)

    def _flush(self, upto: int) -> Iterator[tuple[int, np.ndarray]]:
        n = upto - self.start
        if n <= 0:
            return
        band = self.sum[:, :n] / np.maximum(self.weight[:n], 1e-12)
        yield self.start, band
        self.sum, self.weight = self.sum[:, n:], self.weight[n:]
        self.start = upto

    def add(self, row: int, col: int, prediction: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if row < self.current_row:
            raise ValueError(f"tiles must arrive in row order: row {row} after row {self.current_row}")
        done = list(self._flush(row)) if row > self.current_row else []
        self.current_row = row
        self._ensure_rows(row + self.tile)
        r = row - self.start
        self.sum[:, r : r + self.tile, col : col + self.tile] += prediction.astype(np.float32) * self.weights
        self.weight[r : r + self.tile, col : col + self.tile] += self.weights
        return done

    def finish(self) -> list[tuple[int, np.ndarray]]:
        return list(self._flush(self.height))

    @property
    def rows_held(self) -> int:
        return self.weight.shape[0]


def cut_image(image: np.ndarray, tile: int, overlap: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A (channels, H, W) image -> (N, channels, tile, tile) windows and their (row, col) offsets,
    row-major, covering it with `overlap` px between neighbours (the last window aligned to the edge).
    An image smaller than a tile along an axis is padded by reflection up to one tile there
    (crop the mosaic back to the image's size)."""
    from s2o_platform.geo.tiling import window_starts

    _, height, width = image.shape
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "symmetric"
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)
    stride = tile - overlap
    positions = [
        (r, c)
        for r in window_starts(image.shape[1], tile, stride)
        for c in window_starts(image.shape[2], tile, stride)
    ]
    tiles = np.stack([image[:, r : r + tile, c : c + tile] for r, c in positions])
    return tiles, positions


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """How many windows `cut_image` makes of a (height, width) image: known from a header, before decoding."""
    from s2o_platform.geo.tiling import window_starts

    stride = tile - overlap
    return len(window_starts(max(height, tile), tile, stride)) * len(
        window_starts(max(width, tile), tile, stride)
    )


def largest_side_within(max_tiles: int, tile: int, overlap: int) -> int:
    """The largest side of a square image that `cut_image` covers with at most `max_tiles` windows
    (0 when not even one window fits)."""
    if max_tiles < 1:
        return 0
    per_axis = int(max_tiles**0.5)
    while (per_axis + 1) ** 2 <= max_tiles:  # guard the float square root
        per_axis += 1
    while per_axis**2 > max_tiles:
        per_axis -= 1
    # n windows along an axis reach tile + (n - 1) * stride px
    return tile + (per_axis - 1) * (tile - overlap)


def mosaic_image(
    predictions: np.ndarray, positions: list[tuple[int, int]], height: int, width: int, overlap: int
) -> np.ndarray:
    """Blend (N, channels, tile, tile) predictions made at `positions` (from `cut_image`) into a
    (channels, height, width) image, cropping away any padding."""
    n, channels, tile, _ = predictions.shape
    full_h, full_w = max(height, tile), max(width, tile)
    mosaic = StripMosaic(full_h, full_w, channels, tile, overlap)
    out = np.zeros((channels, full_h, full_w), np.float32)
    bands = []
    for (row, col), prediction in zip(positions, predictions):
        bands += mosaic.add(row, col, prediction)
    bands += mosaic.finish()
    for first_row, band in bands:
        out[:, first_row : first_row + band.shape[1]] = band
    return out[:, :height, :width]


def mosaic_tile(optical: np.ndarray, valid: np.ndarray, uncertainty: np.ndarray | None = None) -> np.ndarray:
    """What one tile adds to a scene's mosaic: optical (3, T, T) in [-1, 1] as [0, 1], with `uncertainty` (T, T)
    (a spread in the model's units) as a fourth channel in the same [0, 1] units, and its (T, T) validity as the
    last channel (validity blends exactly: every tile sees the same pixel's validity). (4 or 5, T, T) float32."""
    channels = [(optical.astype(np.float32) + 1.0) / 2.0]
    if uncertainty is not None:
        channels.append(uncertainty[None].astype(np.float32) / 2.0)
    return np.concatenate([*channels, valid[None].astype(np.float32)])


#: What the 8-bit uncertainty band holds: the spread in the RGB bands' own 8-bit levels (std x 255 of the [0, 1]
#: image), clipped to 1..255 (0 is nodata, as in the RGB bands); the float32 band holds it in [0, 1] units.
UNCERTAINTY_BAND_DESCRIPTION = (
    "uncertainty: per-pixel std over samples, mean of RGB, in this file's RGB units"
)


def output_pixels(band: np.ndarray, output_dtype: str = "uint8") -> np.ndarray:
    """A blended (4 or 5, rows, W) band of `mosaic_tile`s -> the (3 or 4, rows, W) output pixels: RGB (and the
    uncertainty, where the tiles had one) as uint8 1..255 (0 is nodata) or float32 [0, 1] (NaN is nodata)."""
    values, valid = np.clip(band[:-1], 0.0, 1.0), band[-1] > 0.5
    if output_dtype == "uint8":
        return np.where(valid, np.clip(np.rint(values * 255.0), 1, 255), 0).astype(np.uint8)
    if output_dtype == "float32":
        return np.where(valid, values, np.nan).astype(np.float32)
    raise ValueError(f"output dtype must be one of {OUTPUT_DTYPES}, got {output_dtype!r}")
