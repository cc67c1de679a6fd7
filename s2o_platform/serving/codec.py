"""Request bodies -> SAR arrays in the model's range, and translated arrays -> PNG or GeoTIFF bytes.

Pure functions (no Ray, no HTTP framework): every way a body can be wrong raises `RequestError` with
the HTTP status, a short machine-readable kind and a message that says what to send instead. Limits
are checked before pixels are decoded: the body's length first, then the image size read from its
header (PNG/JPEG with Pillow, TIFF with rasterio), so a small file that would decompress into a huge
raster is refused without allocating it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from s2o_platform.data.normalization import SarNormalization, SarScale, detect_sar_scale, model_to_uint8

CONTENT_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/tiff": "tiff", "image/geotiff": "tiff"}
OUTPUT_FORMATS = ("png", "tiff")
MIN_SIDE = 8  # px: below this a tile would be almost all padding


class RequestError(ValueError):
    """A request the service refuses: HTTP `status`, error `kind` (for clients and metrics), message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message

    def to_json(self) -> dict[str, str]:
        return {"error": self.kind, "detail": self.message}


@dataclass
class SarImage:
    """A decoded request: (channels, H, W) float32 in [-1, 1] (nodata as -1), its scale and georeference."""

    values: np.ndarray
    scale: str
    scale_reason: str
    crs_wkt: str | None = None
    transform: tuple[float, ...] | None = None

    @property
    def height(self) -> int:
        return self.values.shape[1]

    @property
    def width(self) -> int:
        return self.values.shape[2]


def media_kind(content_type: str | None) -> str:
    """'png' | 'jpeg' | 'tiff' from a Content-Type header, or a 415 error."""
    main = (content_type or "").split(";")[0].strip().lower()
    if main not in CONTENT_TYPES:
        raise RequestError(415, "unsupported_media_type",
                           f"Content-Type {content_type or '(none)'!r} is not accepted; send the SAR image as "
                           "image/png, image/jpeg or image/tiff")
    return CONTENT_TYPES[main]


