"""The pure parts of evaluation: model specs, per-tile scores, FID moments, speed-ups, device choice, report."""

import numpy as np
import pytest
import torch

from s2o_platform.bundle import BundleMetadata, SamplerSpec
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata
from s2o_platform.devices import resolve_device, resolve_dtype
from s2o_platform.evaluation import landcover
from s2o_platform.evaluation.quality import (
    FID_SKIPPED,
    FidError,
    fid_from_features,
    gradient_magnitude,
    load_fid_network,
    paired_difference,
    ratio_of_means,
    tile_scores,
    to_uint8_images,
    to_unit,
)
from s2o_platform.evaluation.report import Report, Row, add_speedups, console_table, markdown
from s2o_platform.evaluation.runner import EvalError, add_paired, check_fits_store, summarise
from s2o_platform.evaluation.spec import ModelSetting, SpecError, parse_model_spec, unique_labels
from s2o_platform.evaluation.speed import time_calls
from tests.evaluation.helpers import TinyFeatureNet

# --- spec ------------------------------------------------------------------------------------------


def test_spec_expands_step_counts():
    settings = parse_model_spec("acd=runs/s/bundle@lcm:1,2,4")
    assert [(s.name, s.bundle, s.sampler, s.steps) for s in settings] == [
        ("acd", "runs/s/bundle", "lcm", 1),
        ("acd", "runs/s/bundle", "lcm", 2),
        ("acd", "runs/s/bundle", "lcm", 4),
    ]
    assert settings[1].label == "acd lcm-2"


def test_spec_without_sampler_uses_bundle_defaults_and_keeps_at_signs_in_paths():
    assert parse_model_spec("pix2pix=runs/g/bundle") == [ModelSetting("pix2pix", "runs/g/bundle")]
    assert parse_model_spec("t=s3://b/a@b/bundle@ddim:5") == [
        ModelSetting("t", "s3://b/a@b/bundle", "ddim", 5)
    ]
    assert parse_model_spec("t=x@ddpm") == [ModelSetting("t", "x", "ddpm", None)]


@pytest.mark.parametrize(
    "text,words",
    [
        ("runs/bundle", "NAME=BUNDLE"),
        ("a b=x", "name"),
        ("t=x@ddim:five", "integers"),
        ("t=x@ddim:0", ">= 1"),
        ("t=x@:4", "no sampler"),
    ],
)
def test_spec_errors_say_what_is_wrong(text, words):
    with pytest.raises(SpecError, match=words):
        parse_model_spec(text)


def test_duplicate_labels_are_refused():
    with pytest.raises(SpecError, match="twice"):
        unique_labels(parse_model_spec("a=x@lcm:1,1"))


# --- quality ---------------------------------------------------------------------------------------


def test_to_unit_maps_model_space_and_keeps_non_finite_values():
    out = to_unit(np.array([-1.0, 0.0, 1.0, 1.5, np.nan, np.inf]))
    assert out[:4].tolist() == [0.0, 0.5, 1.0, 1.0]
    assert torch.isnan(out[4]) and torch.isinf(out[5])


def test_tile_scores_against_hand_values():
    target = torch.full((2, 3, 16, 16), 0.5)
    target[:, :, :8] = 0.25  # some structure, so SSIM is defined
    prediction = target.clone()
    prediction[0] += 0.1  # MSE 0.01 -> PSNR 20 dB; mean colour off by 0.1 -> 25.5 in 0-255
    scores = tile_scores(prediction, target)
    assert scores["psnr"][0] == pytest.approx(20.0, abs=1e-4)
    assert scores["colour_error"][0] == pytest.approx(25.5, abs=1e-3)
    assert scores["ssim"][1] == pytest.approx(1.0, abs=1e-6)  # identical tile
    assert scores["colour_error"][1] == pytest.approx(0.0, abs=1e-6)
    assert scores["psnr"][1] == pytest.approx(100.0)  # exact: capped, so means stay finite
    assert scores["finite"].tolist() == [1.0, 1.0]


