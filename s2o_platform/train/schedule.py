"""Learning-rate schedules as pure functions of the optimizer step, and the LambdaLR the training runtime steps."""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str = "cosine") -> float:
    """Multiplier of the base learning rate after `step` optimizer updates.

    Linear warm-up from 1/(warmup+1) to 1 over `warmup_steps`, then `constant`, `linear` decay to 0,
    or `cosine` decay to 0 at `total_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {kind!r}: use cosine, linear or constant")


def lr_scheduler(optimizer: torch.optim.Optimizer, train: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` over a run's `train` section (warmup_steps, max_steps, lr_schedule), stepped once per
    optimizer update (DeepSpeed steps it after each real update, not per micro-batch)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, train.warmup_steps, train.max_steps, train.lr_schedule)
    )
