"""Pure training helpers: LR schedule, EMA, paired augmentation, DeepSpeed config, CPU threads."""

import copy
import os

import numpy as np
import pytest
import torch

from s2o_platform.config import TeacherConfig, load_config
from s2o_platform.data.transforms import augment_pairs, dihedral
from s2o_platform.devices import cpu_threads
from s2o_platform.train.deepspeed_config import (
    compute_dtype,
    deepspeed_config,
    effective_batch,
    resolve_precision,
)
from s2o_platform.train.ema import ema_decay_at, ema_update
from s2o_platform.train.progress import format_eta
from s2o_platform.train.schedule import lr_factor, lr_scheduler


def test_warmup_is_linear_then_cosine():
    assert lr_factor(0, 4, 104) == pytest.approx(1 / 5)
    assert lr_factor(3, 4, 104) == pytest.approx(4 / 5)
    assert lr_factor(4, 4, 104) == pytest.approx(1.0)
    assert lr_factor(54, 4, 104) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(104, 4, 104) == pytest.approx(0.0)
    assert lr_factor(500, 4, 104) == pytest.approx(0.0)


def test_constant_and_linear_schedules():
    assert lr_factor(50, 0, 100, "constant") == 1.0
    assert lr_factor(25, 0, 100, "linear") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor(1, 0, 10, "step")


