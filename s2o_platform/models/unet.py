"""The UNet shared by teacher, student and discriminator: diffusers' UNet2DModel over concat(x, SAR)."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from s2o_platform.config import UNetSection

OPTICAL_CHANNELS = 3


def build_unet(cfg: UNetSection, sar_channels: int = 1) -> UNet2DModel:
    """UNet with in_channels = 3 (noisy optical) + sar_channels, out_channels = 3 (noise or v)."""
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=OPTICAL_CHANNELS + sar_channels,
        out_channels=OPTICAL_CHANNELS,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def network_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype a module's weights are in (a DeepSpeed engine's are its module's)."""
    return next(module.parameters()).dtype


def predict(unet: UNet2DModel, x: torch.Tensor, sar: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """The network output for noisy optical `x` (B, 3, H, W) conditioned on `sar` (B, C, H, W) at timestep t,
    in the network's dtype: inputs are cast to it (a bf16/fp16 DeepSpeed engine casts its weights, not its inputs)."""
    if not torch.is_tensor(t):
        t = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
    dtype = network_dtype(unet)
    return unet(torch.cat([x.to(dtype), sar.to(dtype)], dim=1), t).sample
