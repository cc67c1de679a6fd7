"""One SAR scene: checks, scale choice, window grid and strip reads (rasterio, window by window).

What archive translation (`s2o translate`: its Ray tasks and actors read strips through `SceneReader`) and the
Python API (`S2OPipeline`, a whole image through `read_rows`) read a scene with; the per-pixel rules they apply
(`model_pixels`, `scale_sample`) are `data.normalization`'s."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from s2o_platform import storage
from s2o_platform.data.normalization import (
    SAR_REAL_DTYPES,
    SarNormalization,
    SarScale,
    UnsupportedSarPixels,
    model_pixels,
    sar_pixels,
)
from s2o_platform.data.rasters import InputError, band_pixel_format, select_sar_band, units_hint
from s2o_platform.geo.tiling import window_starts

SUPPORTED_DTYPES = (
    SAR_REAL_DTYPES  # real types taken as they are; complex SLC too, detected (data.normalization.sar_pixels)
)


@dataclass
class SceneInfo:
    """Everything a reader task needs about a scene (plain data: it travels to Ray tasks)."""

    uri: str
    name: str
    path: str  # what rasterio opens (a local path or /vsis3/...)
    env: dict[str, str]
    band: int
    height: int
    width: int
    dtype: str
    crs_wkt: str
    transform: tuple[float, ...]
    scale: str
    scale_reason: str
    tile: int
    overlap: int
    normalization: dict = field(default_factory=dict)

    @property
    def row_starts(self) -> list[int]:
        return window_starts(self.height, self.tile, self.tile - self.overlap)

    @property
    def col_starts(self) -> list[int]:
        return window_starts(self.width, self.tile, self.tile - self.overlap)

    @property
    def n_tiles(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


@contextlib.contextmanager
def open_dataset(path: str, env: dict[str, str]) -> Iterator[object]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    with rasterio.Env(**env), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(path)
        except RasterioIOError as err:
            raise InputError(f"cannot open {path}: {err}") from None
        try:
            yield ds
        finally:
            ds.close()


def inspect_scene(
    uri: str,
    name: str,
    band: str | int | None,
    sar_scale: str,
    tile: int,
    overlap: int,
    normalization: SarNormalization,
    options: storage.StorageOptions | None = None,
    archive: bool = True,
) -> SceneInfo:
    """Open a scene, check it can be translated, and choose its SAR scale. Raises InputError with the reason.

    `archive`: archive translation's own conditions too (a CRS, at least one tile); the Python API
    (`S2OPipeline`) reads any image, a PNG or a scene smaller than a tile, with the same band, pixel and
    scale rules."""
    path, env = storage.gdal_path(uri, options)
    with open_dataset(path, env) as ds:
        if archive and ds.crs is None:
            raise InputError(
                f"{uri} has no CRS: archive translation writes georeferenced outputs, so it needs a georeferenced scene"
            )
        index = select_sar_band(ds, uri, band)
        dtype, palette, bits = band_pixel_format(ds, index)
        try:  # the shared SAR pixel rule: real types as they are, complex SLC detected, palette/1-bit/int8 refused
            pixels = sar_pixels(dtype, palette=palette, bits=bits)
        except UnsupportedSarPixels as err:
            raise InputError(f"{uri} band {index} ({dtype}): {err}") from None
        if archive and (ds.height < tile or ds.width < tile):
            raise InputError(f"{uri} is {ds.width}x{ds.height} px, smaller than the model's {tile} px tile")
        step = max(1, max(ds.height, ds.width) // 512)  # a decimated read is enough to tell the scale
        sample = (
            ds.read(index, out_shape=(max(1, ds.height // step), max(1, ds.width // step)), masked=True)
            if sar_scale == SarScale.AUTO.value
            else None
        )
        try:
            scale, reason = pixels.resolve_scale(sar_scale, sample, units_hint(ds, index))
        except UnsupportedSarPixels as err:
            raise InputError(f"{uri} band {index}: {err}") from None
        return SceneInfo(
            uri=uri,
            name=name,
            path=path,
            env=env,
            band=index,
            height=ds.height,
            width=ds.width,
            dtype=dtype,
            crs_wkt=ds.crs.to_wkt() if ds.crs is not None else "",
            transform=tuple(ds.transform)[:6],
            scale=scale.value,
            scale_reason=reason,
            tile=tile,
            overlap=overlap,
            normalization=normalization.to_dict(),
        )


def read_strip(info: SceneInfo, row: int, dataset=None) -> tuple[np.ndarray, np.ndarray]:
    """The tiles of one window row: (n_cols, 1, T, T) float32 in the model's range (nodata filled with -1)
    and (n_cols, T, T) bool validity. Memory: one strip of T rows across the scene. Reads from `dataset`
    where given (see SceneReader), else opens the scene for this one row."""
    model, valid = read_rows(info, row, info.tile, dataset)
    cols = info.col_starts
    tiles = np.stack([model[:, c : c + info.tile] for c in cols])[:, None]
    masks = np.stack([valid[:, c : c + info.tile] for c in cols])
    return tiles, masks


def read_rows(info: SceneInfo, row: int, rows: int, dataset=None) -> tuple[np.ndarray, np.ndarray]:
    """`rows` full-width rows of the scene from `row` on, in the model's range ((rows, W) float32, nodata -1)
    with their (rows, W) bool validity (`model_pixels`). Reads from `dataset` where given, else opens the scene."""
    from rasterio.windows import Window

    window = Window(0, row, info.width, rows)
    if dataset is None:
        with open_dataset(info.path, info.env) as ds:
            masked = ds.read(info.band, window=window, masked=True)
    else:
        masked = dataset.read(info.band, window=window, masked=True)
    return model_pixels(masked, info.dtype, info.scale, SarNormalization.from_dict(info.normalization))


class SceneReader:
    """Reads window rows, keeping the current scene open between them: a scene's rows arrive one after
    another, so a remote (/vsis3/) scene's header is fetched once per actor, not once per row.
    GDAL's options (info.env) are set around each open and read, not held across calls."""

    def __init__(self):
        self._path: str | None = None
        self._dataset = None

    def read_strip(self, info: SceneInfo, row: int) -> tuple[np.ndarray, np.ndarray]:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        with rasterio.Env(**info.env), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if info.path != self._path:
                self.close()
                try:
                    self._dataset = rasterio.open(info.path)
                except RasterioIOError as err:
                    raise InputError(f"cannot open {info.path}: {err}") from None
                self._path = info.path
            try:
                return read_strip(info, row, self._dataset)
            except Exception:
                self.close()  # a failed read may leave the handle unusable; the next row reopens it
                raise

    def close(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
        self._path, self._dataset = None, None
