"""Fixtures shared by the `s2o translate` tests on the shared Ray cluster: untrained bundles and SAR scenes."""

import pytest

from s2o_platform.data.store import read_metadata
from s2o_platform.data.synth_writer import write_scene_geotiffs
from s2o_platform.train.untrained import write_untrained_bundles
from tests.fixtures import TINY_CONFIGS


@pytest.fixture(scope="module")
def bundles(synth_store_32, tmp_path_factory):
    return write_untrained_bundles(
        TINY_CONFIGS, tmp_path_factory.mktemp("untrained-tr"), read_metadata(synth_store_32)
    )


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scene_geotiffs(
        str(root), 3, 120, seed=3
    )  # float dB, float linear and uint16 DN, each with a nodata corner
    return root / "sar"
