"""Consistency distillation math (METHOD.md sections 3 and 5). Pure tensor functions.

Notation (METHOD.md -> code):
    abar_t                          alphas_cumprod[t]
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps        add_noise
    x0_hat(x_t, t) from the network output               predicted_original
    DDIM step t -> s (eta = 0):  x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps_hat     ddim_step
    c_skip(t) = sd^2 / ((s t)^2 + sd^2),  c_out(t) = s t / sqrt((s t)^2 + sd^2)          boundary_scalings
    f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, t)                                  consistency_output
    pseudo-Huber(a, b) = mean(sqrt((a - b)^2 + c^2) - c)                                 pseudo_huber
with sd = sigma_data = 0.5 and s = timestep_scaling = 10.
"""

from __future__ import annotations

import torch

from s2o_platform.losses import masked_mean


def ddim_grid(num_train_timesteps: int = 1000, num_ddim_steps: int = 50) -> torch.Tensor:
    """The solver grid t = k-1, 2k-1, ..., T-1 with skip k = T / N (19, 39, ..., 999 for 1000 / 50)."""
    if num_train_timesteps % num_ddim_steps:
        raise ValueError(
            f"num_ddim_steps ({num_ddim_steps}) must divide num_train_timesteps ({num_train_timesteps})"
        )
    k = num_train_timesteps // num_ddim_steps
    return torch.arange(1, num_ddim_steps + 1) * k - 1


def lcm_timesteps(num_steps: int, num_train_timesteps: int = 1000, num_ddim_steps: int = 50) -> list[int]:
    """Sampling timesteps for N steps, taken evenly from the solver grid from T-1 down (LCMScheduler's rule).

    1 -> [999]; 2 -> [999, 499]; 4 -> [999, 759, 499, 259]; 8 -> [999, 879, ..., 139].
    """
    if not 1 <= num_steps <= num_ddim_steps:
        raise ValueError(f"student steps must be in 1..{num_ddim_steps}, got {num_steps}")
    descending = ddim_grid(num_train_timesteps, num_ddim_steps).flip(0)
    spacing = len(descending) / num_steps
    return [int(descending[int(i * spacing)]) for i in range(num_steps)]


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) in like's dtype and device."""
    return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def boundary_scalings(
    t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at integer timesteps t; c_skip(0) = 1 and c_out(0) = 0, so f(x, 0) = x."""
    scaled = t.to(torch.float64) * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / torch.sqrt(scaled**2 + sigma_data**2)
    return c_skip.float(), c_out.float()


def predicted_original(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from the network output at noisy x_t (B, C, H, W), timesteps t (B,)."""
    abar = _expand(alphas_cumprod.to(x_t.device)[t], x_t)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - sigma * eps) / alpha
    elif prediction_type == "v_prediction":
        x0 = alpha * x_t - sigma * model_output
        eps = alpha * model_output + sigma * x_t
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - alpha * x0) / sigma
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return x0, eps


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, t_prev: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM update to t_prev: sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps."""
    abar_prev = _expand(alphas_cumprod.to(x0.device)[t_prev], x0)
    return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps


def consistency_output(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat."""
    c_skip, c_out = boundary_scalings(t, sigma_data, timestep_scaling)
    return _expand(c_skip, x_t) * x_t + _expand(c_out, x_t) * x0


def pseudo_huber(
    a: torch.Tensor, b: torch.Tensor, c: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """mean(sqrt((a - b)^2 + c^2) - c): ~ (a-b)^2 / 2c near 0, ~ |a - b| far away; c = 0.001 is nearly L1.
    valid (B, 1, H, W): average over valid pixels only."""
    if c <= 0:
        raise ValueError(f"pseudo-Huber c must be positive, got {c}")
    return masked_mean(torch.sqrt((a.float() - b.float()) ** 2 + c**2) - c, valid)
