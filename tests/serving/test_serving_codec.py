"""Request decoding/encoding and image tiling for the HTTP endpoint: pure functions, no Ray."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from s2o_platform.data.normalization import SarNormalization, uint8_to_model
from s2o_platform.geo.blending import cut_image, mosaic_image
from s2o_platform.serving import codec
from s2o_platform.serving.codec import (
    GDAL_CACHE_BYTES,
    RequestError,
    check_body,
    decode_sar,
    encode_png,
    encode_tiff,
    geotiff_bytes,
    media_kind,
    parse_format,
    parse_steps,
    read_header,
    tiff_blocks,
)
from tests.fixtures import REPO_ROOT, UTM31, png_bytes, tiff_bytes

NORM = SarNormalization()
BUDGET = 64 * 1024 * 1024  # the default decode limit (max_decode_mb: 64)


def refused(fn, *args) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize(
    "header,kind",
    [
        ("image/png", "png"),
        ("image/PNG; charset=x", "png"),
        ("image/jpeg", "jpeg"),
        ("image/tiff", "tiff"),
        ("image/tiff; application=geotiff", "tiff"),
    ],
)
def test_accepted_content_types(header, kind):
    assert media_kind(header) == kind


@pytest.mark.parametrize("header", [None, "", "text/plain", "application/octet-stream", "image/gif"])
def test_other_content_types_are_415(header):
    err = refused(media_kind, header)
    assert (err.status, err.kind) == (415, "unsupported_media_type")
    assert "image/png" in err.message


def test_steps_and_format_parsing():
    assert parse_steps(None) is None and parse_steps("") is None and parse_steps("4") == 4
    assert refused(parse_steps, "four").status == 422
    assert refused(parse_steps, "2.5").kind == "bad_steps"
    assert parse_format(None) == "png" and parse_format("TIFF") == "tiff"
    assert refused(parse_format, "gif").status == 422


def test_body_limits_checked_before_decoding():
    assert refused(check_body, b"", 10).kind == "empty_body"
    err = refused(check_body, b"x" * 11, 10)
    assert (err.status, err.kind) == (413, "too_large")
    check_body(b"x" * 10, 10)


def test_8bit_png_is_display_scaled_sar():
    raw = np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    image = decode_sar(png_bytes(raw), "png", NORM, 1, 1024, BUDGET)
    assert image.values.shape == (1, 48, 64) and image.scale == "uint8"
    np.testing.assert_allclose(image.values[0], uint8_to_model(raw))
    assert image.crs_wkt is None


def test_jpeg_decodes():
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(buffer, format="JPEG")
    image = decode_sar(buffer.getvalue(), "jpeg", NORM, 1, 1024, BUDGET)
    assert image.values.shape == (1, 40, 40)
    assert abs(float(image.values.mean()) - (128 / 127.5 - 1)) < 0.02


def test_rgb_png_is_wrong_band_count():
    err = refused(decode_sar, png_bytes(np.zeros((32, 32, 3), np.uint8)), "png", NORM, 1, 1024, BUDGET)
    assert (err.status, err.kind) == (422, "wrong_bands")


def test_decompression_bomb_refused_from_header():
    bomb = png_bytes(np.zeros((4000, 4000), np.uint8))  # a few kB that would decode into 16 MB
    assert len(bomb) < 100_000
    err = refused(decode_sar, bomb, "png", NORM, 1, 1024, BUDGET)
    assert (err.status, err.kind) == (413, "too_large")


def test_not_an_image_truncated_and_mislabelled():
    good = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert refused(decode_sar, b"hello world", "png", NORM, 1, 1024, BUDGET).kind == "not_an_image"
    assert refused(decode_sar, good[: len(good) // 2], "png", NORM, 1, 1024, BUDGET).kind == "corrupt_image"
    assert refused(decode_sar, good, "jpeg", NORM, 1, 1024, BUDGET).kind == "not_an_image"
    assert (
        refused(decode_sar, png_bytes(np.zeros((4, 64), np.uint8)), "png", NORM, 1, 1024, BUDGET).kind
        == "too_small"
    )


def test_db_geotiff_keeps_georeference_and_scale():
    db = np.linspace(-25, 0, 40 * 40, dtype=np.float32).reshape(1, 40, 40)
    image = decode_sar(tiff_bytes(db), "tiff", NORM, 1, 1024, BUDGET)
    assert image.scale == "db" and image.crs_wkt and "31N" in image.crs_wkt
    assert image.transform == (10.0, 0.0, 600_000.0, 0.0, -10.0, 4_800_000.0)
    np.testing.assert_allclose(image.values, NORM.db_to_model(db), atol=1e-6)


def test_linear_geotiff_is_detected():
    linear = np.full((1, 32, 32), 0.05, np.float32)
    image = decode_sar(tiff_bytes(linear), "tiff", NORM, 1, 1024, BUDGET)
    assert image.scale == "linear"
    np.testing.assert_allclose(
        image.values, NORM.db_to_model(np.full((1, 32, 32), 10 * np.log10(0.05))), atol=1e-5
    )


def test_nan_tiffs():
    all_nan = np.full((1, 32, 32), np.nan, np.float32)
    err = refused(decode_sar, tiff_bytes(all_nan), "tiff", NORM, 1, 1024, BUDGET)
    assert (err.status, err.kind) == (422, "no_valid_pixels")
    part = np.full((1, 32, 32), -10.0, np.float32)
    part[0, :4] = np.nan
    image = decode_sar(tiff_bytes(part), "tiff", NORM, 1, 1024, BUDGET)
    assert (image.values[0, :4] == -1).all() and np.isfinite(image.values).all()


def test_tiff_band_count_size_and_truncation():
    assert (
        refused(decode_sar, tiff_bytes(np.zeros((2, 32, 32), np.float32)), "tiff", NORM, 1, 1024, BUDGET).kind
        == "wrong_bands"
    )
    assert (
        refused(
            decode_sar, tiff_bytes(np.zeros((1, 64, 2000), np.uint8)), "tiff", NORM, 1, 1024, BUDGET
        ).status
        == 413
    )
    rng = np.random.default_rng(1)
    whole = tiff_bytes(rng.normal(-10, 3, (1, 256, 256)).astype(np.float32))
    assert (
        refused(decode_sar, whole[: len(whole) // 3], "tiff", NORM, 1, 1024, BUDGET).kind == "corrupt_image"
    )
    assert (
        refused(decode_sar, png_bytes(np.zeros((32, 32), np.uint8)), "tiff", NORM, 1, 1024, BUDGET).kind
        == "not_an_image"
    )


# --- bounded decode (issue 24): the header is checked, with the declared decoder only, before any pixel ---------


def zeros_zlib(n: int) -> bytes:
    """A zlib stream of n zero bytes (n a multiple of 1 MiB), built without compressing n bytes: after a full
    flush, every further MiB of zeros compresses to the same bytes; the Adler-32 of n zeros is (n mod 65521, 1)."""
    chunk = bytes(2**20)
    assert n % len(chunk) == 0
    z = zlib.compressobj(9)
    head = z.compress(chunk) + z.flush(zlib.Z_FULL_FLUSH)
    again = z.compress(chunk) + z.flush(zlib.Z_FULL_FLUSH)
    return head + again * (n // len(chunk) - 1) + b"\x03\x00" + struct.pack(">I", ((n % 65521) << 16) | 1)


def _ifd(tags: list[tuple[int, int, int]], next_ifd: int) -> bytes:
    out = struct.pack("<H", len(tags))
    for tag, typ, value in sorted(tags):
        out += struct.pack("<HHI", tag, typ, 1) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        )
    return out + struct.pack("<I", next_ifd)


def block_tiff(
    width: int, height: int, tile: int, bits: int = 64, mask_tile: int | None = None, mask_tile_type: int = 4
) -> bytes:
    """A real, readable little-endian TIFF: one float band of width x height px stored as deflate tiles of
    tile x tile px (a tile may be far larger than the image: TIFF allows it, GDAL decodes it whole), and with
    `mask_tile` an internal 8-bit mask IFD (GDAL's per-dataset mask) with tiles of that size. All zeros."""
    data = zeros_zlib(-(-tile * tile * bits // 8 // 2**20) * 2**20)
    mask = zeros_zlib(-(-mask_tile * mask_tile // 2**20) * 2**20) if mask_tile else b""
    n_main, n_mask = 13, 13
    main_at = 8
    mask_at = main_at + 2 + 12 * n_main + 4
    data_at = mask_at + (2 + 12 * n_mask + 4 if mask_tile else 0)
    common = [(256, 4, width), (257, 4, height), (259, 3, 8), (277, 3, 1), (284, 3, 1)]
    main = common + [
        (254, 4, 0),
        (258, 3, bits),
        (262, 3, 1),
        (322, 4, tile),
        (323, 4, tile),
        (324, 4, data_at),
        (325, 4, len(data)),
        (339, 3, 3),
    ]
    out = b"II*\x00" + struct.pack("<I", main_at) + _ifd(main, mask_at if mask_tile else 0)
    if mask_tile:
        out += _ifd(
            common
            + [
                (254, 4, 4),
                (258, 3, 8),
                (262, 3, 4),
                (322, mask_tile_type, mask_tile),
                (323, mask_tile_type, mask_tile),
                (324, 4, data_at + len(data)),
                (325, 4, len(mask)),
                (339, 3, 1),
            ],
            0,
        )
    assert len(out) == data_at
    return out + data + mask


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height 8-bit grey px, with a token IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_the_huge_block_tiff_is_a_real_tiff_whose_header_declares_512_mb():
    body = block_tiff(64, 64, 8192)
    assert 400_000 < len(body) < 600_000  # the observed request: 551 KB
    assert tiff_blocks(body) == [(8192, 8192, 8192 * 8192 * 8)]
    header = read_header(body, "tiff", 1, 1024, 2**30)  # a budget that fits: the header alone is fine
    assert (header.width, header.height, header.bands, header.dtype) == (64, 64, 1, "float64")
    assert (
        header.block_shape == (8192, 8192)
        and header.block_bytes == 2**29
        and header.raster_bytes == 64 * 64 * 8
    )
    assert header.decode_bytes == 2**29


@pytest.mark.parametrize(
    "creation",
    [
        {},
        {"tiled": True, "blockxsize": 32, "blockysize": 16},
        {"BIGTIFF": "YES"},
        {"ENDIANNESS": "BIG", "tiled": True, "blockxsize": 16, "blockysize": 16},
        {"compress": "deflate"},
    ],
)
def test_the_ifd_reader_agrees_with_gdal(creation):
    body = geotiff_bytes(
        np.zeros((1, 48, 64), np.float32), crs=UTM31, transform=from_origin(0.0, 0.0, 10.0, 10.0), **creation
    )
    with rasterio.io.MemoryFile(body) as m, m.open() as ds:
        rows, cols = ds.block_shapes[0]
    assert tiff_blocks(body) == [(rows, cols, rows * cols * 4)]


def test_a_tiff_declaring_a_block_over_budget_is_refused_before_any_read():
    body = block_tiff(64, 64, 8192)
    for call in (
        lambda: read_header(body, "tiff", 1, 1024, BUDGET),
        lambda: decode_sar(body, "tiff", NORM, 1, 1024, BUDGET),
    ):
        with pytest.raises(RequestError) as info:
            call()
        err = info.value
        assert (err.status, err.kind) == (413, "too_large")
        assert str(2**29) in err.message and str(BUDGET) in err.message and "block" in err.message


_MEASURE = """
import resource, sys
from tests.serving.test_serving_codec import BUDGET, NORM, block_tiff
from s2o_platform.serving.codec import RequestError, decode_sar
body = block_tiff(64, 64, 8192)
decode_sar(block_tiff(64, 64, 16, bits=32), "tiff", NORM, 1, 1024, BUDGET)  # warm up GDAL and the imports
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_sar(body, "tiff", NORM, 1, 1024, BUDGET)
except RequestError as err:
    print(err.status, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_the_huge_block_tiff_is_refused_without_allocating_it():
    # GDAL allocates with malloc (tracemalloc does not see it): the peak RSS of a fresh process is measured.
    # Before the header check, decoding this body raised the peak by 513 MB.
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr
    status, grown_mb = map(int, out.stdout.split())
    assert status == 413 and grown_mb < 16


def test_a_mask_ifd_declaring_a_block_over_budget_is_refused():
    body = block_tiff(
        64, 64, 64, bits=32, mask_tile=4096
    )  # image tiles fit; the mask's 4096 px tile is 16 MB
    assert [b for _, _, b in tiff_blocks(body)] == [64 * 64 * 4, 4096 * 4096]
    err = refused(read_header, body, "tiff", 1, 1024, 8 * 2**20)
    assert (err.status, err.kind) == (413, "too_large") and str(4096 * 4096) in err.message
    # within budget it is an ordinary masked TIFF (its all-zero mask hides every pixel)
    assert refused(decode_sar, body, "tiff", NORM, 1, 1024, BUDGET).kind == "no_valid_pixels"


def test_block_sizes_in_signed_or_unknown_tag_types_cannot_slip_past_the_budget():
    # SLONG (9) is a type libtiff accepts for TileWidth/TileLength: the block is read and priced
    signed = block_tiff(64, 64, 64, bits=32, mask_tile=4096, mask_tile_type=9)
    assert refused(read_header, signed, "tiff", 1, 1024, 8 * 2**20).status == 413
    # a type no reader takes for a size (FLOAT, 11): refused rather than skipped
    odd = block_tiff(64, 64, 64, bits=32, mask_tile=64, mask_tile_type=11)
    assert (
        refused(read_header, odd, "tiff", 1, 1024, BUDGET).status,
        refused(read_header, odd, "tiff", 1, 1024, BUDGET).kind,
    ) == (400, "corrupt_image")


def test_an_ifd_with_thousands_of_entries_is_refused_before_a_long_walk():
    entries = [(256, 4, 64), (257, 4, 64)] + [(40000 + i, 4, 0) for i in range(1000)]
    body = b"II*\x00" + struct.pack("<I", 8) + _ifd(entries, 0)
    assert refused(read_header, body, "tiff", 1, 1024, BUDGET).status == 400
    with pytest.raises(ValueError, match="entries"):
        tiff_blocks(body)


def test_a_jpeg_with_too_many_scans_is_refused_from_its_bytes():
    from s2o_platform.serving.codec import MAX_JPEG_SCANS

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buffer, format="JPEG", progressive=True)
    plain = buffer.getvalue()
    assert read_header(plain, "jpeg", 1, 1024, BUDGET).width == 64
    payload = b"\xff\xda" * (MAX_JPEG_SCANS + 1)
    crafted = plain[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + plain[2:]
    err = refused(read_header, crafted, "jpeg", 1, 1024, BUDGET)
    assert (err.status, err.kind) == (413, "too_costly") and "scans" in err.message


def test_a_raster_over_the_decode_budget_is_413_naming_the_figure():
    body = tiff_bytes(np.zeros((1, 512, 512), np.float64))
    err = refused(read_header, body, "tiff", 1, 1024, 2**20)
    assert (err.status, err.kind) == (413, "too_large")
    assert str(512 * 512 * 8) in err.message and str(2**20) in err.message
    png = png_bytes(np.zeros((600, 600), np.uint8))
    assert refused(decode_sar, png, "png", NORM, 1, 1024, 300_000).status == 413
    assert read_header(png, "png", 1, 1024, 360_000).raster_bytes == 360_000


@pytest.mark.parametrize("side", [60000, 10000])
def test_a_png_header_declaring_a_decompression_bomb_is_413_not_500(side):
    body = png_header_only(side, side)  # 60000: Pillow's DecompressionBombError; 10000: its warning
    assert len(body) < 200
    for fn, args in (
        (read_header, (body, "png", 1, 1024, BUDGET)),
        (decode_sar, (body, "png", NORM, 1, 1024, BUDGET)),
    ):
        err = refused(fn, *args)
        assert (err.status, err.kind) == (413, "too_large")


def test_bodies_are_opened_with_the_declared_decoder_only(monkeypatch):
    from PIL import Image as PILImage
    from rasterio.io import MemoryFile

    pillow_formats, gdal_drivers = [], []
    pillow_open, gdal_open = PILImage.open, MemoryFile.open
    monkeypatch.setattr(
        PILImage,
        "open",
        lambda fp, mode="r", formats=None: pillow_formats.append(formats) or pillow_open(fp, mode, formats),
    )
    monkeypatch.setattr(
        MemoryFile,
        "open",
        lambda self, *a, **kw: gdal_drivers.append(kw.get("driver")) or gdal_open(self, *a, **kw),
    )
    png, tif = png_bytes(np.zeros((32, 32), np.uint8)), tiff_bytes(np.zeros((1, 32, 32), np.float32))
    decode_sar(png, "png", NORM, 1, 1024, BUDGET)
    decode_sar(tif, "tiff", NORM, 1, 1024, BUDGET)
    assert pillow_formats and all(f == ["PNG"] for f in pillow_formats)
    assert gdal_drivers and all(d == "GTiff" for d in gdal_drivers)
    gdal_drivers.clear()
    err = refused(decode_sar, png, "tiff", NORM, 1, 1024, BUDGET)  # a PNG sent as TIFF never reaches GDAL
    assert (err.kind, gdal_drivers) == ("not_an_image", []) and "PNG" in err.message
    bmp = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(
        bmp, format="BMP"
    )  # Pillow reads BMP, but not as a PNG
    assert refused(decode_sar, bmp.getvalue(), "png", NORM, 1, 1024, BUDGET).kind == "not_an_image"
    assert refused(decode_sar, tif, "jpeg", NORM, 1, 1024, BUDGET).message.startswith(
        "the body is a TIFF image"
    )
    assert refused(decode_sar, b"II*\x00" + bytes(40), "tiff", NORM, 1, 1024, BUDGET).kind == "corrupt_image"


def test_gdal_block_cache_is_bounded_while_decodes_run_and_restored_after(monkeypatch):
    from rasterio.env import get_gdal_config

    from s2o_platform.data import rasters

    before = int(get_gdal_config("GDAL_CACHEMAX"))
    seen = []
    units_hint = rasters.units_hint
    monkeypatch.setattr(
        rasters,
        "units_hint",
        lambda ds, band: seen.append(int(get_gdal_config("GDAL_CACHEMAX"))) or units_hint(ds, band),
    )
    decode_sar(tiff_bytes(np.full((1, 32, 32), -10.0, np.float32)), "tiff", NORM, 1, 1024, BUDGET)
    assert seen == [min(before, GDAL_CACHE_BYTES)]
    assert int(get_gdal_config("GDAL_CACHEMAX")) == before
    # overlapping decodes: the first to finish does not lift the bound while another still runs
    inside, release = threading.Event(), threading.Event()

    def hold():
        with codec._bounded_gdal_cache():
            inside.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    inside.wait(10)
    with codec._bounded_gdal_cache():
        pass
    assert int(get_gdal_config("GDAL_CACHEMAX")) == min(before, GDAL_CACHE_BYTES)
    release.set()
    other.join(10)
    assert int(get_gdal_config("GDAL_CACHEMAX")) == before


# --- the SAR pixel rule (data.normalization.sar_pixels), shared with `s2o translate` -----------------------


def test_complex_slc_tiffs_are_detected_not_truncated():
    # calibrated complex float: |z| = 0.1 everywhere (0.06 + 0.08j), so intensity 0.01 = -20 dB; dropping the
    # imaginary part (what GDAL's cast did) would give 0.06 taken as power: -12.2 dB
    z = np.full((1, 32, 32), 0.06 + 0.08j, np.complex64)
    image = decode_sar(tiff_bytes(z), "tiff", NORM, 1, 1024, BUDGET)
    assert image.scale == "linear" and "|z|^2" in image.scale_reason
    np.testing.assert_allclose(image.values, NORM.db_to_model(np.full((1, 32, 32), -20.0)), atol=1e-5)
    # uncalibrated complex float (SLC counts): amplitude |z| as digital numbers
    image = decode_sar(
        tiff_bytes(np.full((1, 32, 32), 300 + 400j, np.complex64)), "tiff", NORM, 1, 1024, BUDGET
    )  # |z| 500
    assert image.scale == "dn"
    np.testing.assert_allclose(
        image.values, NORM.db_to_model(np.full((1, 32, 32), 20 * np.log10(500.0) - 56.0)), atol=1e-5
    )


def cint16_tiff(values: np.ndarray) -> bytes:
    """A complex_int16 (CInt16, Sentinel-1 SLC's type) GeoTIFF of complex values."""
    from rasterio.io import MemoryFile

    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff",
            width=values.shape[2],
            height=values.shape[1],
            count=1,
            dtype="complex_int16",
            crs=UTM31,
            transform=from_origin(600_000.0, 4_800_000.0, 10.0, 10.0),
        ) as ds:
            ds.write(values.astype(np.complex64))
        return memfile.read()


def test_complex_int16_tiff_is_amplitude_dn():
    image = decode_sar(cint16_tiff(np.full((1, 32, 32), 300 + 400j)), "tiff", NORM, 1, 1024, BUDGET)
    assert image.scale == "dn" and "complex_int16" in image.scale_reason
    np.testing.assert_allclose(
        image.values, NORM.db_to_model(np.full((1, 32, 32), 20 * np.log10(500.0) - 56.0)), atol=1e-5
    )


def palette_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(32 * 32, dtype=np.uint32).reshape(32, 32).astype(np.uint8)).convert("P").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def one_bit_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 2 * 255).astype(np.uint8)).convert("1").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def palette_tiff() -> bytes:
    from rasterio.io import MemoryFile

    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff",
            width=32,
            height=32,
            count=1,
            dtype="uint8",
            photometric="palette",
            crs=UTM31,
            transform=from_origin(600_000.0, 4_800_000.0, 10.0, 10.0),
        ) as ds:
            ds.write(np.zeros((1, 32, 32), np.uint8))
            ds.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255)})
        return memfile.read()