def test_tile_scores_flag_non_finite_tiles_without_spoiling_others():
    target = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    prediction = target.clone()
    prediction[1, 0, 0, 0] = float("nan")
    prediction[2, 1, 2, 3] = float("inf")
    scores = tile_scores(prediction, target)
    assert scores["finite"].tolist() == [1.0, 0.0, 0.0]
    assert np.isnan(scores["psnr"][1:]).all() and np.isfinite(scores["psnr"][0])


def test_gradient_magnitude_by_hand():
    ramp = torch.arange(4.0).repeat(4, 1)[None, None] * 0.1  # +0.1 per column, flat down the rows
    assert gradient_magnitude(ramp).item() == pytest.approx(0.1)
    assert gradient_magnitude(torch.zeros(1, 3, 5, 5)).item() == 0.0


def _scored(prediction, target, sar):
    row = Row(model="m", label="m", bundle="b", stage="student", sampler="lcm", steps=1)
    summarise(row, tile_scores(prediction, target, sar))
    return row


def test_exact_prediction_is_as_sharp_as_the_truth_and_blur_is_less_sharp():
    def blur(x):
        return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    target = blur(
        torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    )  # smooth, like imagery
    sar = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    assert _scored(target.clone(), target, sar).sharpness_ratio == pytest.approx(1.0)
    blurred = blur(target)
    assert _scored(blurred, target, sar).sharpness_ratio < 0.7
    noisy = (target + 0.2 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert _scored(noisy, target, sar).sharpness_ratio > 1.2


def test_identity_ratio_flags_a_model_that_copies_its_input():
    target = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    sar = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    copy = sar.expand(-1, 3, -1, -1).clone()
    assert _scored(copy, target, sar).identity_ratio == pytest.approx(0.0)
    # by hand: prediction 0.5 everywhere, SAR 0.25, truth 0.75 -> |0.25| / |0.25| = 1; truth 0.6 -> 0.25 / 0.1
    half = torch.full((1, 3, 16, 16), 0.5)
    assert _scored(
        half, torch.full_like(half, 0.6), torch.full((1, 1, 16, 16), 0.25)
    ).identity_ratio == pytest.approx(2.5)
    assert ratio_of_means(np.array([1.0]), np.array([0.0])) is None


def test_paired_difference_of_a_setting_with_itself_is_zero():
    psnr = np.random.default_rng(0).normal(20, 2, size=64)
    assert paired_difference(psnr, psnr) == {"delta": 0.0, "ci95": [0.0, 0.0]}


def test_paired_difference_interval_covers_a_known_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(20, 2, size=400)
    values = reference + 1.0 + rng.normal(0, 0.5, size=400)  # one dB better, per-tile noise 0.5 dB
    result = paired_difference(values, reference)
    low, high = result["ci95"]
    assert low < result["delta"] < high and low < 1.0 < high and high - low < 0.2
    assert paired_difference(values, reference) == result  # seeded: reproducible
    with pytest.raises(ValueError, match="equal"):
        paired_difference(values[:3], reference)


def test_paired_rows_use_the_teacher_ddim50_and_compare_on_shared_tiles():
    rows = [
        _row("s lcm-1", "student", "lcm", 1, 1.0),
        _row("t ddim-50", "teacher", "ddim", 50, 1.0),
        _row("t ddpm-1000", "teacher", "ddpm", 1000, 1.0),
    ]
    psnr = {
        "s lcm-1": np.array([21.0, 22.0, 23.0, 24.0]),
        "t ddim-50": np.array([20.0, 20.0, 20.0, 20.0]),
        "t ddpm-1000": np.array([19.0, 19.0]),
    }
    assert add_paired(rows, psnr) == "t ddim-50"
    assert rows[0].paired["reference"] == "t ddim-50" and rows[0].paired["delta_psnr"] == pytest.approx(2.5)
    assert rows[1].paired["delta_psnr"] == 0.0 and rows[1].paired["ci95"] == [0.0, 0.0]
    assert rows[2].paired["tiles"] == 2 and rows[2].paired["delta_psnr"] == pytest.approx(-1.0)
    assert "reference" in markdown(
        Report(
            rows,
            {
                "data": "s",
                "split": "test",
                "tiles": 4,
                "seed": 0,
                "device": "cpu",
                "device_name": "CPU",
                "dtype": "fp32",
                "threads": 2,
                "batch_size": 4,
                "repeats": 1,
                "fid_status": FID_SKIPPED,
                "paired_reference": "t ddim-50",
            },
        )
    )


def test_landcover_metrics_by_hand():
    confusion = np.array([[8, 2], [0, 6]])  # true class rows: class 0 has 8 right, 2 called 1
    assert landcover.accuracy(confusion) == pytest.approx(14 / 16)
    # IoU class 0: 8 / (8 + 2) = 0.8; class 1: 6 / (6 + 2) = 0.75
    assert landcover.mean_iou(confusion.ravel()) == pytest.approx((0.8 + 0.75) / 2)


def test_landcover_scores_skip_unlabelled_and_unknown_classes():
    model = landcover.PixelClassifier(2)
    truth = np.array(
        [[[0, 1], [255, 7]]], dtype=np.uint8
    )  # 255: unlabelled; 7: a class the classifier never saw
    confusion = landcover.confusion_per_tile(model, torch.rand(1, 3, 2, 2), truth)
    assert confusion.shape == (1, 4) and confusion.sum() == 2
    assert (
        landcover.accuracy(np.zeros(4)) is None and landcover.mean_iou(np.zeros(4)) is None
    )  # JSON-safe: no NaN


def test_store_rows_without_a_class_map_decode_as_unlabelled():
    from s2o_platform.data.store import UNLABELLED, decode_batch, encode_tile

    rows = []
    for k in range(2):
        sar, optical, tile_id = encode_tile(np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.uint8))
        rows.append(
            {
                "tile_id": tile_id,
                "sar": sar,
                "optical": optical,
                "tile_size": 4,
                "sar_channels": 1,
                "landcover": np.full((4, 4), k, np.uint8).tobytes() if k == 0 else None,
            }
        )
    batch = decode_batch({key: np.asarray([r[key] for r in rows], dtype=object) for key in rows[0]})
    assert (batch["landcover"][0] == 0).all() and (batch["landcover"][1] == UNLABELLED).all()
    no_maps = decode_batch(
        {
            key: np.asarray([None if key == "landcover" else r[key] for r in rows], dtype=object)
            for key in rows[0]
        }
    )
    assert "landcover" not in no_maps


