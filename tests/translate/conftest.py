"""Fixtures shared by the `s2o translate` tests on the shared Ray cluster: untrained bundles and SAR scenes."""

import pytest

from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata
from s2o_platform.data.synth_writer import write_scene_geotiffs
from s2o_platform.train.untrained import write_untrained_bundles
from tests.fixtures import TINY_CONFIGS


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Untrained bundles for 32 px single-band tiles, written without Ray (so refusal tests need no cluster);
    their normalisation is the synthetic store's (SarNormalization's defaults), so they fit synth_store_32."""
    store = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    return write_untrained_bundles(TINY_CONFIGS, tmp_path_factory.mktemp("untrained-tr"), store)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scene_geotiffs(
        str(root), 3, 120, seed=3
    )  # float dB, float linear and uint16 DN, each with a nodata corner
    return root / "sar"
