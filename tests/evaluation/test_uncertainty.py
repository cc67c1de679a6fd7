"""Uncertainty from several student samples: the estimate (tile_sampling.translate_tiles_with_uncertainty) and
the honesty checks (evaluation/uncertainty.py), against hand-computed values. Ray-free."""

from __future__ import annotations

import numpy as np
import pytest

from s2o_platform import tile_sampling
from s2o_platform.bundle import BundleError, load_bundle
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata
from s2o_platform.evaluation.uncertainty import (
    GAUSSIAN_ABS_ERROR_PER_SIGMA,
    average_ranks,
    calibration_table,
    spearman,
)
from tests.fixtures import TINY_CONFIGS

# -- the honesty checks ------------------------------------------------------------------------------------


def test_average_ranks_share_ties():
    np.testing.assert_array_equal(average_ranks(np.array([30.0, 10.0, 20.0, 20.0])), [4.0, 1.0, 2.5, 2.5])


def test_spearman_hand_values():
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 8.0, 27.0, 64.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ties: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4); centred products sum to 4.5, norms 4.5 and 5
    assert spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(
        4.5 / np.sqrt(4.5 * 5.0)
    )
    assert spearman(np.array([1.0, np.nan, 3.0]), np.array([1.0, 5.0, 2.0])) == pytest.approx(1.0)
    assert spearman(np.zeros(5), np.arange(5.0)) is None  # a constant spread ranks nothing


def test_calibration_table_bins_by_spread_with_mean_error_per_bin():
    spread = np.array([0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2])
    error = np.array([1.0, 1.0, 2.0, 0.0, 3.0, 3.0, 4.0, 2.0])
    table = calibration_table(spread, error, bins=2)
    assert [(row["pixels"], row["mean_uncertainty"], row["mean_abs_error"]) for row in table] == [
        (4, pytest.approx(0.1), pytest.approx(1.0)),
        (4, pytest.approx(0.2), pytest.approx(3.0)),
    ]
    assert calibration_table(np.full(6, 0.3), np.arange(6.0), bins=4) == [
        {"lo": 0.3, "hi": 0.3, "pixels": 6, "mean_uncertainty": 0.3, "mean_abs_error": 2.5}
    ]  # equal spreads are one bin, not four


def test_a_calibrated_gaussian_spread_shows_its_expected_error_in_every_bin():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.05, 0.4, size=200_000)  # within a bin E|error| = 0.80 x the bin's mean sigma
    error = np.abs(rng.normal(0.0, sigma))
    assert spearman(sigma, error) > 0.4
    table = calibration_table(sigma, error, bins=4)
    assert len(table) == 4
    for row in table:
        assert row["mean_abs_error"] / row["mean_uncertainty"] == pytest.approx(
            GAUSSIAN_ABS_ERROR_PER_SIGMA, rel=0.02
        )


# -- the estimate -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """Untrained student and pix2pix bundles for 16 px single-channel tiles (the stages' own exporters)."""
    from s2o_platform.train.untrained import write_untrained_bundles

    store = StoreMetadata(tile_size=16, sar_channels=1, sar_normalization=SarNormalization())
    return write_untrained_bundles(TINY_CONFIGS, tmp_path_factory.mktemp("uncertainty"), store)


@pytest.fixture(scope="module")
def student(untrained):
    return load_bundle(untrained["student"]), load_bundle(untrained["gan"])


def sar_tiles(n: int) -> np.ndarray:
    return np.random.default_rng(3).uniform(-1, 1, (n, 1, 16, 16)).astype(np.float32)


def test_a_model_that_ignores_its_noise_has_no_uncertainty(student, monkeypatch):
    bundle, _ = student

    def noise_free(
        bundle, sar, sampler, steps, seed, batch_size, keys
    ):  # the network's mean, whatever the noise
        return np.repeat(np.tanh(np.asarray(sar)), 3, axis=1)

    monkeypatch.setattr(tile_sampling, "translate_tiles", noise_free)
    sar = sar_tiles(3)
    optical, spread = tile_sampling.translate_tiles_with_uncertainty(bundle, sar, samples=4)
    assert spread.shape == (3, 16, 16) and not spread.any()
    np.testing.assert_allclose(optical, np.repeat(np.tanh(sar), 3, axis=1), atol=1e-7)


def test_samples_are_keyed_per_tile_and_reduced_per_tile(student, monkeypatch):
    bundle, _ = student
    seen = {}

    def by_key(bundle, sar, sampler, steps, seed, batch_size, keys):
        seen["keys"], seen["batch_size"] = list(keys), batch_size
        values = {"a": 0.0, "a#1": 0.2, "a#2": 0.4, "b": -0.5, "b#1": -0.5, "b#2": -0.5}
        return np.stack([np.full((3, 16, 16), values[k], np.float32) for k in keys])

    monkeypatch.setattr(tile_sampling, "translate_tiles", by_key)
    optical, spread = tile_sampling.translate_tiles_with_uncertainty(
        bundle, sar_tiles(2), samples=3, keys=["a", "b"], batch_size=64
    )
    assert seen["keys"] == ["a", "a#1", "a#2", "b", "b#1", "b#2"]
    assert seen["batch_size"] == 63  # a multiple of the sample count: a tile's samples share a forward pass
    np.testing.assert_allclose(optical[:, 0, 0, 0], [0.2, -0.5], atol=1e-7)
    np.testing.assert_allclose(spread[:, 0, 0], [0.2, 0.0], atol=1e-7)  # std(0, 0.2, 0.4), ddof 1 = 0.2
    first, _ = tile_sampling.translate_tiles_with_uncertainty(
        bundle, sar_tiles(2), samples=3, keys=["a", "b"], output="sample"
    )
    np.testing.assert_allclose(first[:, 0, 0, 0], [0.0, -0.5], atol=1e-7)


