"""Opening SAR and optical inputs as rasters that can be read window by window.

Two kinds of input:
- plain images (PNG, JPEG, and TIFFs without a CRS), decoded whole with Pillow or rasterio:
  they are small patches (SEN1-2 is 256 px) and Pillow refuses truncated files, where GDAL would
  quietly fill the missing rows with zeros;
- GeoTIFFs, opened with rasterio and read by windows, so memory does not grow with scene size.
  An optical GeoTIFF (one 3+-band file or one file per band) is resampled onto the SAR grid with a
  WarpedVRT when the two grids differ.

Every read returns float64 (bands, rows, cols) with NaN where the input has no data.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from s2o_platform import storage
from s2o_platform.data.store import UNLABELLED
from s2o_platform.errors import S2OError
from s2o_platform.geo.tiling import AffineCoefficients, Window

PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = PLAIN_IMAGE_SUFFIXES + TIFF_SUFFIXES

# Sentinel-2 true colour, as band-name patterns: B04 or B4 (red), B03/B3, B02/B2.
_RGB_BAND_PATTERNS = [
    re.compile(rf"(^|[^0-9A-Za-z])B0?{n}([^0-9A-Za-z]|$)", re.IGNORECASE) for n in (4, 3, 2)
]
# 1-based band indices of B4, B3, B2 in full Sentinel-2 stacks (B1..B8, B8A, B9, [B10,] B11, B12).
_S2_STACK_RGB = (4, 3, 2)


class InputError(S2OError, ValueError):
    """An input that cannot be turned into valid tiles; the message is the reason recorded."""


@dataclass
class Raster:
    """A readable raster: in-memory array or rasterio-backed windows."""

    height: int
    width: int
    dtype: str
    crs: str | None = None
    transform: AffineCoefficients | None = None
    units_hint: str | None = None
    # Plain images (PNG, JPEG): the decoded (bands, rows, cols) array in its own dtype (uint8: an 8th of
    # float64's memory); reads convert only the window asked for.
    array: np.ndarray | None = None
    _reader: object = None  # callable(window) -> array, for rasterio-backed rasters

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None

    def read(self, window: Window | None = None) -> np.ndarray:
        if self.array is not None:
            if window is None:
                return self.array.astype(np.float64)
            return self.array[
                :,
                window.row_off : window.row_off + window.height,
                window.col_off : window.col_off + window.width,
            ].astype(np.float64)
        return self._reader(window)  # type: ignore[operator]

    def sample(self, max_side: int = 512) -> np.ndarray:
        """A decimated read of the whole raster (for scale detection and all-nodata checks)."""
        if self.array is not None:
            step = max(1, max(self.height, self.width) // max_side)
            return self.array[:, ::step, ::step].astype(np.float64)
        return self._reader(None, max_side)  # type: ignore[operator,call-arg]


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1].lower()
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


def strip_suffix(path: str) -> str:
    """A path (or name) without its file suffix: a scene's name, from which its output name and its tiles' noise
    keys follow (`s2o translate` and the Python API alike)."""
    return path.rsplit(".", 1)[0]


def _decode_plain(data: bytes, path: str) -> np.ndarray:
    """Decode PNG/JPEG with Pillow into (bands, rows, cols); truncated files raise."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError(f"empty file: {path}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode in ("LA",):
                img = img.convert("L")
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot decode image {path}: {err}") from None
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


@contextlib.contextmanager
def _open_rasterio(path: str, fs: pafs.FileSystem) -> Iterator[object]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            if isinstance(fs, pafs.LocalFileSystem):
                ds = rasterio.open(path)
            else:
                if fs.get_file_info(path).size == 0:
                    raise InputError(f"empty file: {path}")
                # Object storage: GDAL reads through the filesystem's random-access file, fetching only the
                # byte ranges a window needs (a COG's tiles), never the whole object into memory.
                ds = rasterio.open(path, opener=lambda p, mode="rb": fs.open_input_file(p))
        except RasterioIOError as err:
            raise InputError(f"cannot open raster {path}: {err}") from None
        except FileNotFoundError:
            raise InputError(f"file not found: {path}") from None
        try:
            yield ds
        finally:
            ds.close()


def _masked_to_nan(masked: np.ma.MaskedArray) -> np.ndarray:
    out = np.asarray(masked.filled(0), dtype=np.float64)
    out[np.ma.getmaskarray(masked)] = np.nan
    return out


