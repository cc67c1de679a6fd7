"""Reading pairs into tiles: georeference, resampling, normalisation and every bad-input case."""

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from s2o_platform import storage
from s2o_platform.data.extract import PairReport, TilingSettings, tiles_from_pair
from s2o_platform.data.normalization import OpticalNormalization, SarNormalization, SarScale
from s2o_platform.data.rasters import InputError
from s2o_platform.data.sources import PairSource
from s2o_platform.data.store import decode_batch
from tests.fixtures import optical_png, sar_png, truncate, write_geotiff, write_geotiff_pair, write_png

NORM = SarNormalization()
OPT = OpticalNormalization()


def tiles(sar, optical, size=32, scale=SarScale.AUTO, report=None, kind="folders"):
    pair = PairSource(str(sar), str(optical), "scene", kind)
    return list(tiles_from_pair(pair, "train", TilingSettings(size, None, scale), NORM, OPT, None, report))


def decoded(rows):
    return decode_batch({k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]})


def test_png_pair_tiles_and_values(tmp_path):
    rng = np.random.default_rng(0)
    sar, opt = sar_png(rng, 64), optical_png(rng, 64)
    rows = tiles(write_png(tmp_path / "s.png", sar), write_png(tmp_path / "o.png", opt))
    assert len(rows) == 4 and all(r["crs"] is None and r["transform"] is None for r in rows)
    assert {r["sar_scale"] for r in rows} == {"uint8"}
    d = decoded(rows)
    # tile 1 is the window at row 0, col 32: 8-bit SAR maps linearly onto [-1, 1]
    np.testing.assert_allclose(d["sar"][1, 0], sar[:32, 32:] / 127.5 - 1, atol=2e-3)
    np.testing.assert_allclose((d["optical"][1] + 1) * 127.5, opt[:32, 32:].transpose(2, 0, 1), atol=1e-3)


def test_geotiff_window_georeference(tmp_path):
    sar, opt = write_geotiff_pair(tmp_path, rows=96, cols=80)
    rows = tiles(sar, opt, size=32)
    # rows: 0, 32, 64; cols: 0, 32, 48 (edge-aligned)
    assert [(r["row_off"], r["col_off"]) for r in rows][:3] == [(0, 0), (0, 32), (0, 48)]
    assert len(rows) == 9 and rows[0]["crs"] == "EPSG:32631" and rows[0]["sar_scale"] == "db"
    r = rows[5]  # row 32, col 48
    assert r["transform"] == [10.0, 0.0, 600_000.0 + 480.0, 0.0, -10.0, 4_800_000.0 - 320.0]
    with rasterio.open(sar) as src:
        db = src.read(1)[32:64, 48:80]
    np.testing.assert_allclose(decoded(rows)["sar"][5, 0], NORM.db_to_model(db), atol=2e-3)


def test_optical_resampled_onto_sar_grid(tmp_path):
    # Optical grid shifted by 3 px and larger: after resampling, tile pixels line up with the SAR grid.
    sar, opt = write_geotiff_pair(tmp_path, rows=64, cols=64, shift_px=3)
    rows = tiles(sar, opt, size=32)
    assert len(rows) == 4
    with rasterio.open(opt) as src:
        expected = OPT.to_uint8(src.read()[:, 3:35, 3:35])
    got = (decoded(rows)["optical"][0] + 1) * 127.5
    np.testing.assert_allclose(got, expected, atol=1.01)


def test_linear_and_dn_scenes_detected(tmp_path):
    t = from_origin(0, 0, 10, 10)
    linear = write_geotiff(
        tmp_path / "lin.tif", np.full((1, 32, 32), 0.1, np.float32) + np.eye(32, dtype=np.float32) * 0.01, t
    )
    dn = write_geotiff(
        tmp_path / "dn.tif", np.full((1, 32, 32), 1000, np.uint16) + np.eye(32, dtype=np.uint16), t
    )
    opt = write_geotiff(tmp_path / "opt.tif", np.full((3, 32, 32), 500, np.uint16), t)
    report = PairReport()
    rows = tiles(linear, opt, report=report)
    assert report.scale == "linear"
    assert decoded(rows)["sar"][0, 0, 0, 1] == pytest.approx(NORM.db_to_model(np.array([-10.0]))[0], abs=2e-3)
    rows = tiles(dn, opt)
    assert rows[0]["sar_scale"] == "dn"