def test_a_real_student_spreads_reproducibly_and_its_first_sample_is_the_plain_translation(student):
    bundle, _ = student
    sar, keys = sar_tiles(3), ["s:0:0", "s:0:16", "s:16:0"]
    optical, spread = tile_sampling.translate_tiles_with_uncertainty(
        bundle, sar, samples=3, steps=2, seed=5, keys=keys, output="sample"
    )
    again, spread_again = tile_sampling.translate_tiles_with_uncertainty(
        bundle, sar, samples=3, steps=2, seed=5, keys=keys, output="sample"
    )
    np.testing.assert_array_equal(spread, spread_again)
    np.testing.assert_array_equal(optical, again)
    assert (spread > 0).mean() > 0.99  # independent noise per sample: an untrained student spreads everywhere
    plain = tile_sampling.translate_tiles(bundle, sar, steps=2, seed=5, keys=keys)
    np.testing.assert_allclose(optical, plain, atol=1e-5)


def test_pix2pix_and_too_few_samples_are_refused(student):
    bundle, gan = student
    with pytest.raises(BundleError, match="deterministic.*no uncertainty"):
        tile_sampling.translate_tiles_with_uncertainty(gan, sar_tiles(1), samples=4)
    with pytest.raises(ValueError, match="at least 2 samples"):
        tile_sampling.translate_tiles_with_uncertainty(bundle, sar_tiles(1), samples=1)
    with pytest.raises(ValueError, match="output must be one of"):
        tile_sampling.translate_tiles_with_uncertainty(bundle, sar_tiles(1), samples=2, output="median")


# -- s2o eval --uncertainty ---------------------------------------------------------------------------------


def test_eval_reports_how_well_the_spread_of_samples_predicts_the_error(untrained, tmp_path):
    from PIL import Image

    from s2o_platform.evaluation.quality import tile_scores, to_unit, uncertainty_pixels
    from s2o_platform.evaluation.runner import EvalRun, evaluate
    from s2o_platform.evaluation.tiles import load_test_tiles
    from s2o_platform.storage import StorageOptions
    from tests.fixtures import write_small_store

    store = write_small_store(str(tmp_path / "store"), tile_size=16, n=24)  # 8 test tiles
    options = EvalRun(
        data=store,
        models=[f"acd={untrained['student']}@lcm:2", f"gan={untrained['gan']}"],
        out=str(tmp_path / "report"),
        batch_size=3,  # batches that split the tiles unevenly: a tile's noise must not depend on its batch
        repeats=1,
        references=False,
        dtype="fp32",
        uncertainty=3,
    )
    report, written = evaluate(options, log=lambda m: None)
    acd, gan = report.rows
    assert acd.error is None and gan.error is None
    u = acd.uncertainty
    assert u["samples"] == 3 and u["pixels"] == 8 * 256  # a 16 px tile has 256 pixels: all of them kept
    assert sum(b["pixels"] for b in u["calibration"]) == u["pixels"]
    spreads = [b["mean_uncertainty"] for b in u["calibration"]]
    assert spreads == sorted(spreads) and spreads[0] < spreads[-1]
    # by hand: the first of 3 samples keyed by tile id is what is scored; its spread against its error gives rho
    tiles = load_test_tiles(store, "test", None, StorageOptions())
    bundle = load_bundle(untrained["student"])
    keys = [str(t) for t in tiles["tile_id"]]
    first, spread = tile_sampling.translate_tiles_with_uncertainty(
        bundle, tiles["sar"], 3, "lcm", 2, seed=0, keys=keys, output="sample"
    )
    unit, truth = to_unit(first), to_unit(tiles["optical"])
    assert acd.psnr == pytest.approx(tile_scores(unit, truth)["psnr"].mean(), abs=1e-4)
    kept = uncertainty_pixels(spread, unit, truth)
    assert u["spearman"] == pytest.approx(spearman(kept["unc_spread"], kept["unc_error"]), abs=1e-4)
    assert u["mean_spread"] == pytest.approx(kept["unc_spread"].mean(), rel=1e-4)
    # pix2pix draws no noise: scored as usual, with a note instead of an uncertainty
    assert gan.uncertainty is None and gan.psnr is not None
    assert any("deterministic" in note for note in gan.notes)
    assert (tmp_path / "report" / "uncertainty.png") in written
    with Image.open(tmp_path / "report" / "uncertainty.png") as image:
        assert image.format == "PNG" and image.width > 300
    md = (tmp_path / "report" / "report.md").read_text()
    assert "unc rho" in md and "Spearman" in md and f"| {u['spearman']:.2f} |" in md


def test_eval_refuses_a_single_sample_before_any_work(untrained, tmp_path):
    from typer.testing import CliRunner

    from s2o_platform.cli import app
    from tests.fixtures import write_small_store

    store = write_small_store(str(tmp_path / "store"), tile_size=16, n=6)
    result = CliRunner().invoke(
        app,
        ["eval", "--data", store, "--out", str(tmp_path / "r"), "--model", f"acd={untrained['student']}"]
        + ["--uncertainty", "1"],
    )
    assert result.exit_code != 0
    assert "--uncertainty 1" in result.output and "at least 2 samples" in result.output
    assert not (tmp_path / "r").exists()
