"""Teacher samplers: ancestral DDPM over all training steps, and DDIM with N steps.

Both reuse diffusers' schedulers, built from the scheduler config saved with the model (never
from library defaults: a different beta schedule would silently break sampling). Noise comes from
an explicit `torch.Generator`, drawn on the generator's device, so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler
from diffusers.utils.torch_utils import randn_tensor

from s2o_platform.config import STUDENT_MAX_STEPS
from s2o_platform.models.unet import OPTICAL_CHANNELS, predict

TEACHER_SAMPLERS = ("ddpm", "ddim")


def initial_noise(sar: torch.Tensor, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    shape = (sar.shape[0], OPTICAL_CHANNELS, sar.shape[2], sar.shape[3])
    return randn_tensor(shape, generator=generator, device=sar.device, dtype=dtype)


def ddim_scheduler(scheduler_config: dict[str, Any]) -> DDIMScheduler:
    """DDIM with "trailing" timestep spacing: N steps start at the last training timestep (999), so the
    first step sees pure noise as in training (Lin et al. 2024, "Common diffusion noise schedules and
    sample steps are flawed"). diffusers' default "leading" spacing starts DDIM-50 at t=980.
    diffusers steps from t to t - T // N: for N dividing T (50, 100, 250...) the last step lands on the clean
    image; for other N it ends at t = 0, a residual of sqrt(1 - abar_0) = 0.01 of the noise."""
    return DDIMScheduler.from_config(scheduler_config, timestep_spacing="trailing")


@torch.no_grad()
def sample_teacher(
    unet: torch.nn.Module,
    sar: torch.Tensor,
    scheduler_config: dict[str, Any],
    sampler: str = "ddim",
    steps: int = 50,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Translate a batch of SAR tiles (B, C, H, W) in [-1, 1] into optical (B, 3, H, W) in [-1, 1].

    Args:
        sampler: 'ddpm' (ancestral, `steps` is ignored: all training timesteps) or 'ddim'.
        steps: DDIM steps.
        eta: DDIM stochasticity (0 = deterministic given the initial noise).
        on_step: called with (step_index, total_steps) after every step, for progress.
    """
    if sampler == "ddpm":
        scheduler = DDPMScheduler.from_config(scheduler_config)
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
        step_kwargs: dict[str, Any] = {"generator": generator}
    elif sampler == "ddim":
        if not 1 <= steps <= scheduler_config["num_train_timesteps"]:
            raise ValueError(
                f"DDIM steps must be in 1..{scheduler_config['num_train_timesteps']}, got {steps}"
            )
        scheduler = ddim_scheduler(scheduler_config)
        scheduler.set_timesteps(steps)
        step_kwargs = {"eta": eta, "generator": generator}
    else:
        raise ValueError(f"unknown teacher sampler {sampler!r}: choose from {TEACHER_SAMPLERS}")
    dtype = next(unet.parameters()).dtype
    x = initial_noise(sar, generator, dtype) * scheduler.init_noise_sigma
    sar = sar.to(dtype)
    total = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        model_output = predict(unet, x, sar, int(t))
        x = scheduler.step(model_output, t, x, **step_kwargs).prev_sample
        if on_step is not None:
            on_step(i + 1, total)
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def sample_student(
    unet: torch.nn.Module,
    sar: torch.Tensor,
    scheduler_config: dict[str, Any],
    steps: int = 4,
    generator: torch.Generator | None = None,
    max_steps: int = STUDENT_MAX_STEPS,
) -> torch.Tensor:
    """LCM multi-step sampling: at each of N timesteps taken evenly from the solver grid, denoise with the
    boundary scalings (c_skip x + c_out x0_hat); between steps, re-noise the estimate to the next timestep.

    The LCMScheduler is built from the config saved in the student's bundle (itself derived from the
    teacher's noise schedule), never from library defaults. `max_steps`: the largest step count the student
    samples with (its bundle's `sampler.max_steps`; config.STUDENT_MAX_STEPS by default).
    """
    if not 1 <= steps <= max_steps:
        raise ValueError(f"student steps must be in 1..{max_steps}, got {steps}")
    scheduler = LCMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    dtype = next(unet.parameters()).dtype
    x = initial_noise(sar, generator, dtype) * scheduler.init_noise_sigma
    sar = sar.to(dtype)
    denoised = x
    for t in scheduler.timesteps:
        model_output = predict(unet, x, sar, int(t))
        x, denoised = scheduler.step(model_output, t, x, generator=generator, return_dict=False)
    return denoised.clamp(-1.0, 1.0)
