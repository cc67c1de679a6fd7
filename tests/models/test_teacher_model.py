"""The teacher's model, loss, samplers and bundle, without Ray."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from s2o_platform.bundle import BundleError, load_bundle, read_bundle_metadata
from s2o_platform.config import TeacherConfig, load_config
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata
from s2o_platform.diffusion.sampling import ddim_scheduler, sample_teacher
from s2o_platform.inference import translate_tiles
from s2o_platform.models.unet import build_unet, count_parameters
from s2o_platform.train.stages.teacher import TeacherStage, diffusion_loss, min_snr_weight, noise_scheduler
from tests.fixtures import REPO_ROOT

TINY = [
    "model.sample_size=16",
    "model.block_out_channels=[32, 32]",
    "model.down_block_types=[DownBlock2D, AttnDownBlock2D]",
    "model.up_block_types=[AttnUpBlock2D, UpBlock2D]",
]


@pytest.fixture(scope="module")
def cfg():
    return load_config(TeacherConfig, None, TINY)


def test_tiny_preset_size():
    cfg = load_config(TeacherConfig, REPO_ROOT / "configs/tiny/teacher.yaml")
    n = count_parameters(build_unet(cfg.model))
    assert 1_000_000 <= n <= 6_000_000


def test_paper_preset_matches_published_size():
    cfg = load_config(TeacherConfig, REPO_ROOT / "configs/paper/teacher.yaml")
    n = count_parameters(build_unet(cfg.model))
    assert 110e6 < n < 118e6  # METHOD.md: ~114 M
    assert cfg.model.sample_size == 256


def test_mismatched_block_lists_rejected():
    from s2o_platform.config import ConfigError

    with pytest.raises(ConfigError, match="up_block_types has 2 blocks"):
        load_config(TeacherConfig, None, ["model.up_block_types=[UpBlock2D, UpBlock2D]"])


def test_loss_is_noise_mse_and_differentiable(cfg):
    torch.manual_seed(0)
    unet = build_unet(cfg.model)
    sched = noise_scheduler(cfg.diffusion)
    optical = torch.rand(2, 3, 16, 16) * 2 - 1
    sar = torch.rand(2, 1, 16, 16) * 2 - 1
    loss = diffusion_loss(unet, sched, optical, sar, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in unet.parameters() if p.requires_grad)
    # Same generator seed -> same loss (noise and timesteps drawn from it).
    unet.zero_grad()
    again = diffusion_loss(unet, sched, optical, sar, torch.Generator().manual_seed(0))
    assert again.item() == pytest.approx(loss.item())


def test_samplers_are_seeded_and_bounded(cfg):
    unet = build_unet(cfg.model).eval()
    sched = noise_scheduler(cfg.diffusion)
    sar = torch.zeros(2, 1, 16, 16)
    a = sample_teacher(unet, sar, dict(sched.config), "ddim", 5, torch.Generator().manual_seed(1))
    b = sample_teacher(unet, sar, dict(sched.config), "ddim", 5, torch.Generator().manual_seed(1))
    c = sample_teacher(unet, sar, dict(sched.config), "ddim", 5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 3, 16, 16) and a.abs().max() <= 1
    steps = []
    sample_teacher(
        unet,
        sar[:1],
        dict(sched.config),
        "ddpm",
        0,
        torch.Generator().manual_seed(1),
        on_step=lambda i, n: steps.append(n),
    )
    assert len(steps) == 1000 and steps[0] == 1000  # ancestral sampling visits every training timestep
    with pytest.raises(ValueError, match="unknown teacher sampler"):
        sample_teacher(unet, sar, dict(sched.config), "euler", 5)


def test_ddim_grid_comes_from_saved_config_with_trailing_spacing(cfg):
    sched = noise_scheduler(cfg.diffusion)
    ddim = ddim_scheduler(dict(sched.config))
    ddim.set_timesteps(50)
    assert ddim.config.beta_schedule == cfg.diffusion.beta_schedule
    # trailing: DDIM-50 starts from pure noise at 999 (diffusers' default "leading" would start at 980)
    assert ddim.timesteps[0] == 999 and ddim.timesteps[-1] == 19 and len(ddim.timesteps) == 50
    leading = DDIMScheduler.from_config(dict(sched.config))
    leading.set_timesteps(50)
    assert leading.timesteps[0] == 980


def test_min_snr_weights_by_hand(cfg):
    sched = noise_scheduler(cfg.diffusion.model_copy(update={"prediction_type": "v_prediction"}))
    t = torch.tensor([0, 500, 999])
    abar = sched.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    v = min_snr_weight(sched, t, 5.0)  # v-prediction: min(snr, 5) / (snr + 1)
    assert v.tolist() == pytest.approx((snr.clamp(max=5) / (snr + 1)).tolist(), rel=1e-5)
    assert v[0].item() == pytest.approx(5 / (snr[0].item() + 1), rel=1e-5)
    assert v[2].item() == pytest.approx(snr[2].item() / (snr[2].item() + 1), rel=1e-5)
    eps = min_snr_weight(
        noise_scheduler(cfg.diffusion), t, 5.0
    )  # epsilon: min(snr, 5) / snr, 1 at high noise
    assert eps[2].item() == pytest.approx(1.0) and eps[0].item() == pytest.approx(5 / snr[0].item(), rel=1e-5)


def test_min_snr_loss_is_the_weighted_per_sample_mse(cfg):
    torch.manual_seed(0)
    unet = build_unet(cfg.model)
    sched = noise_scheduler(cfg.diffusion.model_copy(update={"prediction_type": "v_prediction"}))
    optical, sar = torch.rand(8, 3, 16, 16) * 2 - 1, torch.rand(8, 1, 16, 16) * 2 - 1
    weighted = diffusion_loss(unet, sched, optical, sar, torch.Generator().manual_seed(3), min_snr_gamma=5.0)
    # by hand, with the same draws: noise first, then timesteps
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(optical.shape, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    with torch.no_grad():
        out = unet(torch.cat([sched.add_noise(optical, noise, t), sar], 1), t).sample
    per_sample = ((out - sched.get_velocity(optical, noise, t)) ** 2).flatten(1).mean(1)
    assert weighted.item() == pytest.approx(
        (per_sample * min_snr_weight(sched, t, 5.0)).mean().item(), rel=1e-5
    )
    assert diffusion_loss(
        unet, sched, optical, sar, torch.Generator().manual_seed(3)
    ).item() == pytest.approx(per_sample.mean().item(), rel=1e-5)


def test_bundle_roundtrip_gives_same_outputs(cfg, tmp_path):
    stage = TeacherStage()
    store = StoreMetadata(tile_size=16, sar_channels=1, sar_normalization=SarNormalization(clip_db=(-30, 5)))
    models = stage.build(cfg, store, {}, torch.device("cpu"))
    unet = models.trainable["unet"].eval()
    stage.export(str(tmp_path / "bundle"), unet, cfg, store, {"trained_steps": 0})
    assert (tmp_path / "bundle" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not list((tmp_path / "bundle").rglob("*.bin")) and not list((tmp_path / "bundle").rglob("*.pt"))
    meta = read_bundle_metadata(str(tmp_path / "bundle"))
    assert meta.stage == "teacher" and meta.tile_size == 16 and meta.sar_normalization.clip_db == (-30.0, 5.0)
    assert meta.sampler.name == "ddim" and meta.sampler.default_steps == 50
    bundle = load_bundle(str(tmp_path / "bundle"))
    sar = np.random.default_rng(0).uniform(-1, 1, (3, 1, 16, 16)).astype(np.float32)
    direct = sample_teacher(
        unet, torch.from_numpy(sar), dict(stage.scheduler.config), "ddim", 4, torch.Generator().manual_seed(0)
    )
    loaded = translate_tiles(bundle, sar, "ddim", 4, seed=0)
    np.testing.assert_allclose(loaded, direct.numpy(), atol=1e-5)
    with pytest.raises(BundleError, match="cannot sample with 'lcm'"):
        translate_tiles(bundle, sar, "lcm", 4)
    with pytest.raises(BundleError, match="do not fit"):
        translate_tiles(bundle, sar[:, :, :8, :8], "ddim", 2)


def test_bundle_errors(tmp_path):
    with pytest.raises(BundleError, match="no inference bundle"):
        read_bundle_metadata(str(tmp_path))
    (tmp_path / "s2o_bundle.json").write_text('{"format": "other"}')
    with pytest.raises(BundleError, match="not an s2o inference bundle"):
        read_bundle_metadata(str(tmp_path))