def test_nodata_windows_skipped_not_written(tmp_path):
    t = from_origin(0, 0, 10, 10)
    sar = np.random.default_rng(0).uniform(-20, -5, (1, 64, 64)).astype(np.float32)
    sar[0, :32, :32] = -99  # nodata value
    sar[0, 40, 40] = np.nan
    s = write_geotiff(tmp_path / "s.tif", sar, t, nodata=-99)
    opt = np.full((3, 64, 64), 400, np.uint16)
    opt[:, 0:16, 40:64] = 0  # Sentinel-2 fill: an all-zero region (undeclared), 16 x 24 px
    opt[:, 45, 5] = 0  # one black pixel of real dark ground: valid
    o = write_geotiff(tmp_path / "o.tif", opt, t)
    report = PairReport()
    rows = tiles(s, o, report=report)
    assert report.windows_skipped == {"SAR nodata/NaN/inf in window": 2, "optical nodata in window": 1}
    assert len(rows) == 1 and (rows[0]["row_off"], rows[0]["col_off"]) == (32, 0)


def test_entirely_nan_sar_rejected(tmp_path):
    t = from_origin(0, 0, 10, 10)
    s = write_geotiff(tmp_path / "s.tif", np.full((1, 32, 32), np.nan, np.float32), t)
    o = write_geotiff(tmp_path / "o.tif", np.full((3, 32, 32), 400, np.uint16), t)
    with pytest.raises(InputError, match="entirely nodata"):
        tiles(s, o)


def test_inf_sar_window_skipped(tmp_path):
    t = from_origin(0, 0, 10, 10)
    sar = np.random.default_rng(0).uniform(-20, -5, (1, 32, 32)).astype(np.float32)
    sar[0, 3, 3] = np.inf
    report = PairReport()
    rows = tiles(
        write_geotiff(tmp_path / "s.tif", sar, t),
        write_geotiff(tmp_path / "o.tif", np.full((3, 32, 32), 400, np.uint16), t),
        report=report,
    )
    assert rows == [] and report.windows_skipped["SAR nodata/NaN/inf in window"] == 1


def test_constant_sar_is_fill(tmp_path):
    report = PairReport()
    rows = tiles(
        write_png(tmp_path / "s.png", np.zeros((32, 32), np.uint8)),
        write_png(tmp_path / "o.png", optical_png(np.random.default_rng(0), 32)),
        report=report,
    )
    assert rows == [] and report.windows_skipped == {"constant SAR window (fill)": 1}


def test_size_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="size mismatch"):
        tiles(
            write_png(tmp_path / "s.png", sar_png(rng, 64)),
            write_png(tmp_path / "o.png", optical_png(rng, 48)),
        )


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_images(tmp_path, damage):
    rng = np.random.default_rng(0)
    s = write_png(tmp_path / "s.png", sar_png(rng, 64))
    o = write_png(tmp_path / "o.png", optical_png(rng, 64))
    if damage == "truncated":
        truncate(s)
    elif damage == "garbage":
        s.write_bytes(b"definitely not a png" * 10)
    else:
        s.write_bytes(b"")
    with pytest.raises(InputError, match="cannot decode|empty file"):
        tiles(s, o)


def test_truncated_geotiff(tmp_path):
    sar, opt = write_geotiff_pair(tmp_path, rows=64, cols=64)
    truncate(sar, 0.3)
    with pytest.raises(InputError, match="cannot (open|read)"):
        tiles(sar, opt)


def test_wrong_band_counts(tmp_path):
    rng = np.random.default_rng(0)
    t = from_origin(0, 0, 10, 10)
    two_band_optical = write_geotiff(tmp_path / "o2.tif", np.full((2, 32, 32), 400, np.uint16), t)
    sar = write_geotiff(tmp_path / "s.tif", rng.uniform(-20, -5, (1, 32, 32)).astype(np.float32), t)
    with pytest.raises(InputError, match="wrong band count for optical"):
        tiles(sar, two_band_optical)
    three_band_sar = write_geotiff(
        tmp_path / "s3.tif", rng.uniform(-20, -5, (3, 32, 32)).astype(np.float32), t
    )
    with pytest.raises(InputError, match="wrong band count for SAR"):
        tiles(three_band_sar, write_geotiff(tmp_path / "o.tif", np.full((3, 32, 32), 400, np.uint16), t))
    grey_optical = write_png(tmp_path / "o.png", sar_png(rng, 32))
    with pytest.raises(InputError, match="wrong band count for optical"):
        tiles(write_png(tmp_path / "s.png", sar_png(rng, 32)), grey_optical)


