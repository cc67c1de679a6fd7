"""Exponential moving average of weights: ema <- decay * ema + (1 - decay) * online.

With a fixed decay d the average still holds d^n of its starting weights after n steps (0.99 after
300 steps: 4.9% of a random initialisation). `ema_decay_at` warms the decay up instead, as diffusers'
EMAModel does: min(d, (1 + n) / (10 + n)), so early steps move the average most of the way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """The decay to use after optimizer step `step` (1-based): `decay`, capped by (1 + step) / (10 + step)."""
    if step < 1:
        raise ValueError(f"EMA step must be >= 1, got {step}")
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@torch.no_grad()
def ema_update(
    ema: torch.nn.Module,
    online: torch.nn.Module,
    decay: float,
    parameters: Sequence[torch.Tensor] | None = None,
) -> None:
    """Update `ema`'s parameters in place towards `online`'s; buffers are copied.

    Both modules must have the same architecture. The EMA is kept in float32 whatever the
    training precision, so a decay close to 1 does not underflow. `parameters`: the values to
    average instead of `online.parameters()`, in the same order (the fp32 masters when the
    module itself holds bf16/fp16 copies).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    ema_params = list(ema.parameters())
    values = list(online.parameters() if parameters is None else parameters)
    if len(values) != len(ema_params):
        raise ValueError(f"EMA has {len(ema_params)} parameters, the online values {len(values)}")
    for e, o in zip(ema_params, values):
        e.lerp_(o.detach().to(e.dtype), 1.0 - decay)
    for e, o in zip(ema.buffers(), online.buffers()):
        e.copy_(o)
