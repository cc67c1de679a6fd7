"""Pure blending: tapers by hand, and mosaics that are seamless and bounded in memory."""

import numpy as np
import pytest

from s2o_platform.geo.blending import StripMosaic, blend_weights, taper_1d
from s2o_platform.geo.tiling import grid_windows


def test_taper_by_hand():
    assert taper_1d(8, 2).tolist() == [0.25, 0.75, 1, 1, 1, 1, 0.75, 0.25]
    assert taper_1d(4, 0).tolist() == [1, 1, 1, 1]
    w = blend_weights(8, 2)
    assert w[0, 0] == pytest.approx(0.0625) and w[4, 4] == 1.0 and w.shape == (8, 8)


def mosaic_of(scene: np.ndarray, tile: int, overlap: int, predict=lambda x: x):
    channels, height, width = scene.shape
    mosaic = StripMosaic(height, width, channels, tile, overlap)
    out = np.full_like(scene, np.nan)
    most_rows = 0
    for w in grid_windows(height, width, tile, tile - overlap):
        piece = predict(scene[:, w.row_off : w.row_off + tile, w.col_off : w.col_off + tile])
        for start, band in mosaic.add(w.row_off, w.col_off, piece):
            out[:, start : start + band.shape[1]] = band
        most_rows = max(most_rows, mosaic.rows_held)
    for start, band in mosaic.finish():
        out[:, start : start + band.shape[1]] = band
    return out, most_rows


def test_identity_predictions_reassemble_the_scene_exactly():
    scene = np.random.default_rng(0).random((3, 70, 53)).astype(np.float32)
    out, _ = mosaic_of(scene, tile=16, overlap=4)
    np.testing.assert_allclose(out, scene, atol=1e-5)


def test_tiles_that_disagree_cross_fade_without_a_seam():
    # neighbouring tiles predict constants 0.5 apart: without blending the row would jump by 0.5
    scene = np.zeros((1, 32, 96), np.float32)
    counter = iter(range(100))
    out, _ = mosaic_of(scene, tile=32, overlap=16, predict=lambda x: np.full_like(x, 0.5 * next(counter)))
    row = out[0, 16]
    assert np.all(np.isfinite(row)) and row[0] == pytest.approx(0.0) and row[-1] == pytest.approx(2.0)
    assert np.max(np.abs(np.diff(row))) < 0.05
    assert np.all(np.diff(row) >= -1e-6)  # monotone: a cross-fade, not an overshoot


def test_memory_is_bounded_by_two_tile_heights():
    scene = np.zeros((1, 400, 40), np.float32)
    _, most_rows = mosaic_of(scene, tile=16, overlap=4)
    assert most_rows <= 2 * 16


def test_rows_must_arrive_in_order():
    m = StripMosaic(64, 64, 1, 16, 0)
    m.add(16, 0, np.zeros((1, 16, 16)))
    with pytest.raises(ValueError, match="row order"):
        m.add(0, 0, np.zeros((1, 16, 16)))


@pytest.mark.parametrize("height,width", [(8, 8), (32, 32), (33, 32), (100, 57), (1024, 1024)])
def test_tile_count_matches_cut_image(height, width):
    from s2o_platform.geo.blending import cut_image, tile_count

    tiles, _ = cut_image(np.zeros((1, height, width), np.float32), 32, 8)
    assert tile_count(height, width, 32, 8) == len(tiles)


def test_tile_count_of_the_blank_1024_request():
    from s2o_platform.geo.blending import tile_count

    # the request: 1024 px a side, 32 px tiles with a quarter-tile overlap -> 43 x 43 windows
    assert tile_count(1024, 1024, 32, 8) == 1849


@pytest.mark.parametrize("max_tiles", [1, 3, 4, 9, 10, 100, 1849])
def test_largest_side_within_is_the_largest_square_that_fits(max_tiles):
    from s2o_platform.geo.blending import largest_side_within, tile_count

    side = largest_side_within(max_tiles, 32, 8)
    assert tile_count(side, side, 32, 8) <= max_tiles < tile_count(side + 1, side + 1, 32, 8)


def test_largest_side_within_nothing_fits():
    from s2o_platform.geo.blending import largest_side_within

    assert largest_side_within(0, 32, 8) == 0


def test_a_constant_uncertainty_band_stays_constant_across_seams_while_rgb_cross_fades():
    from s2o_platform.geo.blending import mosaic_tile, output_pixels

    height, width, tile, overlap = 40, 88, 16, 6
    mosaic = StripMosaic(height, width, 5, tile, overlap)
    bands = []
    for k, w in enumerate(grid_windows(height, width, tile, tile - overlap)):
        optical = np.full((3, tile, tile), -0.8 + 0.1 * (k % 7), np.float32)  # neighbours disagree
        uncertainty = np.full((tile, tile), 0.4, np.float32)  # model units: 0.2 of the [0, 1] image
        bands += mosaic.add(
            w.row_off, w.col_off, mosaic_tile(optical, np.ones((tile, tile), bool), uncertainty)
        )
    bands += mosaic.finish()
    image = np.concatenate([output_pixels(band, "uint8") for _, band in bands], axis=1)
    floats = np.concatenate([output_pixels(band, "float32") for _, band in bands], axis=1)
    assert image.shape == (4, height, width)
    assert np.unique(image[3]).tolist() == [51]  # 0.2 x 255: the same on every seam
    np.testing.assert_allclose(floats[3], 0.2, atol=1e-6)
    assert len(np.unique(image[0])) > 3  # the RGB bands blend their disagreeing tiles


def test_nodata_pixels_are_nodata_in_the_uncertainty_band_too():
    from s2o_platform.geo.blending import mosaic_tile, output_pixels

    valid = np.ones((8, 8), bool)
    valid[:, :3] = False
    band = mosaic_tile(np.zeros((3, 8, 8), np.float32), valid, np.full((8, 8), 0.5, np.float32))
    uint8, floats = output_pixels(band, "uint8"), output_pixels(band, "float32")
    assert (uint8[:, :, :3] == 0).all() and (uint8[3, :, 3:] == 64).all()  # 0.25 x 255 = 63.75
    assert np.isnan(floats[:, :, :3]).all() and np.allclose(floats[3, :, 3:], 0.25)
    assert output_pixels(mosaic_tile(np.zeros((3, 8, 8)), valid), "uint8").shape == (3, 8, 8)  # no band asked