def test_dual_pol_sar_picks_vv_by_name(tmp_path):
    t = from_origin(0, 0, 10, 10)
    rng = np.random.default_rng(0)
    vh = rng.uniform(-25, -15, (32, 32))
    vv = rng.uniform(-12, -5, (32, 32))
    s = write_geotiff(tmp_path / "s.tif", np.stack([vh, vv]).astype(np.float32), t, descriptions=["VH", "VV"])
    rows = tiles(s, write_geotiff(tmp_path / "o.tif", np.full((3, 32, 32), 400, np.uint16), t))
    np.testing.assert_allclose(decoded(rows)["sar"][0, 0], NORM.db_to_model(vv), atol=2e-3)


def test_scene_smaller_than_tile(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="smaller than the tile size"):
        tiles(
            write_png(tmp_path / "s.png", sar_png(rng, 16)),
            write_png(tmp_path / "o.png", optical_png(rng, 16)),
        )


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        tiles(tmp_path / "nope.png", tmp_path / "nope2.png")


# --- real samples --------------------------------------------------------------------------------


def test_real_sen12_pair(real_data):
    rows = tiles(
        real_data / "sar" / "ROIs1868_summer_59_p30.png",
        real_data / "optical" / "ROIs1868_summer_59_p30.png",
        size=256,
    )
    assert len(rows) == 1 and rows[0]["sar_scale"] == "uint8"


def test_real_ssl4eo_site_resampled(real_data):
    site = real_data / "geotiff" / "ssl4eo_s12_0000200"
    s1 = next((site / "s1").iterdir())
    s2 = next((site / "s2_l2a").iterdir())
    report = PairReport()
    rows = tiles(s1, s2, size=64, report=report, kind="site")
    assert report.scale == "db" and len(rows) >= 9
    assert rows[0]["crs"] == "EPSG:4326"
    with rasterio.open(s1 / "VV.tif") as src:
        assert rows[0]["transform"][0] == pytest.approx(src.transform.a)


@pytest.mark.parametrize("optical", ["bigearthnet", "eurosat"])
def test_real_optical_formats_with_sar_on_their_grid(real_data, tmp_path, optical):
    """Real Sentinel-2 optical (band files at 10/20/60 m; a 13-band stack) paired with a SAR on its grid."""
    if optical == "bigearthnet":
        path = next((real_data / "geotiff" / "bigearthnet_s2").iterdir())
        ref = next(path.glob("*_B04.tif"))
    else:
        path = ref = real_data / "geotiff" / "eurosat_ms" / "AnnualCrop_1.tif"
    with rasterio.open(ref) as src:
        grid = (src.crs.to_string(), src.transform, src.height, src.width)
        red = src.read(4 if optical == "eurosat" else 1)
    sar = write_geotiff(
        tmp_path / "vv.tif",
        np.random.default_rng(0).uniform(-20, -5, (1, grid[2], grid[3])).astype(np.float32),
        grid[1],
        crs=grid[0],
    )
    rows = tiles(sar, path, size=32)
    assert rows and rows[0]["crs"] == grid[0]
    expected_red = OPT.to_uint8(red[:32, :32])
    got_red = np.rint((decoded(rows)["optical"][0, 0] + 1) * 127.5)
    np.testing.assert_allclose(got_red, expected_red, atol=1)


def test_real_linear_and_db_sar_scales(real_data):
    from s2o_platform.data.rasters import open_sar

    fs, _ = storage.resolve("/")
    from s2o_platform.data.normalization import detect_sar_scale

    opera = next((real_data / "geotiff" / "opera_rtc_s1").glob("*_VV.tif"))
    spatialist = next((real_data / "geotiff" / "spatialist").glob("*.tif"))
    for path, expected in ((opera, SarScale.LINEAR), (spatialist, SarScale.DB)):
        with open_sar(str(path), fs) as raster:
            assert detect_sar_scale(raster.sample(), raster.dtype, raster.units_hint)[0] is expected