def test_landcover_classifier_scores_the_ground_truth_at_its_heldout_accuracy():
    from s2o_platform.data.synth import CLASS_RGB, make_scene

    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, 64, 64, scale=8.0) for _ in range(6)]
    optical = np.stack([s.optical for s in scenes]).transpose(0, 3, 1, 2) / 255.0
    classes = np.stack([s.classes for s in scenes])
    fitted = landcover.fit_classifier(optical[:4], classes[:4], num_classes=len(CLASS_RGB), steps=150)
    assert fitted.train_accuracy > 0.85  # class colours are far apart; texture and edges cost a little
    heldout = landcover.confusion_per_tile(fitted.model, torch.as_tensor(optical[4:]), classes[4:])
    held_accuracy = landcover.accuracy(heldout.sum(axis=0))
    assert held_accuracy > 0.8
    # the ground truth, scored as if it were a translation, gets exactly that accuracy; a flat mean colour does not
    row = _scored(
        torch.as_tensor(optical[4:], dtype=torch.float32),
        torch.as_tensor(optical[4:], dtype=torch.float32),
        torch.zeros(2, 1, 64, 64),
    )
    scores = tile_scores(
        torch.as_tensor(optical[4:], dtype=torch.float32), torch.as_tensor(optical[4:], dtype=torch.float32)
    )
    scores["landcover_confusion"] = heldout
    summarise(row, scores)
    assert row.landcover_accuracy == pytest.approx(held_accuracy) and row.sharpness_ratio == pytest.approx(
        1.0
    )
    flat = torch.as_tensor(optical[4:].mean(axis=(0, 2, 3)), dtype=torch.float32)[None, :, None, None].expand(
        2, 3, 64, 64
    )
    assert (
        landcover.accuracy(landcover.confusion_per_tile(fitted.model, flat, classes[4:]).sum(axis=0))
        < held_accuracy - 0.3
    )


