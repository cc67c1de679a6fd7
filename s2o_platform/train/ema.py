"""Exponential moving average of weights: ema <- decay * ema + (1 - decay) * online."""

from __future__ import annotations

import torch


@torch.no_grad()
def ema_update(ema: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    """Update `ema`'s parameters in place towards `online`'s; buffers are copied.

    Both modules must have the same architecture. The EMA is kept in float32 whatever the
    training precision, so a decay close to 1 does not underflow.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    for e, o in zip(ema.parameters(), online.parameters()):
        e.lerp_(o.detach().to(e.dtype), 1.0 - decay)
    for e, o in zip(ema.buffers(), online.buffers()):
        e.copy_(o)
