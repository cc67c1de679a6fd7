import numpy as np

from s2o_platform.data import synth


def test_scene_shapes_and_ranges():
    scene = synth.make_scene(np.random.default_rng(0), 48, 64)
    assert (
        scene.classes.shape == (48, 64)
        and scene.optical.shape == (48, 64, 3)
        and scene.sar_db.shape == (48, 64)
    )
    assert scene.optical.dtype == np.uint8 and np.isfinite(scene.sar_db).all()
    assert set(np.unique(scene.classes)) <= set(range(len(synth.CLASSES)))


def test_deterministic_for_a_seed():
    a = synth.make_scene(np.random.default_rng([3, 1]), 32, 32)
    b = synth.make_scene(np.random.default_rng([3, 1]), 32, 32)
    assert np.array_equal(a.optical, b.optical) and np.array_equal(a.sar_db, b.sar_db)


def test_sar_separates_classes_water_dark_urban_bright():
    scene = synth.make_scene(np.random.default_rng(1), 256, 256)
    means = {
        c: scene.sar_db[scene.classes == i].mean()
        for i, c in enumerate(synth.CLASSES)
        if (scene.classes == i).any()
    }
    assert means["water"] == min(means.values()) and means["urban"] == max(means.values())


def test_speckle_is_multiplicative_on_power_with_l_look_statistics():
    # On a flat -10 dB field the intensity keeps its mean (0.1) and has variance mean^2 / L: speckle applied
    # to the power, not added in dB (which would bias the mean and give other statistics).
    for looks in (1, 4):
        power = 10.0 ** (
            synth.speckled_db(np.random.default_rng(looks), np.full((400, 500), -10.0), looks) / 10.0
        )
        assert abs(power.mean() / 0.1 - 1) < 0.01, looks
        assert abs(power.var() / 0.1**2 - 1 / looks) < 0.02, looks


def test_smooth_field_is_normalised_and_correlated():
    f = synth.smooth_field(np.random.default_rng(0), 128, 128, 8.0)
    assert abs(f.mean()) < 1e-9 and abs(f.std() - 1) < 1e-9
    neighbour_corr = np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1]
    assert neighbour_corr > 0.9


def test_psnr_hand_values():
    a = np.zeros((4, 4))
    assert synth.psnr(a, a + 0.1) == __import__("pytest").approx(20.0)
    assert synth.psnr(a, a) == float("inf")


def test_statistics_baselines_equal_direct_computation():
    rng = np.random.default_rng(2)
    scenes = [synth.make_scene(rng, 32, 32) for _ in range(6)]
    optical = np.stack([s.optical for s in scenes])
    classes = np.stack([s.classes for s in scenes])
    direct = synth.baseline_psnr(optical, classes)
    from_stats = synth.baselines_from_statistics(
        np.stack([synth.tile_statistics(o, c) for o, c in zip(optical, classes)])
    )
    assert from_stats["mean_colour"] == __import__("pytest").approx(direct["mean_colour"], abs=1e-9)
    assert from_stats["class_oracle"] == __import__("pytest").approx(direct["class_oracle"], abs=1e-9)
    # Knowing the class is worth a lot: the set is learnable.
    assert direct["class_oracle"] > direct["mean_colour"] + 6