def test_to_uint8_rounds():
    assert to_uint8_images(torch.tensor([0.0, 0.5, 1.0, 0.999])).tolist() == [0, 128, 255, 255]


def test_fid_of_one_dimensional_gaussians_by_hand():
    # means 1 and 4, unbiased variances 2 and 2: FID = (4 - 1)^2 + 2 + 2 - 2*sqrt(2*2) = 9
    real = np.array([[0.0], [2.0]])
    fake = np.array([[3.0], [5.0]])
    assert fid_from_features(real, fake) == pytest.approx(9.0, abs=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    x = np.random.default_rng(0).normal(size=(200, 4))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(x, x + 1.0) == pytest.approx(4.0, abs=1e-6)  # |mean shift|^2, same covariance


def test_fid_needs_two_images_per_side():
    with pytest.raises(FidError, match="at least 2"):
        fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


def test_fid_network_from_torchscript(tmp_path):
    path = tmp_path / "net.pt"
    torch.jit.script(TinyFeatureNet()).save(str(path))
    net = load_fid_network(path, torch.device("cpu"))
    features = net(torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8))
    assert features.shape == (5, 6)


def test_fid_weights_errors_name_the_file(tmp_path):
    with pytest.raises(FidError, match="no such file"):
        load_fid_network(tmp_path / "missing.pt", torch.device("cpu"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a network")
    with pytest.raises(FidError, match="junk.pth"):
        load_fid_network(junk, torch.device("cpu"))


# --- speed ------------------------------------------------------------------------------------------


def test_device_and_dtype_choice():
    assert resolve_device("cpu").type == "cpu"
    from s2o_platform.devices import cpu_supports

    assert resolve_dtype("auto", torch.device("cpu")) == (
        torch.bfloat16 if cpu_supports("bf16") else torch.float32
    )
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32
    if not cpu_supports("fp16"):
        with pytest.raises(ValueError, match="would run emulated.*AVX512-FP16"):
            resolve_dtype("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_time_calls_warms_up_then_times_each_repeat(monkeypatch):
    # A clock that only moves when the timed function runs: call k takes k seconds.
    from s2o_platform.evaluation import speed

    clock = {"now": 0.0, "calls": 0}

    def call():
        clock["calls"] += 1
        clock["now"] += clock["calls"]

    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock["now"])
    timing = time_calls(call, torch.device("cpu"), repeats=3, warmup=2)
    assert (
        clock["calls"] == 5 and timing.seconds == [3.0, 4.0, 5.0] and timing.median == 4.0
    )  # warm-up calls untimed


# --- report -----------------------------------------------------------------------------------------


def _row(label, stage, sampler, steps, latency, **kw):
    return Row(
        model=label.split()[0],
        label=label,
        bundle="b",
        stage=stage,
        sampler=sampler,
        steps=steps,
        latency_ms=latency,
        **kw,
    )


def test_speedups_against_teacher_ddpm_and_ddim50():
    rows = [
        _row("t ddim-50", "teacher", "ddim", 50, 100.0),
        _row("s lcm-1", "student", "lcm", 1, 2.0),
        _row("t ddpm-1000", "teacher", "ddpm", 1000, 2000.0, speed_only=True),
        _row("t ddim-10", "teacher", "ddim", 10, 20.0),
    ]
    used = add_speedups(rows)
    assert used == {"ddpm": "t ddpm-1000", "ddim": "t ddim-50"}
    assert rows[1].speedup_vs_ddpm == pytest.approx(1000.0) and rows[1].speedup_vs_ddim == pytest.approx(50.0)
    assert rows[3].speedup_vs_ddim == pytest.approx(5.0) and rows[0].speedup_vs_ddim == pytest.approx(1.0)


def test_no_teacher_no_speedups():
    rows = [_row("s lcm-1", "student", "lcm", 1, 2.0)]
    assert add_speedups(rows) == {"ddpm": None, "ddim": None}
    assert rows[0].speedup_vs_ddpm is None


def test_report_renderings_show_errors_and_fid_status():
    rows = [
        _row(
            "s lcm-1",
            "student",
            "lcm",
            1,
            2.0,
            psnr=20.5,
            ssim=0.5,
            colour_error=3.0,
            tiles=8,
            throughput=100.0,
        ),
        _row(
            "bad lcm-2",
            "student",
            "lcm",
            2,
            None,
            error="non-finite output (NaN/inf) in 8 of 8 tiles",
            tiles=8,
        ),
    ]
    context = {
        "data": "store",
        "split": "test",
        "tiles": 8,
        "seed": 0,
        "device": "cpu",
        "device_name": "CPU (2 cores)",
        "dtype": "fp32",
        "threads": 2,
        "batch_size": 4,
        "repeats": 3,
        "fid_status": FID_SKIPPED,
    }
    report = Report(rows, context)
    md = markdown(report)
    assert "| s lcm-1 | 8 | 20.50 | - | 0.500 | 3.00 | - | - | - | - | - | - | 2.0 | 100.0 |" in md
    assert "non-finite" in md and FID_SKIPPED in md
    table = console_table(report)
    assert "bad lcm-2" in table and "error: non-finite" in table


def test_bundle_that_does_not_fit_the_store_is_refused():
    store = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    bundle = BundleMetadata.for_store(
        "student",
        StoreMetadata(tile_size=64, sar_channels=1, sar_normalization=SarNormalization()),
        64,
        SamplerSpec("lcm", 4, ["lcm"]),
        {},
    )
    with pytest.raises(EvalError, match="tile_size=64.*32"):
        check_fits_store(bundle, "b", store, "store")
    other = BundleMetadata.for_store(
        "student",
        StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization(clip_db=(-30.0, 5.0))),
        32,
        SamplerSpec("lcm", 4, ["lcm"]),
        {},
    )
    with pytest.raises(EvalError, match="sar_normalization"):
        check_fits_store(other, "b", store, "store")


def test_tile_scores_ignore_invalid_pixels():
    """Every per-tile score leaves invalid pixels out: changing their values in the prediction, the truth or the
    SAR changes no score; an all-valid mask gives exactly the unmasked scores."""
    from s2o_platform.evaluation.quality import tile_scores

    g = torch.Generator().manual_seed(0)
    prediction, truth, sar = (torch.rand(3, c, 32, 32, generator=g) for c in (3, 3, 1))
    valid = torch.ones(3, 32, 32, dtype=torch.bool)
    valid[0, :10, :] = False
    valid[2, :, 20:] = False
    base = tile_scores(prediction, truth, sar, valid)
    keep = valid[:, None]
    changed = tile_scores(
        torch.where(keep, prediction, torch.rand(3, 3, 32, 32, generator=g)),
        torch.where(keep, truth, torch.rand(3, 3, 32, 32, generator=g)),
        torch.where(keep, sar, torch.rand(3, 1, 32, 32, generator=g)),
        valid,
    )
    for key in base:
        np.testing.assert_allclose(changed[key], base[key], rtol=0, atol=1e-9, err_msg=key)
    unmasked = tile_scores(prediction, truth, sar)
    all_valid = tile_scores(prediction, truth, sar, torch.ones(3, 32, 32, dtype=torch.bool))
    for key in unmasked:
        np.testing.assert_array_equal(all_valid[key], unmasked[key], err_msg=key)
    # The tile whose mask is all valid scores as without a mask; masked tiles differ from their unmasked scores.
    assert (
        base["psnr"][1] == pytest.approx(unmasked["psnr"][1], abs=1e-4)
        and base["psnr"][0] != unmasked["psnr"][0]
    )
    # PSNR over the valid pixels, by hand.
    mse = ((prediction[0, :, 10:] - truth[0, :, 10:]) ** 2).mean()
    assert base["psnr"][0] == pytest.approx(float(10 * torch.log10(1 / mse)), abs=1e-4)
