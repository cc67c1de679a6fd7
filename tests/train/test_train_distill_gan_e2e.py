"""Distillation (adversarial and ablation) and the pix2pix stage on the shared Ray cluster, same harness."""

import json

import numpy as np
import pytest
import torch

from s2o_platform.bundle import load_bundle
from s2o_platform.config import DistillConfig, GanConfig, TeacherConfig, load_config
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata, read_metadata
from s2o_platform.inference import translate_tiles
from s2o_platform.train.launcher import TrainingSetupError, run_training
from s2o_platform.train.stages.gan import GanStage
from s2o_platform.train.stages.teacher import TeacherStage
from tests.fixtures import TINY_CONFIGS

pytestmark = pytest.mark.ray
FAST_TEACHER = [
    "model.block_out_channels=[32, 32]",
    "model.down_block_types=[DownBlock2D, DownBlock2D]",
    "model.up_block_types=[UpBlock2D, UpBlock2D]",
]
FAST = ["train.batch_size=8", "train.log_every_steps=2", "train.warmup_steps=1"]
quiet = lambda m: None  # noqa: E731


@pytest.fixture(scope="module")
def teacher_bundle(synth_store_32, tmp_path_factory):
    """An (untrained) teacher bundle for the store: distillation's wiring does not need a good teacher."""
    cfg = load_config(TeacherConfig, TINY_CONFIGS / "teacher.yaml", FAST_TEACHER)
    store = read_metadata(synth_store_32)
    stage = TeacherStage()
    models = stage.build(cfg, store, {}, torch.device("cpu"))
    path = tmp_path_factory.mktemp("teacher") / "bundle"
    stage.export(str(path), models.trainable["unet"], cfg, store, {"trained_steps": 0})
    return str(path)


def distill_cfg(*overrides):
    return load_config(DistillConfig, TINY_CONFIGS / "distill.yaml", [*FAST, *overrides])


def test_adversarial_distillation_trains_checkpoints_and_resumes(
    ray_cluster, synth_store_32, teacher_bundle, tmp_path
):
    out = str(tmp_path / "acd")
    first = run_training(
        "distill",
        distill_cfg("train.max_steps=4", "checkpoint.every_steps=2"),
        synth_store_32,
        out,
        32,
        extra={"teacher": teacher_bundle},
        log=quiet,
    )
    assert first.step == 4
    last = first.history[-1]
    assert {"loss_cd", "loss_g_adv", "loss_d", "d_acc_real", "d_acc_fake"} <= set(last)
    assert all(np.isfinite(h["loss_cd"]) and np.isfinite(h["loss_d"]) for h in first.history)
    checkpoints = sorted(p for p in (tmp_path / "acd" / "ray_train").glob("checkpoint_*") if p.is_dir())
    assert {p.name for p in (checkpoints[-1] / "deepspeed").iterdir()} == {"student", "discriminator"}
    bundle = load_bundle(first.bundle)
    assert (
        bundle.metadata.stage == "student"
        and bundle.metadata.sampler.name == "lcm"
        and bundle.metadata.sampler.default_steps == 4
    )
    assert bundle.scheduler_config["_class_name"] == "LCMScheduler"
    sar = np.random.default_rng(0).uniform(-1, 1, (2, 1, 32, 32)).astype(np.float32)
    for n in (1, 2, 4, 8):
        assert np.isfinite(translate_tiles(bundle, sar, steps=n)).all()

    messages = []
    again = run_training(
        "distill",
        distill_cfg("train.max_steps=6", "checkpoint.every_steps=2"),
        synth_store_32,
        out,
        32,
        extra={"teacher": teacher_bundle},
        log=messages.append,
    )
    assert (
        again.resumed_from == 4
        and any("resuming from checkpoint at step 4" in m for m in messages)
        and again.step == 6
    )
    steps = [h["step"] for h in again.history]
    assert steps == sorted(set(steps))


def test_ablation_has_no_discriminator(ray_cluster, synth_store_32, teacher_bundle, tmp_path):
    result = run_training(
        "distill",
        distill_cfg("train.max_steps=2", "distill.adversarial=false"),
        synth_store_32,
        str(tmp_path / "cd"),
        32,
        extra={"teacher": teacher_bundle},
        log=quiet,
    )
    assert set(result.history[-1]) == {"step", "loss_cd", "samples_per_s", "data_wait_frac", "lr"}
    checkpoint = sorted(p for p in (tmp_path / "cd" / "ray_train").glob("checkpoint_*") if p.is_dir())[-1]
    assert {p.name for p in (checkpoint / "deepspeed").iterdir()} == {"student"}
    assert "no adversarial" in load_bundle(result.bundle).metadata.model_card["method"]