@pytest.mark.parametrize(
    "make,kind,says",
    [
        (lambda: tiff_bytes(np.zeros((1, 32, 32), np.int8)), "tiff", "int8"),
        (lambda: tiff_bytes(np.zeros((1, 32, 32), np.uint64)), "tiff", "uint64"),
        (lambda: geotiff_bytes(np.zeros((1, 32, 32), np.uint8), nbits=1), "tiff", "1-bit"),
        (palette_tiff, "tiff", "palette"),
        (palette_png, "png", "palette"),
        (one_bit_png, "png", "1-bit"),
    ],
)
def test_pixels_no_scale_fits_are_422_saying_what_to_send(make, kind, says):
    body = make()
    for fn, args in (
        (read_header, (body, kind, 1, 1024, BUDGET)),
        (decode_sar, (body, kind, NORM, 1, 1024, BUDGET)),
    ):
        err = refused(fn, *args)
        assert (err.status, err.kind) == (422, "unsupported_dtype")
        assert says in err.message and "8-bit greyscale" in err.message and "float32" in err.message


def test_16bit_png_is_still_digital_numbers():
    image = decode_sar(png_bytes(np.full((32, 32), 400, np.uint16)), "png", NORM, 1, 1024, BUDGET)
    assert image.scale == "dn"
    np.testing.assert_allclose(
        image.values, NORM.db_to_model(np.full((1, 32, 32), 20 * np.log10(400.0) - 56.0)), atol=1e-5
    )


