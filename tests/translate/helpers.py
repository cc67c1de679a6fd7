"""Helpers shared by the `s2o translate` tests: run the CLI in process, check an output against its scene."""

import numpy as np
import rasterio
from typer.testing import CliRunner

from s2o_platform.cli import app

runner = CliRunner()


def valid_mask(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        band = ds.read(1)
        return (ds.read_masks(1) > 0) & (np.isfinite(band) if band.dtype.kind == "f" else True)


def assert_same_grid_and_nodata(source, output):
    from rio_cogeo.cogeo import cog_validate

    with rasterio.open(source) as src, rasterio.open(output) as out:
        assert (out.crs, out.transform, out.width, out.height) == (
            src.crs,
            src.transform,
            src.width,
            src.height,
        )
        assert out.count == 3 and out.dtypes[0] == "uint8" and out.nodata == 0
    np.testing.assert_array_equal(valid_mask(output), valid_mask(source))
    valid, errors, _ = cog_validate(str(output))
    assert valid, errors


def translate(*args):
    return runner.invoke(app, ["translate", *map(str, args), "--no-progress"])
