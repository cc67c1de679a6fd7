"""Consistency distillation math against hand-computed values and diffusers' schedulers."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler

from s2o_platform.diffusion.consistency import (
    boundary_scalings,
    consistency_output,
    ddim_grid,
    ddim_step,
    lcm_timesteps,
    predicted_original,
    pseudo_huber,
)
from s2o_platform.losses import discriminator_loss, generator_loss, logit_accuracy
from s2o_platform.train.stages.distill import discriminator_inputs


def test_grid_is_19_to_999_with_skip_20():
    grid = ddim_grid(1000, 50)
    assert grid[0] == 19 and grid[1] == 39 and grid[-1] == 999 and len(grid) == 50
    with pytest.raises(ValueError, match="divide"):
        ddim_grid(1000, 30)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, [999]), (2, [999, 499]), (4, [999, 759, 499, 259]), (8, [999, 879, 759, 639, 499, 379, 259, 139])],
)
def test_lcm_timesteps_hand_values_and_diffusers(n, expected):
    assert lcm_timesteps(n) == expected
    sched = LCMScheduler.from_config(DDPMScheduler().config, original_inference_steps=50)
    sched.set_timesteps(n)
    assert sched.timesteps.tolist() == expected


@pytest.mark.parametrize("n", [3, 5, 6, 7])
def test_lcm_timesteps_match_diffusers_for_other_n(n):
    sched = LCMScheduler.from_config(DDPMScheduler().config, original_inference_steps=50)
    sched.set_timesteps(n)
    assert lcm_timesteps(n) == sched.timesteps.tolist()


def test_lcm_steps_out_of_range():
    with pytest.raises(ValueError, match="1..50"):
        lcm_timesteps(0)


def test_boundary_scalings_hand_values():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 19, 999]))
    # t = 0: identity. t = 19: s t = 190 -> c_skip = 0.25 / (36100 + 0.25), c_out = 190 / sqrt(36100.25)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0
    assert c_skip[1].item() == pytest.approx(0.25 / 36100.25, rel=1e-5)
    assert c_out[1].item() == pytest.approx(190 / math.sqrt(36100.25), rel=1e-6)
    assert c_skip[2].item() == pytest.approx(0.25 / (9990**2 + 0.25), rel=1e-5)
    assert c_out[2].item() == pytest.approx(1.0, abs=1e-6)


def test_boundary_scalings_equal_lcm_scheduler():
    sched = LCMScheduler.from_config(
        DDPMScheduler().config, original_inference_steps=50, timestep_scaling=10.0
    )
    for t in (0, 19, 999):
        ref_skip, ref_out = sched.get_scalings_for_boundary_condition_discrete(t)
        c_skip, c_out = boundary_scalings(torch.tensor([t]))
        assert c_skip.item() == pytest.approx(float(ref_skip), rel=1e-6)
        assert c_out.item() == pytest.approx(float(ref_out), rel=1e-6, abs=1e-12)


def test_consistency_output_is_identity_at_zero():
    x, x0 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.allclose(consistency_output(x, x0, torch.tensor([0, 0])), x)
    assert torch.allclose(consistency_output(x, x0, torch.tensor([999, 999])), x0, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_original_recovers_x0_and_eps(prediction_type):
    sched = DDPMScheduler(prediction_type=prediction_type)
    x0, eps = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([10, 500, 990])
    x_t = sched.add_noise(x0, eps, t)
    output = eps if prediction_type == "epsilon" else sched.get_velocity(x0, eps, t)
    x0_hat, eps_hat = predicted_original(output, x_t, t, sched.alphas_cumprod, prediction_type)
    assert torch.allclose(x0_hat, x0, atol=1e-3) and torch.allclose(eps_hat, eps, atol=1e-3)


def test_ddim_step_equals_diffusers_ddim():
    # One deterministic DDIM step 519 -> 499 (a 50-step schedule) from an epsilon prediction.
    ddim = DDIMScheduler.from_config(DDPMScheduler().config, timestep_spacing="trailing", clip_sample=False)
    ddim.set_timesteps(50)
    t, t_prev = 519, 499
    assert t in ddim.timesteps.tolist() and t_prev in ddim.timesteps.tolist()
    x_t, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    reference = ddim.step(eps, t, x_t, eta=0.0).prev_sample
    x0, eps_hat = predicted_original(eps, x_t, torch.tensor([t, t]), ddim.alphas_cumprod, "epsilon")
    ours = ddim_step(x0, eps_hat, torch.tensor([t_prev, t_prev]), ddim.alphas_cumprod)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_pseudo_huber_hand_values():
    a, b = torch.tensor([3.0]), torch.tensor([0.0])
    assert pseudo_huber(a, b, 4.0).item() == pytest.approx(1.0)  # sqrt(9 + 16) - 4
    assert pseudo_huber(a, a, 0.1).item() == 0.0
    # tiny c: ~ |a - b|
    assert pseudo_huber(torch.tensor([0.5, -0.5]), torch.zeros(2), 1e-3).item() == pytest.approx(
        0.499, abs=1e-3
    )
    with pytest.raises(ValueError, match="positive"):
        pseudo_huber(a, b, 0.0)


def test_discriminator_sees_ground_truth_or_target_as_real_and_student_as_fake():
    gt, target, student = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0, requires_grad=True)
    real, fake = discriminator_inputs("ground_truth", gt, target, student)
    assert real.item() == 0 and fake.item() == 2 and not fake.requires_grad
    real, fake = discriminator_inputs("target", gt, target, student)
    assert real.item() == 1 and fake.item() == 2
    with pytest.raises(ValueError, match="ground_truth or target"):
        discriminator_inputs("noise", gt, target, student)


def test_gan_losses_hand_values():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.0)  # relu(-1) + relu(0)
    assert discriminator_loss(real, fake, "wgan").item() == pytest.approx(-3.0)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert discriminator_loss(real, fake, "non_saturating").item() == pytest.approx(sp(-2.0) + sp(-1.0))
    assert generator_loss(fake, "non_saturating").item() == pytest.approx(sp(1.0))
    assert generator_loss(fake, "hinge").item() == pytest.approx(1.0)
    assert logit_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -2.0])) == (0.5, 1.0)
    with pytest.raises(ValueError, match="unknown GAN loss"):
        generator_loss(fake, "lsgan")
