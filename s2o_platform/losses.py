"""Adversarial losses on discriminator logits. Pure functions.

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
