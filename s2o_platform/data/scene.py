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
    # A GCP-referenced scene (Sentinel-1 GRD measurement TIFFs) is read through a WarpedVRT onto this regular grid
    # (`gcp_grid`); height, width, crs_wkt and transform above are the grid's. None: read as stored.
    warp: dict | None = None
    file_datetime: str | None = (
        None  # the file's TIFFTAG_DATETIME (acquisition time where nothing better says)
    )

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


def gcp_grid(ds, target_crs: str | None = None, resolution: float | None = None) -> dict:
    """The regular grid a GCP-referenced scene is warped onto: `target_crs` (default: the UTM zone of the GCPs'
    centre) at `resolution` (map units per pixel; default: the source's ground spacing, the grid GDAL's warper
    suggests from the GCPs). Plain data for SceneInfo.warp."""
    from rasterio.crs import CRS
    from rasterio.warp import calculate_default_transform
    from rasterio.warp import transform as transform_points

    gcps, gcp_crs = ds.gcps
    if target_crs is None:
        lon, lat = transform_points(
            gcp_crs, "EPSG:4326", [float(np.mean([g.x for g in gcps]))], [float(np.mean([g.y for g in gcps]))]
        )
        zone = int((lon[0] + 180.0) // 6.0) % 60 + 1
        target = CRS.from_epsg((32600 if lat[0] >= 0 else 32700) + zone)
    else:
        target = CRS.from_user_input(target_crs)
    warp = {"crs": target.to_wkt(), "regrid": resolution is not None}
    with warped(ds, {**warp, "regrid": False}) as suggested:  # the warper's own grid, from the GCPs
        transform, width, height = suggested.transform, suggested.width, suggested.height
    if resolution is not None:
        transform, width, height = calculate_default_transform(
            gcp_crs, target, ds.width, ds.height, gcps=gcps, resolution=resolution
        )
    return {**warp, "transform": list(transform)[:6], "width": int(width), "height": int(height)}


@contextlib.contextmanager
def warped(ds, warp: dict | None):
    """`ds` itself, or with `warp` (SceneInfo.warp) a WarpedVRT of it on that grid: windowed reads warp only the
    window, so memory stays bounded by the window, whatever the scene. The GCPs are used only when GDAL's warper
    picks the grid itself (given a grid, WarpedVRT takes the source's identity geotransform), so another
    resolution is a second, plain WarpedVRT over the first. Bilinear (nearest for complex SLC values, whose phase
    must not be mixed); outside the footprint is nodata: the source's, else NaN for floats and 0 otherwise."""
    if warp is None:
        yield ds
        return
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    dtype = ds.dtypes[0]
    nodata = ds.nodata
    if nodata is None:
        nodata = float("nan") if dtype.startswith("float") else 0
    resampling = Resampling.nearest if "complex" in dtype else Resampling.bilinear
    with contextlib.ExitStack() as stack:
        view = stack.enter_context(WarpedVRT(ds, crs=warp["crs"], nodata=nodata, resampling=resampling))
        if warp["regrid"]:
            view = stack.enter_context(
                WarpedVRT(
                    view,
                    crs=warp["crs"],
                    transform=Affine(*warp["transform"]),
                    width=warp["width"],
                    height=warp["height"],
                    nodata=nodata,
                    resampling=resampling,
                )
            )
        yield view


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
    target_crs: str | None = None,
    target_resolution: float | None = None,
) -> SceneInfo:
    """Open a scene, check it can be translated, and choose its SAR scale. Raises InputError with the reason.

    `archive`: archive translation's own conditions too (a CRS, at least one tile); the Python API
    (`S2OPipeline`) reads any image, a PNG or a scene smaller than a tile, with the same band, pixel and
    scale rules. A scene with ground control points instead of a CRS (a Sentinel-1 GRD measurement TIFF) is, for
    archive translation, read through a WarpedVRT onto a regular grid (`gcp_grid`: `target_crs`,
    `target_resolution`)."""
    path, env = storage.gdal_path(uri, options)
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open_dataset(path, env))
        warp = None
        if archive and raw.crs is None and raw.gcps[0]:
            try:
                warp = gcp_grid(raw, target_crs, target_resolution)
            except Exception as err:  # noqa: BLE001 - GDAL's reasons vary (too few GCPs, a CRS it cannot use)
                raise InputError(
                    f"{uri} is referenced by {len(raw.gcps[0])} ground control points, which could not be turned "
                    f"into a grid: {type(err).__name__}: {err}"
                ) from None
        ds = stack.enter_context(warped(raw, warp))
        if archive and ds.crs is None:
            raise InputError(
                f"{uri} has no CRS and no ground control points: archive translation writes georeferenced "
                "outputs, so it needs a georeferenced scene"
            )
        index = select_sar_band(raw, uri, band)
        dtype, palette, bits = band_pixel_format(raw, index)
        try:  # the shared SAR pixel rule: real types as they are, complex SLC detected, palette/1-bit/int8 refused
            pixels = sar_pixels(dtype, palette=palette, bits=bits)
        except UnsupportedSarPixels as err:
            raise InputError(f"{uri} band {index} ({dtype}): {err}") from None
        if archive and (ds.height < tile or ds.width < tile):
            raise InputError(f"{uri} is {ds.width}x{ds.height} px, smaller than the model's {tile} px tile")
        step = max(1, max(raw.height, raw.width) // 512)  # a decimated read is enough to tell the scale
        sample = (  # from the file as stored: a warped view would warp the whole scene for this
            raw.read(index, out_shape=(max(1, raw.height // step), max(1, raw.width // step)), masked=True)
            if sar_scale == SarScale.AUTO.value
            else None
        )
        try:
            scale, reason = pixels.resolve_scale(sar_scale, sample, units_hint(raw, index))
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
            warp=warp,
            file_datetime=raw.tags().get("TIFFTAG_DATETIME"),
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
        with open_dataset(info.path, info.env) as raw, warped(raw, info.warp) as ds:
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
        self._open = contextlib.ExitStack()

    def read_strip(self, info: SceneInfo, row: int) -> tuple[np.ndarray, np.ndarray]:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        with rasterio.Env(**info.env), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if info.path != self._path:
                self.close()
                try:
                    raw = self._open.enter_context(rasterio.open(info.path))
                except RasterioIOError as err:
                    raise InputError(f"cannot open {info.path}: {err}") from None
                self._dataset = self._open.enter_context(warped(raw, info.warp))
                self._path = info.path
            try:
                return read_strip(info, row, self._dataset)
            except Exception:
                self.close()  # a failed read may leave the handle unusable; the next row reopens it
                raise

    def close(self) -> None:
        self._open.close()  # the warped view first, then the file
        self._path, self._dataset = None, None
