"""Request bodies -> SAR arrays in the model's range, and translated arrays -> PNG or GeoTIFF bytes.

Pure functions (no Ray, no HTTP framework): every way a body can be wrong raises `RequestError` with
the HTTP status, a short machine-readable kind and a message that says what to send instead.

Limits are checked before pixels are decoded: the body's length first (`check_body`), then
`read_header`, which opens the body with the decoder of its declared kind only (Pillow restricted to
PNG or JPEG, GDAL restricted to its GTiff driver, so no other format parser ever sees a body), reads
nothing but the header and refuses: another format (400), a side over `max_side` or a decompression
bomb (413), a side under MIN_SIDE, a band count other than the model's, pixels the SAR pixel rule
refuses (422), and a decode over `max_decode_bytes` (413): the decoded raster, width x height x bands
x bytes per value, and for a TIFF also the largest block any of its IFDs (image, mask, overviews)
declares, read from the IFDs themselves, since GDAL decodes a whole tile or strip however small
the image (a 0.5 MB TIFF declaring one 8192 x 8192 float64 tile decodes into 512 MB).
`decode_sar` runs `read_header` first, then decodes, with GDAL's block cache bounded to
GDAL_CACHE_BYTES while any decode runs, so concurrent decodes cannot grow it.

Which pixels are taken is the one rule of the data layer (`data.normalization.sar_pixels`, shared
with `s2o translate`): 8/16/32-bit integers and floats as they are; complex SLC detected (|z| as DN
for complex integers; |z|^2 as linear power, or |z| as DN when uncalibrated, for complex floats);
palette, 1-bit and int8 images refused (422 unsupported_dtype).
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from s2o_platform.data.normalization import (
    PILLOW_MODES,
    SarNormalization,
    SarScale,
    UnsupportedSarPixels,
    model_pixels,
    model_to_uint8,
    sar_pixels,
)
from s2o_platform.errors import S2OError

CONTENT_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/tiff": "tiff",
    "image/geotiff": "tiff",
}
OUTPUT_FORMATS = ("png", "tiff")
MIN_SIDE = 8  # px: below this a tile would be almost all padding
GDAL_CACHE_BYTES = 64 * 1024 * 1024  # GDAL's block cache while decodes run (GDAL's default: 5% of RAM)

_MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}
_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


class RequestError(S2OError, ValueError):
    """A request the service refuses: HTTP `status`, error `kind` (for clients and metrics), message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message

    def to_json(self) -> dict[str, str]:
        return {"error": self.kind, "detail": self.message}


@dataclass(frozen=True)
class ImageHeader:
    """What a body's header declares, read without decoding a pixel.

    dtype: the pixel type (rasterio's names; for PNG/JPEG the type Pillow decodes into);
    raster_bytes: the decoded image, width x height x bands x bytes per value;
    block_bytes / block_shape: TIFF only, the largest block (tile or strip) any IFD declares, decoded,
    and the image band's (rows, cols) block."""

    kind: str
    width: int
    height: int
    bands: int
    dtype: str
    raster_bytes: int
    bits: int | None = None
    palette: bool = False
    block_bytes: int | None = None
    block_shape: tuple[int, int] | None = None

    @property
    def decode_bytes(self) -> int:
        """The largest of the figures checked against the decode budget."""
        return max(self.raster_bytes, self.block_bytes or 0)


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
        raise RequestError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'!r} is not accepted; send the SAR image as "
            "image/png, image/jpeg or image/tiff",
        )
    return CONTENT_TYPES[main]


