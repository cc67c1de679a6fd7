"""Adversarial losses on discriminator logits, and the masked mean every pixel loss uses. Pure functions.

    non_saturating:  D: softplus(-real) + softplus(fake)      G: softplus(-fake)
    hinge:           D: relu(1 - real) + relu(1 + fake)       G: -fake
    wgan:            D: fake - real                           G: -fake
(each averaged over the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_LOSSES = ("non_saturating", "hinge", "wgan")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "non_saturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "wgan":
        return fake_logits.mean() - real_logits.mean()
    raise ValueError(f"unknown GAN loss {kind!r}: choose from {GAN_LOSSES}")


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    fake_logits = fake_logits.float()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    if kind in ("hinge", "wgan"):
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN loss {kind!r}: choose from {GAN_LOSSES}")


def logit_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[float, float]:
    """Fraction of real samples scored > 0 and of fake samples scored < 0."""
    return float((real_logits > 0).float().mean()), float((fake_logits < 0).float().mean())


def masked_mean(
    values: torch.Tensor, valid: torch.Tensor | None = None, per_sample: bool = False
) -> torch.Tensor:
    """Mean of `values` (B, C, H, W) over valid pixels only: `valid` (B, 1, H, W), 1 where the pixel holds data
    (None: all). An invalid pixel's value changes nothing. per_sample: one mean per sample, shape (B,)."""
    values = values.float()
    if valid is None:
        return values.flatten(1).mean(1) if per_sample else values.mean()
    weight = valid.to(values.dtype).expand_as(values)
    masked = torch.where(weight > 0, values, torch.zeros_like(values))  # NaN or inf in a fill stays out too
    if per_sample:
        return masked.flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1.0)
    return masked.sum() / weight.sum().clamp(min=1.0)


def hide_invalid(images: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Images with invalid pixels set to 0 (mid-grey in [-1, 1]), so a discriminator judging real against fake
    sees the same thing there in both and learns nothing from fill."""
    return images if valid is None else torch.where(valid.to(torch.bool), images, torch.zeros_like(images))
