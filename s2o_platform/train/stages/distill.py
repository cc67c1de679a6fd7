"""Stage 2, adversarial consistency distillation (METHOD.md sections 3-4), one micro-batch at a time:

 1. n ~ U{0..N-1}; t_start = grid[n]; t_prev = max(t_start - k, 0)       (grid 19, 39, ..., 999)
 2. x_start = add_noise(x0, eps, t_start)
 3. student:  f = c_skip(t_start) x_start + c_out(t_start) x0_hat_student(x_start, t_start)
 4. teacher (no grad): one DDIM step x_start -> x_prev at t_prev
 5. EMA target (no grad): target = c_skip(t_prev) x_prev + c_out(t_prev) x0_hat_target(x_prev, t_prev)
 6. loss_cd = pseudo_huber(f, target, c); generator loss = loss_cd + lambda_adv * adversarial(f)
 7. the harness updates the EMA target after the optimizer step (train.ema_decay = mu)
 then the discriminator step: real = ground truth (or target), fake = f.

Two DeepSpeed engines, student and discriminator, each with its own AdamW: the discriminator has
its own learning rate and state, and DeepSpeed checkpoints and resumes each engine on its own.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from diffusers import DDPMScheduler, LCMScheduler

from s2o_platform.bundle import BundleMetadata, SamplerSpec, load_bundle, write_bundle
from s2o_platform.config import DistillConfig, dump_config
from s2o_platform.data.store import StoreMetadata
from s2o_platform.diffusion.consistency import (
    consistency_output,
    ddim_grid,
    ddim_step,
    predicted_original,
    pseudo_huber,
)
from s2o_platform.losses import discriminator_loss, generator_loss, hide_invalid, logit_accuracy
from s2o_platform.models.discriminator import EncoderDiscriminator
from s2o_platform.models.unet import predict
from s2o_platform.train.stages.base import StageModels


def discriminator_inputs(
    real_mode: str, ground_truth: torch.Tensor, target: torch.Tensor, student: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(real, fake) for the discriminator: fake is always the student output; real is the ground-truth
    optical image (`ground_truth`, the paper's figure) or the EMA target's output (`target`, the public code)."""
    if real_mode == "ground_truth":
        real = ground_truth
    elif real_mode == "target":
        real = target
    else:
        raise ValueError(f"distill.real must be ground_truth or target, got {real_mode!r}")
    return real.detach(), student.detach()


def student_scheduler(teacher_scheduler_config: dict[str, Any], cfg: DistillConfig) -> LCMScheduler:
    """The student's sampler: the teacher's noise schedule, the distillation grid and scaling."""
    known = inspect.signature(LCMScheduler.__init__).parameters
    shared = {k: v for k, v in teacher_scheduler_config.items() if k in known}  # DDPM-only keys dropped
    return LCMScheduler(
        **{
            **shared,
            "original_inference_steps": cfg.distill.num_ddim_steps,
            "timestep_scaling": cfg.distill.timestep_scaling,
            "clip_sample": False,
        }
    )