def parse_steps(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise RequestError(422, "bad_steps", f"steps must be a whole number, got {raw!r}") from None


def parse_uncertainty(raw: str | None, max_samples: int) -> int:
    """`?uncertainty=K`: samples per tile for an uncertainty band, 0 (none, the default) or 2..max_samples."""
    if raw is None or raw == "":
        return 0
    try:
        samples = int(raw)
    except ValueError:
        raise RequestError(
            422, "bad_uncertainty", f"uncertainty must be a whole number of samples, got {raw!r}"
        ) from None
    if samples != 0 and not 2 <= samples <= max_samples:
        raise RequestError(
            422,
            "bad_uncertainty",
            f"uncertainty={samples}: ask for 2..{max_samples} samples per tile (0 or none: no uncertainty)",
        )
    return samples


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


def _sniff(body: bytes) -> str | None:
    """The kind the body's first bytes (magic number) say, if any: used for messages, never for decoding."""
    return next((kind for kind, magics in _MAGIC.items() if body.startswith(magics)), None)


def _not_a(kind: str, body: bytes) -> RequestError:
    """400 for a body that is not a `kind` image: corrupt_image when its magic number says `kind`."""
    sniffed = _sniff(body)
    if sniffed == kind:
        return RequestError(
            400, "corrupt_image", f"the {kind.upper()} image's header cannot be read (truncated or damaged)"
        )
    said = f"the body is a {sniffed.upper()} image" if sniffed else f"the body is not a {kind.upper()} image"
    return RequestError(
        400,
        "not_an_image",
        f"{said} but Content-Type says {kind}: send the SAR image's bytes with "
        "its own Content-Type (image/png, image/jpeg or image/tiff)",
    )


def read_header(
    body: bytes, kind: str, sar_channels: int, max_side: int, max_decode_bytes: int
) -> ImageHeader:
    """The header of a body of media `kind`, checked against the limits without decoding a pixel (see the
    module docstring); raises RequestError."""
    if kind == "tiff":
        header = _tiff_header(body)
    elif kind in _PILLOW_FORMATS:
        header = _pillow_header(body, kind, max_side)
    else:
        raise RequestError(
            415,
            "unsupported_media_type",
            f"media kind {kind!r} is not decoded; send image/png, image/jpeg or image/tiff",
        )
    _check_header(header, sar_channels, max_side, max_decode_bytes)
    return header


def _check_header(header: ImageHeader, sar_channels: int, max_side: int, max_decode_bytes: int) -> None:
    width, height = header.width, header.height
    if width > max_side or height > max_side:
        raise RequestError(
            413,
            "too_large",
            f"the image is {width}x{height} px; the limit is {max_side} px a side (use `s2o translate` for scenes)",
        )
    if min(width, height) < MIN_SIDE:
        raise RequestError(
            422, "too_small", f"the image is {width}x{height} px; at least {MIN_SIDE} px a side is needed"
        )
    if header.bands != sar_channels:
        raise RequestError(
            422,
            "wrong_bands",
            f"the image has {header.bands} band(s); the model takes {sar_channels} SAR band(s) (one polarisation, e.g. VV)",
        )
    try:
        sar_pixels(header.dtype, palette=header.palette, bits=header.bits)
    except UnsupportedSarPixels as err:
        raise RequestError(422, "unsupported_dtype", str(err)) from None
    if header.raster_bytes > max_decode_bytes:
        raise RequestError(
            413,
            "too_large",
            f"the image decodes into {header.raster_bytes} bytes ({width}x{height} px x {header.bands} band(s) "
            f"of {header.dtype}); the decode limit is {max_decode_bytes} bytes",
        )
    if header.block_bytes is not None and header.block_bytes > max_decode_bytes:
        raise RequestError(
            413,
            "too_large",
            f"the TIFF declares a block (tile or strip) that decodes into {header.block_bytes} bytes, "
            f"whatever its {width}x{height} px image; the decode limit is {max_decode_bytes} bytes: "
            "write it with ordinary tiles (e.g. 256 or 512 px) or strips",
        )


#: Scans a JPEG may hold: a baseline JPEG has 1, an ordinary progressive one up to about 12; each scan is a
#: pass over the whole image, so thousands of tiny scans make a small body cost seconds to decode.
MAX_JPEG_SCANS = 32


def _pillow_header(body: bytes, kind: str, max_side: int) -> ImageHeader:
    if kind == "jpeg":
        # 0xFFDA starts a scan; inside entropy-coded data a 0xFF byte is always followed by 0x00 (byte stuffing)
        scans = body.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise RequestError(
                413,
                "too_costly",
                f"the JPEG holds {scans} scans; at most {MAX_JPEG_SCANS} are decoded "
                "(send a baseline JPEG, a PNG or a TIFF)",
            )
    image = _pillow_open(body, kind, max_side)
    mode = image.mode
    bands = len(image.getbands())
    dtype, bits, palette = PILLOW_MODES.get(mode, (mode, None, False))
    if bits is not None and bits >= 8:
        bits = None  # full-depth: the type says it all
    # Pillow holds every multi-band mode in 4 bytes a pixel
    per_pixel = 4 if bands > 1 else (np.dtype(dtype).itemsize if mode in PILLOW_MODES else 4)
    return ImageHeader(
        kind,
        image.width,
        image.height,
        bands,
        dtype,
        image.width * image.height * per_pixel,
        bits=bits,
        palette=palette,
    )


def _pillow_open(body: bytes, kind: str, max_side: int):
    """Pillow's image of `body` with only the `kind` decoder tried, its header read, no pixel decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(body), formats=[_PILLOW_FORMATS[kind]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RequestError(
            413,
            "too_large",
            f"the {kind.upper()} header declares an image too large to decode ({err}); "
            f"the limit is {max_side} px a side",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error):
        raise _not_a(kind, body) from None
    if (image.format or "").lower() != kind:  # a plugin may hand over another format's image (JPEG -> MPO)
        raise RequestError(
            400, "not_an_image", f"the body is a {image.format} image but Content-Type says {kind}"
        )
    return image


# --- TIFF: the IFDs' declared blocks, read with struct (no decoder) -------------------------------------------

#: The integer types libtiff accepts for the tags read here: BYTE, SHORT, LONG, SSHORT, SLONG, LONG8, SLONG8.
_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 16: "Q", 17: "q"}
_TIFF_TAGS = {
    256: "width",
    257: "height",
    258: "bits",
    277: "samples",
    278: "rows_per_strip",
    284: "planar",
    322: "tile_width",
    323: "tile_height",
}
#: Bounds of the IFD walk (a real GeoTIFF has a few IFDs of a few dozen entries): a crafted header cannot
#: make this pure-Python walk long.
_MAX_IFDS = 64
_MAX_IFD_ENTRIES = 512


def tiff_blocks(body: bytes) -> list[tuple[int, int, int]]:
    """(rows, cols, decoded bytes) of the block (tile or strip) each IFD of a TIFF's main chain declares
    (the image, its mask, overviews), from the IFD entries alone. Raises ValueError (struct.error included)
    for a header that cannot be read."""
    order = "<" if body[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", body, 2)[0] == 43
    offset_fmt, count_fmt, entry_size = ("Q", "Q", 20) if big else ("I", "H", 12)
    (offset,) = struct.unpack_from(order + offset_fmt, body, 8 if big else 4)
    seen: set[int] = set()
    blocks = []
    while offset:
        if offset in seen or len(seen) >= _MAX_IFDS:
            raise ValueError(f"its IFD chain loops or holds more than {_MAX_IFDS} IFDs")
        seen.add(offset)
        (n,) = struct.unpack_from(order + count_fmt, body, offset)
        if n > _MAX_IFD_ENTRIES:
            raise ValueError(f"an IFD holds {n} entries (at most {_MAX_IFD_ENTRIES} are read)")
        first = offset + struct.calcsize(count_fmt)
        if first + n * entry_size + struct.calcsize(offset_fmt) > len(body):
            raise ValueError("an IFD runs past the end of the file")
        tags: dict[str, int] = {}
        for entry in range(first, first + n * entry_size, entry_size):
            tag, typ = struct.unpack_from(order + "HH", body, entry)
            if tag not in _TIFF_TAGS:
                continue
            if typ not in _TIFF_TYPES:  # fail closed: a size we cannot read is a size we cannot bound
                raise ValueError(f"TIFF tag {tag} has type {typ}, which no TIFF reader takes for it")
            (count,) = struct.unpack_from(order + offset_fmt, body, entry + 4)
            where = entry + 4 + struct.calcsize(offset_fmt)
            if count * struct.calcsize(_TIFF_TYPES[typ]) > struct.calcsize(offset_fmt):
                (where,) = struct.unpack_from(order + offset_fmt, body, where)
            values = struct.unpack_from(order + _TIFF_TYPES[typ] * min(count, 16), body, where)
            if any(v < 0 for v in values):
                raise ValueError(f"TIFF tag {tag} holds a negative size")
            tags[_TIFF_TAGS[tag]] = max(values, default=0)
        (offset,) = struct.unpack_from(order + offset_fmt, body, first + n * entry_size)
        width, height = tags.get("width", 0), tags.get("height", 0)
        if "tile_width" in tags or "tile_height" in tags:
            rows, cols = tags.get("tile_height", 0), tags.get("tile_width", 0)
        else:
            rows, cols = min(tags.get("rows_per_strip", height), height), width
        per_pixel = math.ceil(tags.get("bits", 1) / 8) * (
            tags.get("samples", 1) if tags.get("planar", 1) == 1 else 1
        )
        blocks.append((rows, cols, rows * cols * per_pixel))
    return blocks


@contextlib.contextmanager
def _quiet_gdal() -> Iterator[None]:
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings(), _bounded_gdal_cache():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


_cache_lock = threading.Lock()
_cache_users = 0
_cache_before: int | None = None


@contextlib.contextmanager
def _bounded_gdal_cache() -> Iterator[None]:
    """GDAL's block cache (process-wide) at most GDAL_CACHE_BYTES while any decode runs, restored after the last:
    counted, because rasterio.Env(GDAL_CACHEMAX=) restores on exit what it saw on entry, which under
    concurrent decodes would lift the bound while others still run."""
    from rasterio.env import get_gdal_config, set_gdal_config

    global _cache_users, _cache_before
    with _cache_lock:
        if _cache_users == 0:
            _cache_before = int(get_gdal_config("GDAL_CACHEMAX"))
            set_gdal_config("GDAL_CACHEMAX", min(_cache_before, GDAL_CACHE_BYTES))
        _cache_users += 1
    try:
        yield
    finally:
        with _cache_lock:
            _cache_users -= 1
            if _cache_users == 0 and _cache_before is not None:
                set_gdal_config("GDAL_CACHEMAX", _cache_before)


@contextlib.contextmanager
def _open_tiff(body: bytes) -> Iterator[object]:
    """The body as a rasterio dataset, with GDAL's GTiff driver only (no other format parser sees it)."""
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    try:
        with MemoryFile(body) as memfile, memfile.open(driver="GTiff", sharing=False) as ds:
            yield ds
    except RequestError:
        raise
    except (RasterioError, OSError, ValueError) as err:  # GDAL's CPLE_* errors are RasterioError or OSError
        raise RequestError(
            400, "corrupt_image", f"the TIFF cannot be read (truncated or damaged): {err}"
        ) from None


def _read_dtype(dtype: str) -> np.dtype:
    """The numpy type rasterio reads a band of `dtype` into."""
    return np.dtype("complex64" if dtype == "complex_int16" else dtype)


def _tiff_header(body: bytes) -> ImageHeader:
    from s2o_platform.data.rasters import band_pixel_format

    if _sniff(body) != "tiff":
        raise _not_a("tiff", body)
    try:
        blocks = tiff_blocks(body)
    except (ValueError, struct.error) as err:
        raise RequestError(
            400, "corrupt_image", f"the TIFF's header cannot be read (truncated or damaged): {err}"
        ) from None
    with _quiet_gdal(), _open_tiff(body) as ds:
        dtype, palette, bits = band_pixel_format(ds, 1)
        try:
            itemsize = _read_dtype(dtype).itemsize
        except TypeError:  # a type numpy has no name for: refused by the pixel rule
            itemsize = 8
        block_rows, block_cols = ds.block_shapes[0]
        return ImageHeader(
            "tiff",
            ds.width,
            ds.height,
            ds.count,
            dtype,
            ds.width * ds.height * ds.count * itemsize,
            bits=bits,
            palette=palette,
            block_bytes=max([b for _, _, b in blocks] + [block_rows * block_cols * itemsize]),
            block_shape=(block_rows, block_cols),
        )


def decode_sar(
    body: bytes,
    kind: str,
    normalization: SarNormalization,
    sar_channels: int,
    max_side: int,
    max_decode_bytes: int,
    header: ImageHeader | None = None,
) -> SarImage:
    """Decode a body of media `kind` into the model's range, after `read_header` (see module docstring);
    `header`: what `read_header` gave for this body with these limits, when the caller has it already."""
    if header is None or header.kind != kind:
        header = read_header(body, kind, sar_channels, max_side, max_decode_bytes)
    if kind == "tiff":
        return _decode_tiff(body, header, normalization)
    return _decode_pillow(body, header, normalization, max_side)


def _decode_pillow(
    body: bytes, header: ImageHeader, normalization: SarNormalization, max_side: int
) -> SarImage:
    from PIL import Image

    kind = header.kind
    image = _pillow_open(body, kind, max_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as err:
        raise RequestError(
            400, "corrupt_image", f"the {kind.upper()} image cannot be decoded: {err}"
        ) from None
    raw = np.asarray(image)
    # 8-bit: display-scaled; 16-bit: DN
    scale, reason = sar_pixels(header.dtype).resolve_scale(SarScale.AUTO, raw)
    values, _ = model_pixels(raw, header.dtype, scale.value, normalization)
    return SarImage(values[None], scale.value, reason)


def _decode_tiff(body: bytes, header: ImageHeader, normalization: SarNormalization) -> SarImage:
    from s2o_platform.data.rasters import units_hint

    pixels = sar_pixels(header.dtype)
    with _quiet_gdal(), _open_tiff(body) as ds:
        masked = ds.read(masked=True)
        hint = units_hint(ds, 1)
        crs = ds.crs.to_wkt() if ds.crs else None
        transform = tuple(ds.transform)[:6] if ds.crs else None
    filled = masked.filled(0)
    valid = ~np.ma.getmaskarray(masked) & np.isfinite(filled)
    if not valid.any():
        raise RequestError(
            422, "no_valid_pixels", "every pixel of the TIFF is nodata, NaN or infinite: nothing to translate"
        )
    readable = np.ma.masked_array(filled, ~valid)
    scale, reason = pixels.resolve_scale(SarScale.AUTO, readable, hint)
    values, _ = model_pixels(
        readable, header.dtype, scale.value, normalization
    )  # nodata -> -1, the one fill rule
    return SarImage(values, scale.value, reason, crs, transform)


def encode_png(optical: np.ndarray) -> bytes:
    """(3, H, W) in [-1, 1] -> RGB PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(model_to_uint8(optical).transpose(1, 2, 0), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def geotiff_bytes(
    array: np.ndarray, crs=None, transform=None, nodata=None, extra_band: str | None = None, **creation
) -> bytes:
    """A (bands, H, W) array as in-memory GeoTIFF bytes; crs (rasterio CRS, 'EPSG:n' or WKT) and an
    affine transform are written where given, extra creation options (compress=, photometric=) pass through.
    `extra_band`: the description of a last band that is data beside RGB (colour interpretation undefined, not
    alpha), as `s2o translate` marks its uncertainty band."""
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    profile = dict(
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=str(array.dtype),
        nodata=nodata,
        **creation,
    )
    if crs is not None:
        profile["crs"] = crs if isinstance(crs, rasterio.crs.CRS) else rasterio.crs.CRS.from_user_input(crs)
    if transform is not None:
        profile["transform"] = transform if isinstance(transform, Affine) else Affine(*transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memfile:
            with memfile.open(**profile) as ds:
                ds.write(array)
                if extra_band is not None:
                    from rasterio.enums import ColorInterp

                    ds.colorinterp = [
                        ColorInterp.red,
                        ColorInterp.green,
                        ColorInterp.blue,
                        ColorInterp.undefined,
                    ]
                    ds.descriptions = ("red", "green", "blue", extra_band)
            return memfile.read()


def encode_tiff(
    optical: np.ndarray,
    crs_wkt: str | None,
    transform: tuple[float, ...] | None,
    uncertainty: np.ndarray | None = None,
) -> bytes:
    """(3, H, W) in [-1, 1] -> 3-band uint8 GeoTIFF bytes, with the request's georeference where it had one.
    With `uncertainty` (H, W) (a spread in the model's units) a fourth uint8 band holds it in the RGB bands' 8-bit
    levels (`uncertainty_levels`), described as `s2o translate` describes its band."""
    from s2o_platform.geo.blending import UNCERTAINTY_BAND_DESCRIPTION

    georeferenced = crs_wkt is not None and transform is not None
    bands = model_to_uint8(optical)
    if uncertainty is not None:
        bands = np.concatenate([bands, uncertainty_levels(uncertainty)[None]])
    return geotiff_bytes(
        bands,
        crs=crs_wkt if georeferenced else None,
        transform=transform if georeferenced else None,
        extra_band=UNCERTAINTY_BAND_DESCRIPTION if uncertainty is not None else None,
        photometric="RGB",
        compress="deflate",
    )


def uncertainty_levels(spread: np.ndarray) -> np.ndarray:
    """A spread in the model's units ([-1, 1] images) -> the RGB bands' 8-bit levels (x 127.5), uint8 0..255."""
    return np.clip(np.rint(np.asarray(spread, dtype=np.float32) * 127.5), 0, 255).astype(np.uint8)