def units_hint(ds, band: int) -> str | None:
    """What band `band` (1-based) of an open rasterio dataset says of its units (description, units, tags), for
    SAR scale detection (`normalization.detect_sar_scale`); None when it says nothing."""
    parts = [ds.descriptions[band - 1] or "", (ds.units[band - 1] if ds.units else None) or ""]
    parts += [
        f"{k}={v}"
        for k, v in {**ds.tags(), **ds.tags(band)}.items()
        if k.lower() in ("units", "unit", "scale")
    ]
    text = " ".join(p for p in parts if p)
    return text or None


def band_pixel_format(ds, band: int) -> tuple[str, bool, int | None]:
    """(pixel type, colour-mapped, bits per pixel where fewer than 8, else None) of band `band` (1-based) of an
    open rasterio dataset: what the SAR pixel rule (`normalization.sar_pixels`) is given, by archive translation
    and by the HTTP service alike."""
    from rasterio.enums import ColorInterp

    nbits = ds.tags(band, ns="IMAGE_STRUCTURE").get("NBITS")
    bits = int(nbits) if nbits and nbits.isdigit() and int(nbits) < 8 else None
    return ds.dtypes[band - 1], ds.colorinterp[band - 1] == ColorInterp.palette, bits


def select_sar_band(ds, path: str, band: str | int | None) -> int:
    """1-based band index of the SAR polarisation to use (VV by default where bands are named)."""
    names = [(d or "").upper() for d in ds.descriptions]
    if isinstance(band, int) or (isinstance(band, str) and band.isdigit()):
        index = int(band)
        if not 1 <= index <= ds.count:
            raise InputError(f"SAR band {index} asked for, but {path} has {ds.count} band(s)")
        return index
    wanted = (band or "VV").upper()
    if wanted in names:
        return names.index(wanted) + 1
    if ds.count == 1:
        return 1
    if ds.count == 2 and band is None:
        return 1  # dual-pol files put the co-polarisation (VV or HH) first
    raise InputError(f"wrong band count for SAR: {path} has {ds.count} bands and none is named {wanted!r}")


def _rgb_band_indices(ds, path: str) -> tuple[int, int, int]:
    names = [d or "" for d in ds.descriptions]
    found = []
    for pattern in _RGB_BAND_PATTERNS:
        matches = [i + 1 for i, n in enumerate(names) if pattern.search(n)]
        found.append(matches[0] if matches else None)
    if all(found):
        return tuple(found)  # type: ignore[return-value]
    if ds.count in (3, 4):
        return (1, 2, 3)
    if ds.count in (12, 13):
        return _S2_STACK_RGB
    raise InputError(
        f"wrong band count for optical: {path} has {ds.count} band(s); expected RGB(A) (3-4 bands), "
        "a Sentinel-2 stack (12-13 bands) or named B04/B03/B02 bands"
    )


def find_rgb_band_files(paths: list[str]) -> list[str]:
    """Pick red, green and blue band files (B04/B03/B02 or B4/B3/B2) from a list of paths."""
    chosen = []
    for pattern in _RGB_BAND_PATTERNS:
        matches = [p for p in paths if pattern.search(p.rsplit("/", 1)[-1].rsplit(".", 1)[0])]
        if not matches:
            return []
        chosen.append(matches[0])
    return chosen


def find_sar_band_file(paths: list[str], band: str | None) -> str | None:
    """Pick the SAR polarisation file (VV by default) from a folder listing."""
    wanted = (band or "VV").upper()
    tifs = [p for p in paths if _suffix(p) in TIFF_SUFFIXES]
    named = [
        p for p in tifs if re.search(rf"(^|[^A-Za-z]){wanted}([^A-Za-z]|$)", p.rsplit("/", 1)[-1].upper())
    ]
    if named:
        return named[0]
    return tifs[0] if len(tifs) == 1 else None