def _labelled(sar, optical, labels, size=32):
    pair = PairSource(str(sar), str(optical), "scene", "folders", labels=str(labels))
    return list(
        tiles_from_pair(pair, "train", TilingSettings(size, None, SarScale.AUTO), NORM, OPT, None, None)
    )


def test_class_map_png_is_stored_with_each_tile(tmp_path):
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 5, size=(64, 64), dtype=np.uint8)
    rows = _labelled(
        write_png(tmp_path / "s.png", sar_png(rng, 64)),
        write_png(tmp_path / "o.png", optical_png(rng, 64)),
        write_png(tmp_path / "l.png", classes),
    )
    d = decoded(rows)
    assert d["landcover"].shape == (4, 32, 32) and d["landcover"].dtype == np.uint8
    np.testing.assert_array_equal(
        d["landcover"][1], classes[:32, 32:]
    )  # the same window as the SAR and optical


def test_class_map_geotiff_is_resampled_by_nearest_and_nodata_is_unlabelled(tmp_path):
    # labels on a grid shifted by 3 px: nearest resampling keeps whole classes; nodata (99) -> unlabelled (255)
    sar, opt = write_geotiff_pair(tmp_path, rows=64, cols=64)
    classes = np.random.default_rng(1).integers(0, 7, size=(1, 70, 70)).astype(np.uint8)
    classes[0, 3, 3] = 99
    labels = write_geotiff(
        tmp_path / "labels" / "scene.tif",
        classes,
        from_origin(600_000.0 - 30.0, 4_800_000.0 + 30.0, 10.0, 10.0),
        nodata=99,
    )
    d = decoded(_labelled(sar, opt, labels))
    expected = classes[0, 3:35, 3:35].copy()
    expected[expected == 99] = 255
    np.testing.assert_array_equal(d["landcover"][0], expected)


def test_class_map_with_other_values_is_refused_with_its_path(tmp_path):
    rng = np.random.default_rng(0)
    sar, opt = (
        write_png(tmp_path / "s.png", sar_png(rng, 64)),
        write_png(tmp_path / "o.png", optical_png(rng, 64)),
    )
    with pytest.warns(NotGeoreferencedWarning):  # a class map on the image's pixel grid, no georeference
        labels = write_geotiff(
            tmp_path / "l.tif", np.full((1, 64, 64), 2.5, np.float32), from_origin(0, 0, 1, 1), crs=None
        )
    with pytest.raises(InputError, match=r"l\.tif.*whole class numbers"):
        _labelled(sar, opt, labels)
    with pytest.raises(InputError, match="one band"):
        _labelled(sar, opt, write_png(tmp_path / "rgb.png", optical_png(rng, 64)))


def test_palette_class_map_gives_its_indices_and_255_is_unlabelled(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, size=(32, 32), dtype=np.uint8)
    classes[0, :5] = 255
    image = Image.fromarray(classes, mode="P")
    image.putpalette([0, 0, 255, 0, 255, 0, 255, 255, 0, 128, 128, 128] + [0, 0, 0] * 252)
    image.save(tmp_path / "l.png")
    rows = _labelled(
        write_png(tmp_path / "s.png", sar_png(rng, 32)),
        write_png(tmp_path / "o.png", optical_png(rng, 32)),
        tmp_path / "l.png",
    )
    np.testing.assert_array_equal(decoded(rows)["landcover"][0], classes)


def test_folders_layout_finds_labels_beside_sar_and_optical(tmp_path):
    from s2o_platform.data.sources import discover
    from tests.fixtures import write_paired_folders

    root = write_paired_folders(tmp_path / "src", n=2, size=32)
    write_png(root / "labels" / "pair_0.png", np.zeros((32, 32), np.uint8))
    pairs, skipped = discover(str(root))
    assert [(p.labels or "").endswith("labels/pair_0.png") for p in pairs] == [True, False] and not skipped


