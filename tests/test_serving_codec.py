"""Request decoding/encoding and image tiling for the HTTP endpoint: pure functions, no Ray."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from s2o_platform.data.normalization import SarNormalization, uint8_to_model
from s2o_platform.geo.blending import cut_image, mosaic_image
from s2o_platform.serving.codec import (
    RequestError,
    check_body,
    decode_sar,
    encode_png,
    encode_tiff,
    geotiff_bytes,
    media_kind,
    parse_format,
    parse_steps,
)

NORM = SarNormalization()
UTM31 = "EPSG:32631"


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray, crs: str | None = UTM31, nodata=None) -> bytes:
    return geotiff_bytes(array, crs=crs, transform=from_origin(600_000.0, 4_800_000.0, 10.0, 10.0), nodata=nodata)


def refused(fn, *args) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("header,kind", [("image/png", "png"), ("image/PNG; charset=x", "png"), ("image/jpeg", "jpeg"),
                                         ("image/tiff", "tiff"), ("image/tiff; application=geotiff", "tiff")])
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
    image = decode_sar(png_bytes(raw), "png", NORM, 1, 1024)
    assert image.values.shape == (1, 48, 64) and image.scale == "uint8"
    np.testing.assert_allclose(image.values[0], uint8_to_model(raw))
    assert image.crs_wkt is None


def test_jpeg_decodes():
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(buffer, format="JPEG")
    image = decode_sar(buffer.getvalue(), "jpeg", NORM, 1, 1024)
    assert image.values.shape == (1, 40, 40)
    assert abs(float(image.values.mean()) - (128 / 127.5 - 1)) < 0.02


def test_rgb_png_is_wrong_band_count():
    err = refused(decode_sar, png_bytes(np.zeros((32, 32, 3), np.uint8)), "png", NORM, 1, 1024)
    assert (err.status, err.kind) == (422, "wrong_bands")


def test_decompression_bomb_refused_from_header():
    bomb = png_bytes(np.zeros((4000, 4000), np.uint8))  # a few kB that would decode into 16 MB
    assert len(bomb) < 100_000
    err = refused(decode_sar, bomb, "png", NORM, 1, 1024)
    assert (err.status, err.kind) == (413, "too_large")


def test_not_an_image_truncated_and_mislabelled():
    good = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert refused(decode_sar, b"hello world", "png", NORM, 1, 1024).kind == "not_an_image"
    assert refused(decode_sar, good[: len(good) // 2], "png", NORM, 1, 1024).kind == "corrupt_image"
    assert refused(decode_sar, good, "jpeg", NORM, 1, 1024).kind == "not_an_image"
    assert refused(decode_sar, png_bytes(np.zeros((4, 64), np.uint8)), "png", NORM, 1, 1024).kind == "too_small"


def test_db_geotiff_keeps_georeference_and_scale():
    db = np.linspace(-25, 0, 40 * 40, dtype=np.float32).reshape(1, 40, 40)
    image = decode_sar(tiff_bytes(db), "tiff", NORM, 1, 1024)
    assert image.scale == "db" and image.crs_wkt and "31N" in image.crs_wkt
    assert image.transform == (10.0, 0.0, 600_000.0, 0.0, -10.0, 4_800_000.0)
    np.testing.assert_allclose(image.values, NORM.db_to_model(db), atol=1e-6)


def test_linear_geotiff_is_detected():
    linear = np.full((1, 32, 32), 0.05, np.float32)
    image = decode_sar(tiff_bytes(linear), "tiff", NORM, 1, 1024)
    assert image.scale == "linear"
    np.testing.assert_allclose(image.values, NORM.db_to_model(np.full((1, 32, 32), 10 * np.log10(0.05))), atol=1e-5)


def test_nan_tiffs():
    all_nan = np.full((1, 32, 32), np.nan, np.float32)
    err = refused(decode_sar, tiff_bytes(all_nan), "tiff", NORM, 1, 1024)
    assert (err.status, err.kind) == (422, "no_valid_pixels")
    part = np.full((1, 32, 32), -10.0, np.float32)
    part[0, :4] = np.nan
    image = decode_sar(tiff_bytes(part), "tiff", NORM, 1, 1024)
    assert (image.values[0, :4] == -1).all() and np.isfinite(image.values).all()


def test_tiff_band_count_size_and_truncation():
    assert refused(decode_sar, tiff_bytes(np.zeros((2, 32, 32), np.float32)), "tiff", NORM, 1, 1024).kind == "wrong_bands"
    assert refused(decode_sar, tiff_bytes(np.zeros((1, 64, 2000), np.uint8)), "tiff", NORM, 1, 1024).status == 413
    rng = np.random.default_rng(1)
    whole = tiff_bytes(rng.normal(-10, 3, (1, 256, 256)).astype(np.float32))
    assert refused(decode_sar, whole[: len(whole) // 3], "tiff", NORM, 1, 1024).kind == "corrupt_image"
    assert refused(decode_sar, png_bytes(np.zeros((32, 32), np.uint8)), "tiff", NORM, 1, 1024).kind == "not_an_image"


def test_encoders_round_trip():
    optical = np.stack([np.full((20, 30), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    png = Image.open(io.BytesIO(encode_png(optical)))
    assert png.mode == "RGB" and png.size == (30, 20)
    assert tuple(np.asarray(png)[0, 0]) == (0, 128, 255)
    transform = (10.0, 0.0, 600_000.0, 0.0, -10.0, 4_800_000.0)
    with rasterio.io.MemoryFile(encode_tiff(optical, rasterio.crs.CRS.from_string(UTM31).to_wkt(), transform)) as m, m.open() as ds:
        assert (ds.count, ds.width, ds.height, ds.dtypes[0]) == (3, 30, 20, "uint8")
        assert ds.crs.to_epsg() == 32631 and tuple(ds.transform)[:6] == transform
        assert ds.read(3)[0, 0] == 255
    with rasterio.io.MemoryFile(encode_tiff(optical, None, None)) as m, m.open() as ds:
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
