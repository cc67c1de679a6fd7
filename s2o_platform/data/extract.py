"""Turning one SAR/optical pair into validated store rows, window by window.

A window is kept when at most `max_nodata` of its pixels are invalid (SAR not finite or nodata; optical
nodata by data/nodata.py's rule) and its valid SAR is not constant (a constant SAR window is fill, not
signal). A kept window's invalid pixels get a fixed fill (SAR -1, optical 0) and are recorded in the
row's `valid` mask, which every training loss and evaluation metric honours. Each rejected window is counted
under its reason; a pair that cannot be read at all raises `InputError` with the reason.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from s2o_platform import storage
from s2o_platform.data.nodata import invalid_optical
from s2o_platform.data.normalization import (
    OpticalNormalization,
    SarNormalization,
    SarScale,
    UnsupportedSarPixels,
    model_pixels,
    sar_pixels,
)
from s2o_platform.data.rasters import (
    InputError,
    class_map_window,
    open_labels,
    open_optical,
    open_sar,
)
from s2o_platform.data.sources import PairSource
from s2o_platform.data.store import tile_row
from s2o_platform.geo.tiling import grid_windows, window_transform


@dataclass(frozen=True)
class TilingSettings:
    tile_size: int = 256
    stride: int | None = None  # defaults to tile_size (no overlap)
    sar_scale: SarScale = SarScale.AUTO
    sar_band: str | None = None  # polarisation name or 1-based index; VV by default
    max_nodata: float = 0.0  # largest share of invalid pixels a kept window may hold (masked)


@dataclass
class PairReport:
    """What happened to one pair."""

    scale: str | None = None
    scale_reason: str | None = None
    windows: int = 0
    windows_masked: int = 0  # kept windows holding some invalid pixels (under max_nodata)
    windows_skipped: Counter = field(default_factory=Counter)


def tiles_from_pair(
    pair: PairSource,
    split: str,
    settings: TilingSettings,
    sar_norm: SarNormalization,
    optical_norm: OpticalNormalization,
    options: storage.StorageOptions | None = None,
    report: PairReport | None = None,
) -> Iterator[dict]:
    """Yield TILE_SCHEMA rows for one pair; raises InputError when the pair is unusable as a whole."""
    report = report if report is not None else PairReport()
    fs, _ = storage.resolve(pair.uri_prefix + pair.sar if pair.uri_prefix else pair.sar, options)
    with contextlib.ExitStack() as stack:
        sar = stack.enter_context(open_sar(pair.sar, fs, settings.sar_band))
        optical = stack.enter_context(open_optical(pair.optical, fs, onto=sar))
        labels = stack.enter_context(open_labels(pair.labels, fs, onto=sar)) if pair.labels else None
        if labels is not None and (labels.height, labels.width) != (sar.height, sar.width):
            raise InputError(
                f"class map {pair.labels} is {labels.width}x{labels.height}, the SAR {sar.width}x{sar.height} "
                "(and no georeference on both to resample with)"
            )
        if not (sar.georeferenced and optical.georeferenced) and (sar.height, sar.width) != (
            optical.height,
            optical.width,
        ):
            raise InputError(
                f"SAR/optical size mismatch: SAR {sar.width}x{sar.height}, optical {optical.width}x{optical.height} "
                "(and no georeference on both to resample with)"
            )
        sample = sar.sample()
        if not np.isfinite(sample).any():
            raise InputError("SAR is entirely nodata/NaN")
        try:
            scale, reason = sar_pixels(sar.dtype).resolve_scale(
                settings.sar_scale, np.ma.masked_invalid(sample), sar.units_hint
            )
        except UnsupportedSarPixels as err:
            raise InputError(f"SAR {pair.sar}: {err}") from None
        report.scale, report.scale_reason = scale.value, reason
        windows = grid_windows(sar.height, sar.width, settings.tile_size, settings.stride)
        if not windows:
            raise InputError(
                f"scene {sar.width}x{sar.height} is smaller than the tile size {settings.tile_size}"
            )
        for window in windows:
            report.windows += 1
            sar_window = sar.read(window)
            sar_invalid = ~np.isfinite(sar_window[0])
            if sar_invalid.mean() > settings.max_nodata:
                report.windows_skipped["SAR nodata/NaN/inf in window"] += 1
                continue
            if sar_invalid.all() or np.ptp(sar_window[0][~sar_invalid]) == 0:
                report.windows_skipped["constant SAR window (fill)"] += 1
                continue
            optical_window = optical.read(window)
            invalid = sar_invalid | invalid_optical(optical_window)
            if invalid.mean() > settings.max_nodata:
                report.windows_skipped["optical nodata in window"] += 1
                continue
            if invalid.any():
                report.windows_masked += 1
            sar_model, _ = model_pixels(  # nodata -> -1: the one fill rule
                np.ma.masked_array(sar_window[0], sar_invalid), sar.dtype, scale.value, sar_norm
            )
            optical_filled = np.where(invalid[None], 0.0, np.nan_to_num(optical_window))
            optical_u8 = optical_norm.to_uint8(_as_input_dtype(optical_filled, optical.dtype)).transpose(
                1, 2, 0
            )
            optical_u8 = np.where(invalid[..., None], 0, optical_u8).astype(np.uint8)
            yield tile_row(
                sar_model,
                np.ascontiguousarray(optical_u8),
                scene_id=pair.scene_id,
                split=split,
                sar_scale=scale.value,
                row_off=window.row_off,
                col_off=window.col_off,
                crs=sar.crs if sar.georeferenced else None,
                transform=window_transform(sar.transform, window) if sar.georeferenced else None,
                sar_path=pair.uri_prefix + pair.sar,
                optical_path=pair.uri_prefix + pair.optical,
                source_kind=pair.source_kind,
                landcover=class_map_window(labels.read(window), pair.labels) if labels is not None else None,
                valid=~invalid,
            )


def _as_input_dtype(window: np.ndarray, dtype: str) -> np.ndarray:
    """Back to the file's dtype (valid windows have no NaN), so 8-bit and reflectance scale correctly."""
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return np.clip(np.rint(window), info.min, info.max).astype(dt)
    return window