def parse_steps(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise RequestError(422, "bad_steps", f"steps must be a whole number, got {raw!r}") from None


def parse_format(raw: str | None) -> str:
    fmt = (raw or "png").lower()
    if fmt not in OUTPUT_FORMATS:
        raise RequestError(422, "bad_format", f"format must be one of {OUTPUT_FORMATS}, got {raw!r}")
    return fmt


def check_body(body: bytes, max_bytes: int) -> None:
    if not body:
        raise RequestError(400, "empty_body", "the request body is empty: send the SAR image's bytes")
    if len(body) > max_bytes:
        raise RequestError(413, "too_large", f"the body is {len(body)} bytes; the limit is {max_bytes}")


def _check_size(width: int, height: int, channels: int, max_side: int, sar_channels: int) -> None:
    if width > max_side or height > max_side:
        raise RequestError(413, "too_large",
                           f"the image is {width}x{height} px; the limit is {max_side} px a side (use `s2o translate` for scenes)")
    if min(width, height) < MIN_SIDE:
        raise RequestError(422, "too_small", f"the image is {width}x{height} px; at least {MIN_SIDE} px a side is needed")
    if channels != sar_channels:
        raise RequestError(422, "wrong_bands",
                           f"the image has {channels} band(s); the model takes {sar_channels} SAR band(s) (one polarisation, e.g. VV)")


def decode_sar(body: bytes, kind: str, normalization: SarNormalization, sar_channels: int, max_side: int) -> SarImage:
    """Decode a checked body of media `kind` into the model's range (see module docstring)."""
    if kind == "tiff":
        return _decode_tiff(body, normalization, sar_channels, max_side)
    return _decode_pillow(body, kind, normalization, sar_channels, max_side)


def _decode_pillow(body: bytes, kind: str, normalization: SarNormalization, sar_channels: int, max_side: int) -> SarImage:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(body))  # reads the header only
    except (UnidentifiedImageError, OSError):
        raise RequestError(400, "not_an_image", f"the body is not a readable {kind.upper()} image") from None
    if image.format and image.format.lower() != kind:
        raise RequestError(400, "not_an_image", f"the body is a {image.format} image but Content-Type says {kind}")
    _check_size(image.width, image.height, len(image.getbands()), max_side, sar_channels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as err:
        raise RequestError(400, "corrupt_image", f"the {kind.upper()} image cannot be decoded: {err}") from None
    raw = np.asarray(image)
    if raw.dtype == np.uint8:
        scale, reason = SarScale.UINT8, "8-bit image: taken as display-scaled SAR"
    else:  # 16-bit PNG: digital numbers
        scale, reason = detect_sar_scale(raw, raw.dtype)
    values = normalization.to_model(raw.astype(np.float64), scale)[None]
    return SarImage(values.astype(np.float32), scale.value, reason)


def _decode_tiff(body: bytes, normalization: SarNormalization, sar_channels: int, max_side: int) -> SarImage:
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    from s2o_platform.data.rasters import _units_hint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with MemoryFile(body) as memfile, memfile.open() as ds:
                if ds.driver != "GTiff":
                    raise RequestError(400, "not_an_image", f"the body is a {ds.driver} raster, not a TIFF")
                _check_size(ds.width, ds.height, ds.count, max_side, sar_channels)
                masked = ds.read(masked=True)
                dtype, hint = ds.dtypes[0], _units_hint(ds, 1)
                crs = ds.crs.to_wkt() if ds.crs else None
                transform = tuple(ds.transform)[:6] if ds.crs else None
        except RequestError:
            raise
        except (RasterioError, OSError, ValueError) as err:  # GDAL's CPLE_* errors are RasterioError or OSError
            raise RequestError(400, "corrupt_image", f"the TIFF cannot be read (truncated or damaged): {err}") from None
    raw = np.asarray(masked.filled(0), dtype=np.float64)
    valid = ~np.ma.getmaskarray(masked) & np.isfinite(raw)
    if not valid.any():
        raise RequestError(422, "no_valid_pixels", "every pixel of the TIFF is nodata, NaN or infinite: nothing to translate")
    scale, reason = detect_sar_scale(np.where(valid, raw, np.nan), dtype, hint)
    values = normalization.to_model(np.where(valid, raw, 1.0), scale)
    values = np.where(valid, values, -1.0).astype(np.float32)
    return SarImage(values, scale.value, reason, crs, transform)


def encode_png(optical: np.ndarray) -> bytes:
    """(3, H, W) in [-1, 1] -> RGB PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(model_to_uint8(optical).transpose(1, 2, 0), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def geotiff_bytes(array: np.ndarray, crs=None, transform=None, nodata=None, **creation) -> bytes:
    """A (bands, H, W) array as in-memory GeoTIFF bytes; crs (rasterio CRS, 'EPSG:n' or WKT) and an
    affine transform are written where given, extra creation options (compress=, photometric=) pass through."""
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                   dtype=str(array.dtype), nodata=nodata, **creation)
    if crs is not None:
        profile["crs"] = crs if isinstance(crs, rasterio.crs.CRS) else rasterio.crs.CRS.from_user_input(crs)
    if transform is not None:
        profile["transform"] = transform if isinstance(transform, Affine) else Affine(*transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memfile:
            with memfile.open(**profile) as ds:
                ds.write(array)
            return memfile.read()


def encode_tiff(optical: np.ndarray, crs_wkt: str | None, transform: tuple[float, ...] | None) -> bytes:
    """(3, H, W) in [-1, 1] -> 3-band uint8 GeoTIFF bytes, with the request's georeference where it had one."""
    georeferenced = crs_wkt is not None and transform is not None
    return geotiff_bytes(model_to_uint8(optical), crs=crs_wkt if georeferenced else None,
                         transform=transform if georeferenced else None, photometric="RGB", compress="deflate")