def test_optical_nodata_rule_declared_or_fill_region():
    """data/nodata.py: declared nodata (NaN) is always invalid; undeclared zeros only inside an all-zero
    16 x 16 square; isolated black pixels and thin dark lines are ground."""
    from s2o_platform.data.nodata import FILL_BLOCK, fill_region, invalid_optical

    window = np.full((3, 48, 48), 80.0)
    window[:, 0:FILL_BLOCK, 0 : FILL_BLOCK + 4] = 0  # fill: 16 x 20
    window[:, 30, 30] = 0  # an isolated black pixel
    window[:, 40, :] = 0  # a one-pixel black line across the window
    window[:, 20:35, 20:35] = 0  # a 15 x 15 black patch: below the block size
    window[1, 10, 40] = np.nan  # declared nodata in one band
    invalid = invalid_optical(window)
    expected = np.zeros((48, 48), bool)
    expected[0:FILL_BLOCK, 0 : FILL_BLOCK + 4] = True
    expected[10, 40] = True
    np.testing.assert_array_equal(invalid, expected)
    # A pixel of a zero band in only some bands is never fill.
    partial = np.zeros((3, 32, 32))
    partial[0] = 5
    assert not invalid_optical(partial).any()
    # Exactly one block is covered, with its every pixel.
    square = np.zeros((20, 20), bool)
    square[2:18, 3:19] = True
    np.testing.assert_array_equal(fill_region(square), square)


def test_plain_images_stay_in_their_own_dtype_and_windows_are_converted(tmp_path):
    """A decoded PNG is held as uint8 (an 8th of float64's memory); only the window read is float64."""
    from s2o_platform.data.rasters import open_optical, open_sar
    from s2o_platform.geo.tiling import grid_windows

    rng = np.random.default_rng(3)
    fs, _ = storage.resolve(str(tmp_path))
    sar_path = write_png(tmp_path / "s.png", sar_png(rng, 64))
    optical_path = write_png(tmp_path / "o.png", optical_png(rng, 64))
    with open_sar(str(sar_path), fs, None) as sar, open_optical(str(optical_path), fs) as optical:
        assert sar.array.dtype == np.uint8 and optical.array.dtype == np.uint8
        window = grid_windows(64, 64, 32)[3]
        tile = optical.read(window)
        assert tile.dtype == np.float64 and tile.shape == (3, 32, 32)
        np.testing.assert_array_equal(tile, optical.array[:, 32:, 32:])
        assert sar.sample().dtype == np.float64


def test_windows_under_max_nodata_are_kept_with_a_mask(tmp_path):
    """With max_nodata 0.1 a window holding a few nodata pixels is kept: those pixels get the fixed fill
    (SAR -1, optical 0) and are False in the row's `valid` mask; a window over the limit is skipped."""
    from s2o_platform.data.store import decode_valid

    t = from_origin(0, 0, 10, 10)
    sar = np.random.default_rng(0).uniform(-20, -5, (1, 64, 64)).astype(np.float32)
    sar[0, 40, 40] = -99  # declared nodata: 1 pixel of the window at (32, 32)
    s = write_geotiff(tmp_path / "s.tif", sar, t, nodata=-99)
    opt = np.full((3, 64, 64), 400, np.uint16)
    opt[:, 0:16, 40:64] = 0  # a fill region: 384 of the 1024 pixels of the window at (0, 32)
    opt[:, 50:54, 0:4] = 0  # 16 black pixels: ground, not fill
    o = write_geotiff(tmp_path / "o.tif", opt, t)
    report = PairReport()
    pair = PairSource(str(s), str(o), "scene", "folders")
    rows = list(
        tiles_from_pair(
            pair,
            "train",
            TilingSettings(tile_size=32, max_nodata=0.1),
            SarNormalization(),
            OpticalNormalization(),
            None,
            report,
        )
    )
    assert report.windows_skipped == {"optical nodata in window": 1} and report.windows_masked == 1
    by_origin = {(r["row_off"], r["col_off"]): r for r in rows}
    assert set(by_origin) == {(0, 0), (32, 0), (32, 32)}
    masked = by_origin[(32, 32)]
    valid = decode_valid(masked["valid"], 32)
    assert valid.sum() == 1023 and not valid[8, 8]
    decoded = decode_batch(
        {
            k: np.array([masked[k]], dtype=object)
            for k in ("sar", "optical", "tile_size", "sar_channels", "tile_id", "valid")
        }
    )
    assert decoded["sar"][0, 0, 8, 8] == -1.0 and (decoded["optical"][0, :, 8, 8] == -1.0).all()
    np.testing.assert_array_equal(decoded["valid"][0], valid)
    assert (
        by_origin[(0, 0)]["valid"] is None and by_origin[(32, 0)]["valid"] is None
    )  # fully valid: no mask stored