class DistillStage:
    name = "distill"
    config_model = DistillConfig

    def build(
        self,
        cfg: DistillConfig,
        store: StoreMetadata,
        extra: dict[str, Any],
        device: torch.device,
        compute_dtype: torch.dtype = torch.float32,
    ) -> StageModels:
        teacher_bundle = load_bundle(extra["teacher"], device, extra.get("storage_options"))
        noise = DDPMScheduler.from_config(dict(teacher_bundle.scheduler_config))
        self.noise = noise
        self.alphas_cumprod = noise.alphas_cumprod.to(device)
        self.prediction_type = noise.config.prediction_type
        self.grid = ddim_grid(noise.config.num_train_timesteps, cfg.distill.num_ddim_steps).to(device)
        self.skip = noise.config.num_train_timesteps // cfg.distill.num_ddim_steps
        self.cfg = cfg
        # The frozen teacher and the EMA target keep fp32 weights and run under autocast in the student's
        # compute dtype (see distill.frozen_fp32 for why), or in fp32 when asked.
        self.frozen_dtype = torch.float32 if cfg.distill.frozen_fp32 else compute_dtype
        teacher = teacher_bundle.model.float().requires_grad_(False).eval()
        student = copy.deepcopy(teacher).requires_grad_(True).train()
        trainable: dict[str, torch.nn.Module] = {"student": student}
        lr = {}
        if cfg.distill.adversarial:
            trainable["discriminator"] = EncoderDiscriminator.from_teacher(teacher).train()
            lr["discriminator"] = cfg.distill.discriminator_lr or cfg.train.lr
        return StageModels(
            trainable=trainable,
            frozen={"teacher": teacher},
            lr=lr,
            export_context=self.teacher_context(teacher_bundle.scheduler_config),
        )

    @staticmethod
    def teacher_context(teacher_scheduler_config: dict[str, Any]) -> dict[str, Any]:
        """What the student's export needs from its teacher: the noise schedule (the student's LCMScheduler is
        derived from it) and the prediction type."""
        return {
            "teacher_scheduler_config": dict(teacher_scheduler_config),
            "prediction_type": teacher_scheduler_config.get("prediction_type", "epsilon"),
        }

    def _x0(
        self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return predicted_original(output.float(), x.float(), t, self.alphas_cumprod, self.prediction_type)

    def step(self, engines, models, ema, batch, generator) -> dict[str, float]:
        cfg, student = self.cfg.distill, engines["student"]
        x0, sar, valid = batch["optical"], batch["sar"], batch.get("valid")
        b = x0.shape[0]
        # 1-2. solver interval and noisy input
        n = torch.randint(0, len(self.grid), (b,), generator=generator, device=x0.device)
        t_start = self.grid[n]
        t_prev = (t_start - self.skip).clamp(min=0)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_start = self.noise.add_noise(x0, noise, t_start)
        # 3. student consistency output
        x0_student, _ = self._x0(predict(student, x_start, sar, t_start), x_start, t_start)
        f = consistency_output(x_start, x0_student, t_start, 0.5, cfg.timestep_scaling)
        frozen_precision = torch.autocast(
            x0.device.type, dtype=self.frozen_dtype, enabled=self.frozen_dtype != torch.float32
        )
        with torch.no_grad(), frozen_precision:
            # 4. teacher DDIM step
            x0_teacher, eps_teacher = self._x0(
                predict(models.frozen["teacher"], x_start, sar, t_start), x_start, t_start
            )
            x_prev = ddim_step(x0_teacher, eps_teacher, t_prev, self.alphas_cumprod)
            # 5. EMA target at t_prev
            x0_target, _ = self._x0(predict(ema, x_prev, sar, t_prev), x_prev, t_prev)
            target = consistency_output(x_prev, x0_target, t_prev, 0.5, cfg.timestep_scaling)
        # 6. losses and the student update
        loss_cd = pseudo_huber(f, target, cfg.huber_c, valid)
        metrics = {"loss_cd": loss_cd.item()}
        loss_g = loss_cd
        if cfg.adversarial:
            disc = engines["discriminator"]
            disc.module.requires_grad_(False)  # the generator's adversarial loss must not train D
            loss_g_adv = generator_loss(
                disc.module(x_start, hide_invalid(f, valid), sar, t_start, t_prev), cfg.gan_loss
            )
            disc.module.requires_grad_(True)
            loss_g = loss_cd + cfg.lambda_adv * loss_g_adv
            metrics["loss_g_adv"] = loss_g_adv.item()
        student.backward(loss_g)
        student.step()
        if cfg.adversarial:
            real, fake = (hide_invalid(x, valid) for x in discriminator_inputs(cfg.real, x0, target, f))
            real_logits = disc(x_start, real, sar, t_start, t_prev)
            fake_logits = disc(x_start, fake, sar, t_start, t_prev)
            loss_d = discriminator_loss(real_logits, fake_logits, cfg.gan_loss)
            disc.backward(loss_d)
            disc.step()
            acc_real, acc_fake = logit_accuracy(real_logits.detach(), fake_logits.detach())
            metrics.update({"loss_d": loss_d.item(), "d_acc_real": acc_real, "d_acc_fake": acc_fake})
        return metrics

    def bundle_metadata(
        self,
        cfg: DistillConfig,
        store: StoreMetadata,
        card: dict[str, Any],
        context: dict[str, Any] | None = None,
    ) -> BundleMetadata:
        context = _required(context)
        sampler = SamplerSpec(
            name="lcm",
            default_steps=cfg.distill.default_steps,
            allowed=["lcm"],
            max_steps=cfg.distill.max_sampling_steps,
        )
        return BundleMetadata.for_store(
            "student",
            store,
            store.tile_size,
            sampler,
            {
                "method": "adversarial consistency distillation"
                if cfg.distill.adversarial
                else "consistency distillation (no adversarial term)",
                "allowed_steps": f"1..{cfg.distill.max_sampling_steps}",
                "real_for_discriminator": cfg.distill.real if cfg.distill.adversarial else None,
                "prediction_type": context["prediction_type"],
                **card,
            },
        )

    def export(
        self,
        directory: str,
        ema: torch.nn.Module,
        cfg: DistillConfig,
        store: StoreMetadata,
        card: dict[str, Any],
        context: dict[str, Any] | None = None,
    ) -> None:
        context = _required(context)
        write_bundle(
            directory,
            self.bundle_metadata(cfg, store, card, context),
            ema,
            student_scheduler(context["teacher_scheduler_config"], cfg),
            dump_config(cfg),
        )


def _required(context: dict[str, Any] | None) -> dict[str, Any]:
    if not context or "teacher_scheduler_config" not in context:
        raise ValueError(
            "a student bundle is written from its teacher's noise schedule: pass "
            "context=DistillStage.teacher_context(teacher_bundle.scheduler_config)"
        )
    return context