def _rasterio_reader(
    stack: contextlib.ExitStack, bands: list[tuple[object, int]], target=None, resampling: str = "bilinear"
):
    """A window reader over (dataset, band) pairs, each warped onto `target` grid when given.

    target: (crs, transform, width, height) of the grid to read on, or None for the first band's own grid.
    resampling: rasterio's Resampling name for the warp (class maps need "nearest").
    """
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window as RioWindow

    sources = []
    for ds, band in bands:
        if target is not None:
            crs, transform, width, height = target
            same_grid = (
                ds.crs == crs and ds.transform == transform and (ds.width, ds.height) == (width, height)
            )
            if not same_grid:
                ds = stack.enter_context(
                    WarpedVRT(
                        ds,
                        crs=crs,
                        transform=transform,
                        width=width,
                        height=height,
                        resampling=Resampling[resampling],
                    )
                )
        sources.append((ds, band))

    def read(window: Window | None, max_side: int | None = None) -> np.ndarray:
        from rasterio.errors import RasterioError

        try:
            return _read(window, max_side)
        except RasterioError as err:
            raise InputError(f"cannot read {sources[0][0].name}: {err}") from None

    def _read(window: Window | None, max_side: int | None) -> np.ndarray:
        out = []
        for ds, band in sources:
            if window is None:
                step = max(1, max(ds.height, ds.width) // max_side) if max_side else 1
                shape = (max(1, ds.height // step), max(1, ds.width // step))
                masked = ds.read(band, out_shape=shape, masked=True)
            else:
                rio_window = RioWindow(window.col_off, window.row_off, window.width, window.height)
                masked = ds.read(band, window=rio_window, masked=True)
            out.append(_masked_to_nan(masked))
        return np.stack(out)

    return read


def _affine(transform) -> AffineCoefficients:
    return (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)


def _crs_text(crs) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


@contextlib.contextmanager
def open_sar(path: str, fs: pafs.FileSystem, band: str | int | None = None) -> Iterator[Raster]:
    """Open a SAR input (image file, GeoTIFF, or a folder of per-polarisation GeoTIFFs)."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"file not found: {path}")
    if info.type == pafs.FileType.Directory:
        chosen = find_sar_band_file(
            storage.list_files(fs, path, recursive=False), band if isinstance(band, str) else None
        )
        if chosen is None:
            raise InputError(f"SAR folder {path} has no single GeoTIFF or {(band or 'VV')!r} band file")
        path = chosen
    suffix = _suffix(path)
    if suffix in PLAIN_IMAGE_SUFFIXES:
        array = _decode_plain(storage.read_bytes(fs, path), path)
        if array.shape[0] != 1:
            if (
                array.shape[0] in (3, 4)
                and np.array_equal(array[0], array[1])
                and np.array_equal(array[1], array[2])
            ):
                array = array[:1]  # grey stored as RGB
            else:
                raise InputError(f"wrong band count for SAR: {path} has {array.shape[0]} colour channels")
        yield Raster(array.shape[1], array.shape[2], str(array.dtype), array=array)
        return
    with contextlib.ExitStack() as stack, _open_rasterio(path, fs) as ds:
        index = select_sar_band(ds, path, band)
        yield Raster(
            ds.height,
            ds.width,
            ds.dtypes[index - 1],
            crs=_crs_text(ds.crs),
            transform=_affine(ds.transform) if ds.crs is not None else None,
            units_hint=units_hint(ds, index),
            _reader=_rasterio_reader(stack, [(ds, index)]),
        )


@contextlib.contextmanager
def open_optical(path: str, fs: pafs.FileSystem, onto: Raster | None = None) -> Iterator[Raster]:
    """Open an optical input (RGB image, 3+-band GeoTIFF or a folder of band files).

    With `onto` a georeferenced SAR raster, a georeferenced optical input is resampled onto the SAR grid.
    """
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"file not found: {path}")
    if info.type != pafs.FileType.Directory and _suffix(path) in PLAIN_IMAGE_SUFFIXES:
        array = _decode_plain(storage.read_bytes(fs, path), path)
        if array.shape[0] not in (3, 4):
            raise InputError(
                f"wrong band count for optical: {path} has {array.shape[0]} channel(s), expected RGB"
            )
        yield Raster(array.shape[1], array.shape[2], str(array.dtype), array=np.ascontiguousarray(array[:3]))
        return
    with contextlib.ExitStack() as stack:
        if info.type == pafs.FileType.Directory:
            band_files = find_rgb_band_files(
                [p for p in storage.list_files(fs, path, recursive=False) if _suffix(p) in TIFF_SUFFIXES]
            )
            if not band_files:
                raise InputError(f"optical folder {path} has no B04/B03/B02 (or B4/B3/B2) band files")
            datasets = [stack.enter_context(_open_rasterio(p, fs)) for p in band_files]
            bands = [(ds, 1) for ds in datasets]
        else:
            ds = stack.enter_context(_open_rasterio(path, fs))
            bands = [(ds, i) for i in _rgb_band_indices(ds, path)]
        first = bands[0][0]
        georeferenced = first.crs is not None
        if onto is not None and onto.georeferenced and georeferenced:
            from rasterio.crs import CRS
            from rasterio.transform import Affine

            target = (CRS.from_user_input(onto.crs), Affine(*onto.transform), onto.width, onto.height)
            height, width = onto.height, onto.width
        else:
            # The finest band's grid (band files may come at 10/20/60 m).
            finest = max((ds for ds, _ in bands), key=lambda d: d.width * d.height)
            target = (finest.crs, finest.transform, finest.width, finest.height) if georeferenced else None
            if target is None and len({(d.width, d.height) for d, _ in bands}) > 1:
                raise InputError(f"optical band files in {path} differ in size and have no georeference")
            height, width = finest.height, finest.width
        yield Raster(
            height,
            width,
            first.dtypes[bands[0][1] - 1],
            crs=_crs_text(target[0]) if target else None,
            transform=_affine(target[1]) if target else None,
            _reader=_rasterio_reader(stack, bands, target),
        )


@contextlib.contextmanager
def open_labels(path: str, fs: pafs.FileSystem, onto: Raster | None = None) -> Iterator[Raster]:
    """Open a land-cover class map (one band of integer classes 0..254; PNG or GeoTIFF).

    With `onto` a georeferenced SAR raster, a georeferenced class map is resampled onto the SAR grid by
    nearest neighbour (classes must not be blended). Nodata pixels read as NaN.
    """
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"label file not found: {path}")
    if _suffix(path) in PLAIN_IMAGE_SUFFIXES:
        array = _decode_class_image(storage.read_bytes(fs, path), path)
        yield Raster(array.shape[1], array.shape[2], str(array.dtype), array=array)
        return
    with contextlib.ExitStack() as stack, _open_rasterio(path, fs) as ds:
        if ds.count != 1:
            raise InputError(f"a class map has one band of class numbers: {path} has {ds.count} bands")
        target = None
        if onto is not None and onto.georeferenced and ds.crs is not None:
            from rasterio.crs import CRS
            from rasterio.transform import Affine

            target = (CRS.from_user_input(onto.crs), Affine(*onto.transform), onto.width, onto.height)
        height, width = (onto.height, onto.width) if target else (ds.height, ds.width)
        yield Raster(
            height,
            width,
            ds.dtypes[0],
            crs=_crs_text(ds.crs),
            transform=_affine(ds.transform) if ds.crs is not None else None,
            _reader=_rasterio_reader(stack, [(ds, 1)], target, resampling="nearest"),
        )


def _decode_class_image(data: bytes, path: str) -> np.ndarray:
    """A PNG/JPEG class map -> (1, H, W): palette images give their indices (the usual way class maps are
    saved), grey images their values, RGB images only when all three channels are equal."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode in ("P", "L", "I", "I;16"):
                return np.asarray(image)[None]
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot decode class map {path}: {err}") from None
    array = _decode_plain(data, path)
    if array.shape[0] != 1 and not (
        array.shape[0] in (3, 4) and np.array_equal(array[0], array[1]) and np.array_equal(array[1], array[2])
    ):
        raise InputError(
            f"a class map has one band of class numbers: {path} has {array.shape[0]} different channels"
        )
    return array[:1]


def class_map_window(window: np.ndarray, path: str) -> np.ndarray:
    """A label window (1, H, W) float with NaN nodata -> (H, W) uint8, nodata as UNLABELLED (255, which a
    class map may also use itself for "no class"); refuses values that are not class numbers 0..255."""
    values = window[0]
    valid = np.isfinite(values)
    if valid.any():
        v = values[valid]
        if (v != np.rint(v)).any() or v.min() < 0 or v.max() > UNLABELLED:
            raise InputError(
                f"class map {path} holds values other than whole class numbers 0..{UNLABELLED - 1} "
                f"(and {UNLABELLED} for unlabelled; found {v.min():g}..{v.max():g})"
            )
    return np.where(valid, np.nan_to_num(values), UNLABELLED).astype(np.uint8)