def test_gan_stage_on_the_same_harness(ray_cluster, synth_store_32, tmp_path):
    cfg = load_config(
        GanConfig,
        TINY_CONFIGS / "gan.yaml",
        [*FAST, "train.max_steps=4", "generator.base_channels=8", "discriminator.base_channels=8"],
    )
    result = run_training("gan", cfg, synth_store_32, str(tmp_path / "gan"), 32, log=quiet)
    assert {"loss_l1", "loss_g_adv", "loss_d"} <= set(result.history[-1])
    bundle = load_bundle(result.bundle)
    assert bundle.metadata.stage == "gan"
    out = translate_tiles(bundle, np.zeros((2, 1, 32, 32), np.float32))
    assert out.shape == (2, 3, 32, 32)


def test_wrong_teacher_bundles_rejected(ray_cluster, synth_store_32, teacher_bundle, tmp_path):
    cfg = load_config(GanConfig, None, ["generator.sample_size=32", "generator.base_channels=8"])
    store = read_metadata(synth_store_32)
    stage = GanStage()
    stage.export(
        str(tmp_path / "gan"),
        stage.build(cfg, store, {}, torch.device("cpu")).trainable["generator"],
        cfg,
        store,
        {},
    )
    with pytest.raises(TrainingSetupError, match="is a gan bundle, not a teacher"):
        run_training(
            "distill",
            distill_cfg(),
            synth_store_32,
            str(tmp_path / "o"),
            32,
            extra={"teacher": str(tmp_path / "gan")},
            log=quiet,
        )
    tcfg = load_config(TeacherConfig, None, [*FAST_TEACHER, "model.sample_size=16"])
    other = StoreMetadata(tile_size=16, sar_channels=1, sar_normalization=SarNormalization())
    tstage = TeacherStage()
    tstage.export(
        str(tmp_path / "t16"),
        tstage.build(tcfg, other, {}, torch.device("cpu")).trainable["unet"],
        tcfg,
        other,
        {},
    )
    with pytest.raises(TrainingSetupError, match="tile size 16 but the store .* has 32"):
        run_training(
            "distill",
            distill_cfg(),
            synth_store_32,
            str(tmp_path / "o"),
            32,
            extra={"teacher": str(tmp_path / "t16")},
            log=quiet,
        )
    with pytest.raises(TrainingSetupError, match="no inference bundle"):
        run_training(
            "distill",
            distill_cfg(),
            synth_store_32,
            str(tmp_path / "o"),
            32,
            extra={"teacher": str(tmp_path / "none")},
            log=quiet,
        )


def test_resume_refuses_a_different_distillation(ray_cluster, synth_store_32, teacher_bundle, tmp_path):
    """An ablation launched into an ACD run's folder, or the same run with another teacher, is refused before any
    worker starts, naming what differs; the run's config.yaml keeps saying what the run is."""
    import shutil

    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from s2o_platform.cli import app

    out = tmp_path / "acd"
    run_training(
        "distill",
        distill_cfg("train.max_steps=2"),
        synth_store_32,
        str(out),
        32,
        extra={"teacher": teacher_bundle},
        log=quiet,
    )
    assert json.loads((out / "teacher.json").read_text())["bundle"] == teacher_bundle
    with pytest.raises(TrainingSetupError, match="distill.adversarial: True -> False") as refused:
        run_training(
            "distill",
            distill_cfg("train.max_steps=4", "distill.adversarial=false"),
            synth_store_32,
            str(out),
            32,
            extra={"teacher": teacher_bundle},
            log=quiet,
        )
    assert "teacher bundle" not in str(refused.value)
    assert "adversarial: true" in (out / "config.yaml").read_text()
    # Another teacher: same architecture, one weight changed.
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher_bundle, other)
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_out.bias"] = state["conv_out.bias"] + 1.0
    save_file(state, weights)
    with pytest.raises(TrainingSetupError, match="teacher bundle: .* -> .*other-teacher"):
        run_training(
            "distill",
            distill_cfg("train.max_steps=4"),
            synth_store_32,
            str(out),
            32,
            extra={"teacher": str(other)},
            log=quiet,
        )
    result = CliRunner().invoke(
        app,
        [
            "train",
            "distill",
            "--config",
            str(TINY_CONFIGS / "distill.yaml"),
            "--data",
            synth_store_32,
            "--teacher",
            teacher_bundle,
            "--out",
            str(out),
            "--set",
            "distill.lambda_adv=0.5",
        ],
    )
    assert (
        result.exit_code == 2
        and "distill.lambda_adv: 0.1 -> 0.5" in result.stderr
        and "Traceback" not in result.output
    )
