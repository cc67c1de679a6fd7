import pytest

from s2o_platform.geo.tiling import Window, grid_windows, pixel_to_world, window_starts, window_transform


@pytest.mark.parametrize(
    ("length", "size", "stride", "expected"),
    [
        (64, 32, 32, [0, 32]),  # exact multiple
        (70, 32, 32, [0, 32, 38]),  # last window aligned to the edge
        (64, 32, 16, [0, 16, 32]),  # overlap
        (100, 32, 48, [0, 48, 68]),  # stride > size leaves gaps, edge window still added
        (32, 32, 32, [0]),  # exactly one
        (31, 32, 32, []),  # smaller than one window
    ],
)
def test_window_starts(length, size, stride, expected):
    assert window_starts(length, size, stride) == expected


def test_windows_cover_the_raster_and_have_the_size():
    height, width, size = 70, 100, 32
    covered = [[False] * width for _ in range(height)]
    for w in grid_windows(height, width, size, 24):
        assert (w.height, w.width) == (size, size)
        assert 0 <= w.row_off <= height - size and 0 <= w.col_off <= width - size
        for r in range(w.row_off, w.row_off + size):
            for c in range(w.col_off, w.col_off + size):
                covered[r][c] = True
    assert all(all(row) for row in covered)


def test_default_stride_is_size():
    assert len(grid_windows(64, 96, 32)) == 2 * 3


@pytest.mark.parametrize("size,stride", [(0, 1), (4, 0), (-1, 2)])
def test_bad_sizes_rejected(size, stride):
    with pytest.raises(ValueError, match="positive"):
        window_starts(10, size, stride)


def test_window_transform_north_up():
    # 10 m pixels, origin (600000, 4800000); window at row 32, col 64 -> origin moves by +640 m x, -320 m y
    t = (10.0, 0.0, 600_000.0, 0.0, -10.0, 4_800_000.0)
    assert window_transform(t, Window(32, 64, 32, 32)) == (10.0, 0.0, 600_640.0, 0.0, -10.0, 4_799_680.0)


def test_window_transform_rotated_matches_pixel_to_world():
    t = (2.0, 0.5, 100.0, -0.25, -3.0, 50.0)
    w = Window(7, 11, 4, 4)
    wt = window_transform(t, w)
    # pixel (r, c) of the window is pixel (r + 7, c + 11) of the raster
    for r, c in [(0, 0), (3, 2), (1.5, 0.5)]:
        assert pixel_to_world(wt, r, c) == pytest.approx(pixel_to_world(t, r + 7, c + 11))