def test_the_runtimes_lr_scheduler_follows_the_configs_schedule():
    """The scheduler the training runtime builds reads warmup_steps, max_steps and lr_schedule from the config."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    cfg = load_config(
        TeacherConfig, None, ["train.warmup_steps=2", "train.max_steps=10", "train.lr_schedule=linear"]
    )
    sched = lr_scheduler(opt, cfg.train)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up 2/3, 4/3; then linear decay over the 8 remaining updates to 0 at max_steps
    assert lrs == pytest.approx([2 / 3, 4 / 3, 2.0, 1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25, 0.0])


def test_ema_update_hand_values():
    online = torch.nn.Linear(1, 1, bias=False)
    ema = copy.deepcopy(online)
    with torch.no_grad():
        ema.weight.fill_(1.0)
        online.weight.fill_(3.0)
    ema_update(ema, online, decay=0.9)
    assert ema.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    ema_update(ema, online, decay=0.0)
    assert ema.weight.item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="decay"):
        ema_update(ema, online, 1.5)


def test_ema_decay_warms_up_then_holds():
    assert ema_decay_at(1, 0.99) == pytest.approx(2 / 11)
    assert ema_decay_at(90, 0.99) == pytest.approx(91 / 100)
    assert ema_decay_at(10_000, 0.99) == 0.99  # the cap passes 0.99 at step 890
    assert ema_decay_at(1, 0.95, warmup=False) == 0.95
    with pytest.raises(ValueError, match=">= 1"):
        ema_decay_at(0, 0.99)


def test_ema_with_warmup_forgets_its_random_start():
    # 300 steps towards a fixed online weight: with the fixed decay 0.99, 0.99^300 = 4.9% of the start remains;
    # with the warm-up, the product of the decays, (2/11)(3/12)... is below 1e-3
    online = torch.nn.Linear(1, 1, bias=False)
    plain, warm = copy.deepcopy(online), copy.deepcopy(online)
    with torch.no_grad():
        online.weight.fill_(1.0)
        plain.weight.fill_(0.0)
        warm.weight.fill_(0.0)
    for step in range(1, 301):
        ema_update(plain, online, 0.99)
        ema_update(warm, online, ema_decay_at(step, 0.99))
    assert 1 - plain.weight.item() == pytest.approx(0.99**300, rel=1e-3)
    assert 1 - warm.weight.item() < 1e-3


def test_dihedral_group_and_pairing():
    x = np.arange(16).reshape(1, 4, 4)
    images = {dihedral(x, k).tobytes() for k in range(8)}
    assert len(images) == 8  # eight distinct symmetries
    assert np.array_equal(dihedral(x, 1), np.rot90(x, 1, axes=(-2, -1)))
    assert np.array_equal(dihedral(x, 4), x[..., ::-1])
    sar = np.random.default_rng(0).normal(size=(6, 1, 8, 8))
    optical = np.repeat(sar, 3, axis=1)  # optical = SAR copied: must stay equal after augmentation
    s, o = augment_pairs(sar, optical, np.random.default_rng(1))
    assert np.array_equal(np.repeat(s, 3, axis=1), o)
    assert not np.array_equal(s, sar)


def test_precision_resolution():
    assert resolve_precision("auto", "cpu", bf16_supported=True, fp16_supported=True) == "fp32"
    assert resolve_precision("auto", "cuda", bf16_supported=True, fp16_supported=True) == "bf16"
    assert resolve_precision("auto", "cuda", bf16_supported=False, fp16_supported=True) == "fp16"
    assert resolve_precision("bf16", "cpu", bf16_supported=True, fp16_supported=False) == "bf16"
    with pytest.raises(ValueError, match="fp16 is not supported on this cpu.*AVX512-FP16.*use bf16 or fp32"):
        resolve_precision("fp16", "cpu", bf16_supported=True, fp16_supported=False)
    with pytest.raises(ValueError, match="bf16 is not supported on this cuda.*use fp32"):
        resolve_precision("bf16", "cuda", bf16_supported=False, fp16_supported=False)


def test_effective_batch_and_compute_dtype():
    cfg = load_config(
        TeacherConfig, None, ["train.batch_size=4", "train.grad_accum=2", "scaling.num_workers=2"]
    )
    assert effective_batch(cfg) == 16
    assert compute_dtype("fp32", "bf16") == torch.bfloat16 and compute_dtype("fp32", "off") == torch.float32
    assert compute_dtype("fp16", "bf16") == torch.float16  # autocast applies over fp32 weights only


def test_deepspeed_config_from_ours():
    cfg = load_config(
        TeacherConfig,
        None,
        ["train.batch_size=8", "train.grad_accum=2", "deepspeed.zero_stage=2", "train.grad_clip=0.5"],
    )
    ds = deepspeed_config(cfg, "bf16")
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"] == {"stage": 2} and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]


def test_zero3_rejected_with_reason():
    from s2o_platform.config import ConfigError

    with pytest.raises(ConfigError, match="deepspeed.zero_stage"):
        load_config(TeacherConfig, None, ["deepspeed.zero_stage=3"])


def test_cpu_threads_and_eta():
    assert cpu_threads(3, 2) == 3
    assert cpu_threads(None, 10_000) == 1
    cores = os.cpu_count() or 1
    assert cpu_threads(None, 1) == cores and cpu_threads(None, 1, reserve=1) == max(1, cores - 1)
    assert cpu_threads(None, 2, reserve=1) == max(1, (cores - 1) // 2) and cpu_threads(4, 1, reserve=1) == 4
    assert format_eta(125) == "2m05s" and format_eta(3725) == "1h02m"


def test_masked_mean_and_hidden_pixels():
    from s2o_platform.diffusion.consistency import pseudo_huber
    from s2o_platform.losses import hide_invalid, masked_mean

    values = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    valid = torch.ones(2, 1, 4, 4)
    valid[0, :, 0, :] = 0  # 4 invalid pixels in sample 0
    expected = torch.stack([values[0, :, 1:, :].mean(), values[1].mean()])
    torch.testing.assert_close(masked_mean(values, valid, per_sample=True), expected)
    changed = values.clone()
    changed[0, :, 0, :] = float("nan")  # an invalid pixel may even hold NaN
    torch.testing.assert_close(masked_mean(changed, valid), masked_mean(values, valid))
    assert masked_mean(values, None) == values.mean()
    a, b = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    b2 = torch.where(valid > 0, b, b + 5)
    assert pseudo_huber(a, b, 0.01, valid) == pseudo_huber(a, b2, 0.01, valid)
    assert pseudo_huber(a, b, 0.01) != pseudo_huber(a, b2, 0.01)
    assert torch.equal(hide_invalid(b, valid), hide_invalid(b2, valid)) and hide_invalid(b, None) is b


def test_teacher_loss_averages_over_valid_pixels_only():
    from s2o_platform.models.unet import build_unet
    from s2o_platform.train.stages.teacher import diffusion_loss, noise_scheduler

    cfg = load_config(
        TeacherConfig,
        None,
        [
            "model.sample_size=16",
            "model.block_out_channels=[32, 32]",
            "model.down_block_types=[DownBlock2D, DownBlock2D]",
            "model.up_block_types=[UpBlock2D, UpBlock2D]",
        ],
    )
    torch.manual_seed(0)
    unet, scheduler = build_unet(cfg.model), noise_scheduler(cfg.diffusion)
    optical, sar = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 1, 16, 16) * 2 - 1

    def loss(valid):
        return diffusion_loss(unet, scheduler, optical, sar, torch.Generator().manual_seed(1), valid=valid)

    all_valid = torch.ones(3, 1, 16, 16)
    torch.testing.assert_close(loss(all_valid), loss(None))
    # Only the top half valid: the mean squared error over those pixels, computed by hand from the same draws.
    half = all_valid.clone()
    half[:, :, 8:] = 0
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(optical.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (3,), generator=g)
    target = (
        noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(optical, noise, t)
    )
    from s2o_platform.models.unet import predict

    with torch.no_grad():
        squared = (predict(unet, scheduler.add_noise(optical, noise, t), sar, t) - target) ** 2
        expected = squared[:, :, :8].flatten(1).mean(1).mean()
        torch.testing.assert_close(loss(half).detach(), expected)
