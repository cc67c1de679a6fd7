import numpy as np
import pytest

from s2o_platform.data.normalization import (
    OpticalNormalization,
    SarNormalization,
    SarScale,
    UnsupportedSarPixels,
    detect_sar_scale,
    model_to_uint8,
    sar_pixels,
    to_db,
    uint8_to_model,
)


def test_db_window_maps_ends_and_middle():
    norm = SarNormalization(clip_db=(-25.0, 0.0))
    out = norm.db_to_model(np.array([-25.0, -12.5, 0.0]))
    np.testing.assert_allclose(out, [-1.0, 0.0, 1.0], atol=1e-6)


def test_db_window_clips_outside_values():
    norm = SarNormalization(clip_db=(-20.0, 5.0))
    np.testing.assert_allclose(norm.db_to_model(np.array([-40.0, 30.0])), [-1.0, 1.0])


def test_db_roundtrip_inside_window():
    norm = SarNormalization(clip_db=(-25.0, 0.0))
    db = np.array([-24.0, -10.0, -0.5], dtype=np.float32)
    np.testing.assert_allclose(norm.model_to_db(norm.db_to_model(db)), db, atol=1e-5)


def test_linear_to_db_hand_values():
    # 0.1 -> -10 dB, 1 -> 0 dB, 0.01 -> -20 dB
    np.testing.assert_allclose(to_db(np.array([0.1, 1.0, 0.01]), "linear"), [-10.0, 0.0, -20.0], atol=1e-5)


def test_linear_zero_is_floored_not_minus_inf():
    out = to_db(np.array([0.0]), SarScale.LINEAR)
    assert np.isfinite(out).all() and out[0] == pytest.approx(-100.0)


def test_dn_to_db_uses_amplitude_and_calibration():
    # DN 1000 -> 20*log10(1000) - 56 = 60 - 56 = 4 dB
    np.testing.assert_allclose(to_db(np.array([1000.0]), "dn", dn_calibration_db=56.0), [4.0], atol=1e-5)


def test_uint8_maps_onto_model_range():
    np.testing.assert_allclose(uint8_to_model(np.array([0, 255])), [-1.0, 1.0])
    assert model_to_uint8(uint8_to_model(np.arange(256))).tolist() == list(range(256))


def test_to_model_linear_equals_db_path():
    norm = SarNormalization()
    linear = np.array([0.01, 0.1, 0.5])
    np.testing.assert_allclose(
        norm.to_model(linear, "linear"), norm.db_to_model(10 * np.log10(linear)), atol=1e-6
    )


def test_auto_must_be_resolved_first():
    with pytest.raises(ValueError, match="detect_sar_scale"):
        SarNormalization().to_model(np.zeros(3), SarScale.AUTO)


@pytest.mark.parametrize("clip", [(0.0, 0.0), (5.0, -5.0), (float("nan"), 0.0)])
def test_bad_clip_window_is_rejected(clip):
    with pytest.raises(ValueError, match="clip_db"):
        SarNormalization(clip_db=clip)


def test_normalization_dict_roundtrip():
    norm = SarNormalization(clip_db=(-30, 5), dn_calibration_db=50)
    assert SarNormalization.from_dict(norm.to_dict()) == norm


@pytest.mark.parametrize(
    ("values", "dtype", "hint", "expected"),
    [
        (np.array([10, 200]), "uint8", None, SarScale.UINT8),
        (np.array([100, 4000]), "uint16", None, SarScale.DN),
        (np.array([-20.0, -3.0]), "float32", None, SarScale.DB),
        (np.array([0.01, 0.3, 1.2]), "float32", None, SarScale.LINEAR),
        (np.array([12.0, 25.0]), "float32", None, SarScale.DB),
        (np.array([0.01, 0.3]), "float32", "VV backscatter (dB)", SarScale.DB),
        (np.array([-1.0, 0.3]), "float32", "gamma0 linear power", SarScale.LINEAR),
    ],
)
def test_detect_sar_scale(values, dtype, hint, expected):
    scale, reason = detect_sar_scale(values, dtype, hint)
    assert scale is expected
    assert reason


def test_detect_ignores_nan():
    scale, _ = detect_sar_scale(np.array([np.nan, 0.02, 0.2]), "float32")
    assert scale is SarScale.LINEAR


def test_optical_reflectance_stretch():
    norm = OpticalNormalization(display_max_reflectance=0.3, reflectance_scale=10000)
    # 1500 -> 0.15 reflectance -> half of 0.3 -> 127.5 -> 128; 3000 and above -> 255; 0 -> 0
    assert norm.to_uint8(np.array([0, 1500, 3000, 9000], dtype=np.uint16)).tolist() == [0, 128, 255, 255]
    assert norm.to_uint8(np.array([0.15], dtype=np.float32)).tolist() == [128]
    u8 = np.array([1, 2, 3], dtype=np.uint8)
    assert norm.to_uint8(u8) is u8


def test_resolve_scale_detects_auto_from_the_valid_sample_only():
    # the masked (nodata) pixels are negative: were they inspected, float data would read as dB
    sample = np.ma.masked_array(np.array([[0.02, 0.5], [-99.0, 1.2]], dtype=np.float32), [[0, 0], [1, 0]])
    scale, reason = sar_pixels("float32").resolve_scale("auto", sample)
    assert scale is SarScale.LINEAR and "linear power" in reason
    ints = np.ma.masked_array(np.array([0, 500, 900], dtype=np.uint16), [1, 0, 0])
    assert sar_pixels("uint16").resolve_scale(SarScale.AUTO, ints)[0] is SarScale.DN


def test_resolve_scale_keeps_a_given_scale_and_checks_it_against_the_pixels():
    assert sar_pixels("float32").resolve_scale("db", None) == (SarScale.DB, "given: db")
    with pytest.raises(UnsupportedSarPixels, match="complex"):
        sar_pixels("complex64").resolve_scale("db", None)
