"""Stage 1, the teacher: a conditional pixel-space DDPM (METHOD.md section 2).

Per micro-batch: t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
loss = || net(concat(x_t, SAR), t) - eps ||^2 (or the velocity v for v-prediction).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from s2o_platform.bundle import BundleMetadata, SamplerSpec, write_bundle
from s2o_platform.config import DiffusionSection, TeacherConfig, dump_config
from s2o_platform.data.store import StoreMetadata
from s2o_platform.losses import masked_mean
from s2o_platform.models.unet import build_unet, predict
from s2o_platform.train.stages.base import StageModels


def noise_scheduler(cfg: DiffusionSection) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=cfg.clip_sample,
    )


def diffusion_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    optical: torch.Tensor,
    sar: torch.Tensor,
    generator: torch.Generator | None = None,
    min_snr_gamma: float | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DDPM training loss for clean optical x0 (B, 3, H, W) given SAR (B, C, H, W), both in [-1, 1].

    valid: (B, 1, H, W), 1 where the pixel holds data: the loss averages over valid pixels only.
    min_snr_gamma: Min-SNR-gamma weighting (Hang et al. 2023): each sample's MSE is weighted so that
    its effective x0-space weight is min(SNR_t, gamma), which stops the easy low-noise steps from
    dominating the gradient. None: the plain (unweighted) MSE.
    """
    batch = optical.shape[0]
    noise = torch.randn(optical.shape, generator=generator, device=optical.device, dtype=optical.dtype)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch,), generator=generator, device=optical.device
    )
    noisy = scheduler.add_noise(optical, noise, timesteps)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(optical, noise, timesteps)
    prediction = predict(unet, noisy, sar, timesteps)
    per_sample = masked_mean(
        F.mse_loss(prediction.float(), target.float(), reduction="none"), valid, per_sample=True
    )
    if min_snr_gamma is None:
        return per_sample.mean()
    return (per_sample * min_snr_weight(scheduler, timesteps, min_snr_gamma)).mean()


def min_snr_weight(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weight of Min-SNR-gamma: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v.

    SNR_t = abar_t / (1 - abar_t); the epsilon and v losses already weight x0 errors by SNR and SNR + 1.
    """
    abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].double()
    snr = abar / (1.0 - abar)
    clipped = snr.clamp(max=gamma)
    weight = clipped / snr if scheduler.config.prediction_type == "epsilon" else clipped / (snr + 1.0)
    return weight.float()


class TeacherStage:
    name = "teacher"
    config_model = TeacherConfig

    def build(
        self,
        cfg: TeacherConfig,
        store: StoreMetadata,
        extra: dict[str, Any],
        device: torch.device,
        compute_dtype: torch.dtype = torch.float32,
    ) -> StageModels:
        self.scheduler = noise_scheduler(cfg.diffusion)
        self.min_snr_gamma = cfg.loss.min_snr_gamma
        return StageModels(trainable={"unet": build_unet(cfg.model, store.sar_channels).to(device)})

    def step(self, engines, models, ema, batch, generator) -> dict[str, float]:
        engine = engines["unet"]
        loss = diffusion_loss(
            engine,
            self.scheduler,
            batch["optical"],
            batch["sar"],
            generator,
            self.min_snr_gamma,
            batch.get("valid"),
        )
        engine.backward(loss)
        engine.step()
        return {"loss": loss.item()}

    def bundle_metadata(
        self,
        cfg: TeacherConfig,
        store: StoreMetadata,
        card: dict[str, Any],
        context: dict[str, Any] | None = None,
    ) -> BundleMetadata:
        # No step limit in the spec: DDIM takes any count up to the schedule's timesteps (checked against the
        # bundle's scheduler config when sampling), DDPM always runs its full schedule.
        sampler = SamplerSpec(
            name="ddim", default_steps=cfg.sample_steps, allowed=["ddpm", "ddim"], max_steps=None
        )
        return BundleMetadata.for_store(
            "teacher",
            store,
            cfg.model.sample_size or store.tile_size,  # a size left null is the store's
            sampler,
            {"prediction_type": cfg.diffusion.prediction_type, **card},
        )

    def export(
        self,
        directory: str,
        ema: torch.nn.Module,
        cfg: TeacherConfig,
        store: StoreMetadata,
        card: dict[str, Any],
        context: dict[str, Any] | None = None,
    ) -> None:
        write_bundle(
            directory,
            self.bundle_metadata(cfg, store, card),
            ema,
            noise_scheduler(cfg.diffusion),
            dump_config(cfg),
        )