def test_encoders_round_trip():
    optical = np.stack([np.full((20, 30), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    png = Image.open(io.BytesIO(encode_png(optical)))
    assert png.mode == "RGB" and png.size == (30, 20)
    assert tuple(np.asarray(png)[0, 0]) == (0, 128, 255)
    transform = (10.0, 0.0, 600_000.0, 0.0, -10.0, 4_800_000.0)
    with (
        rasterio.io.MemoryFile(
            encode_tiff(optical, rasterio.crs.CRS.from_string(UTM31).to_wkt(), transform)
        ) as m,
        m.open() as ds,
    ):
        assert (ds.count, ds.width, ds.height, ds.dtypes[0]) == (3, 30, 20, "uint8")
        assert ds.crs.to_epsg() == 32631 and tuple(ds.transform)[:6] == transform
        assert ds.read(3)[0, 0] == 255
    with rasterio.io.MemoryFile(encode_tiff(optical, None, None)) as m:
        with pytest.warns(rasterio.errors.NotGeoreferencedWarning):  # as asked: no georeference
            ds = m.open()
        with ds:
            assert ds.crs is None


@pytest.mark.parametrize("height,width", [(256, 256), (32, 32), (70, 33), (20, 50), (9, 9)])
def test_cut_and_mosaic_reproduce_the_image(height, width):
    image = np.random.default_rng(height * width).random((1, height, width)).astype(np.float32)
    tiles, positions = cut_image(image, 32, 8)
    assert tiles.shape[1:] == (1, 32, 32) and len(tiles) == len(positions)
    assert positions[0] == (0, 0)
    out = mosaic_image(np.repeat(tiles, 3, axis=1), positions, height, width, 8)
    assert out.shape == (3, height, width)
    np.testing.assert_allclose(out, np.repeat(image, 3, axis=0), atol=1e-5)


def test_cut_image_tile_count_with_overlap():
    # stride 24 over 256 px: starts 0, 24, ..., 216 and one aligned to the edge at 224 -> 11 per axis
    tiles, positions = cut_image(np.zeros((1, 256, 256), np.float32), 32, 8)
    assert len(tiles) == 121
    assert positions[-1] == (224, 224)


def test_mosaic_cross_fades_overlapping_predictions():
    tiles, positions = cut_image(np.zeros((1, 32, 56), np.float32), 32, 8)
    assert positions == [(0, 0), (0, 24)]
    predictions = np.stack([np.zeros((3, 32, 32), np.float32), np.ones((3, 32, 32), np.float32)])
    out = mosaic_image(predictions, positions, 32, 56, 8)
    row = out[0, 16]
    assert row[0] == 0 and row[-1] == 1
    overlap = row[24:32]
    assert (np.diff(overlap) > 0).all() and 0 < overlap[0] < 0.5 < overlap[-1] < 1
    assert zlib.crc32(out.tobytes()) == zlib.crc32(mosaic_image(predictions, positions, 32, 56, 8).tobytes())
